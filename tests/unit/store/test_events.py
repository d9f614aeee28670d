"""Progress of a job folded from experiments.db: block ranges, epochs, ETA; incremental = full."""

from __future__ import annotations

import pytest

from tcf.config import Config
from tcf.jobs import queue as q
from tcf.store.db import JOB_ENV, Store
from tcf.store.events import EventWriter, live_view, log_tail, progress_summary


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    s = Store(tmp_path / "experiments.db")
    cfg = Config.model_validate({"dataset": {"path": str(tmp_path)}, "train": {"epochs": 10}})
    (job_id,) = q.add_jobs(s, [cfg])
    q.claim(s, 1, "0", 1)
    monkeypatch.setenv(JOB_ENV, str(job_id))
    return Store(s.path)  # this Store tags what it writes with the job


def _fields(view):
    return ([(r.index, r.label, r.done, r.total, r.items_per_s, r.finished) for r in view.ranges],
            [(e.epoch, e.done, e.total, e.loss, e.metrics, e.finished) for e in view.epochs],
            view.stage, view.gpu_peak_bytes, view.last_event_id)


def test_ranges_fold_into_bars_and_a_retry_keeps_committed_ones(store):
    job = q.get_job(store, store.job_id)
    store.log_event("infer:x", "range_start", {"range": 0, "start": 0, "stop": 8, "n_items": 1000})
    store.log_event("infer:x", "progress", {"range": 0, "start": 0, "stop": 8, "items_done": 400, "n_items": 1000,
                                            "items_per_s": 200.0, "gpu_peak_bytes": 5 << 30})
    first = live_view(store, job)
    assert [(r.label, r.done, r.total, r.finished) for r in first.ranges] == [("blocks 0:8", 400, 1000, False)]
    assert first.fraction == pytest.approx(0.4) and first.eta_s == pytest.approx(3.0)
    assert progress_summary(first) == "blocks 0:8 40%"
    store.log_event("infer:x", "range_end", {"range": 0, "start": 0, "stop": 8, "seconds": 5.0})
    store.log_event("infer:x", "range_start", {"range": 1, "start": 8, "stop": 16, "n_items": 1000})
    store.log_event("infer:x", "progress", {"range": 1, "start": 8, "stop": 16, "items_done": 100, "n_items": 1000,
                                            "items_per_s": 250.0, "gpu_peak_bytes": 3 << 30})
    full = live_view(store, job)
    assert _fields(live_view(store, job, since=first)) == _fields(full)
    assert [(r.done, r.finished, r.seconds) for r in full.ranges] == [(1000, True, 5.0), (100, False, None)]
    assert full.gpu_peak_bytes == 5 << 30 and progress_summary(full) == "blocks 8:16 10%"


def test_epochs_show_steps_then_loss_and_validation_metrics(store):
    run_id = store.create_run(name="r", config={}, config_hash="h", dataset="d", architecture="sasrec",
                              item_tower="id")
    job = q.get_job(store, store.job_id)
    assert job.run_id == run_id  # a run created inside a job process is linked to the job
    writer = EventWriter(store, f"run:{run_id}", run_id, interval=0.0)  # what a training run writes
    writer.stage("epoch", total=50, epoch=1)
    writer.advance(50)
    writer.epoch_end(1, loss=2.5, seconds=4.0, metrics={"hr@10": 0.2, "ndcg@10": 0.1})
    writer.stage("epoch", total=50, epoch=2)
    first = live_view(store, job)
    writer.advance(25)
    view = live_view(store, job)
    assert _fields(live_view(store, job, since=first)) == _fields(view)
    (e1, e2) = view.epochs
    assert (e1.done, e1.total, e1.loss, e1.metrics["hr@10"], e1.finished) == (50, 50, 2.5, 0.2, True)
    assert (e2.done, e2.total, e2.finished) == (25, 50, False)
    assert view.fraction == pytest.approx(0.5)
    assert view.eta_s == pytest.approx((10 - 1 - 0.5) * 4.0)  # 8.5 epochs left at 4 s each (upper bound)
    assert progress_summary(view) == "epoch 2 50%"
    stages = [e["payload"] for e in store.events(job_id=job.id) if e["kind"] == "stage"]
    assert stages[-1] == {"stage": "epoch", "epoch": 2, "total": 50}  # the epoch is an integer, not text


def test_events_written_before_the_epoch_was_a_field_still_fold(store):
    """experiments.db files of the previous release say {"stage": "epoch 2"}: their jobs still show."""
    run_id = store.create_run(name="r", config={}, config_hash="h", dataset="d", architecture="sasrec",
                              item_tower="id")
    job = q.get_job(store, store.job_id)
    store.log_event(f"run:{run_id}", "stage", {"stage": "epoch 2", "total": 40}, run_id)
    store.log_event(f"run:{run_id}", "progress", {"stage": "epoch 2", "total": 40, "done": 10}, run_id)
    view = live_view(store, job)
    assert [(e.epoch, e.done, e.total) for e in view.epochs] == [(2, 10, 40)]
    assert progress_summary(view) == "epoch 2 25%"


def test_log_tail_reads_the_end_of_the_job_log(store, tmp_path):
    log = tmp_path / "job.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    q.set_process(store, store.job_id, 1, None, str(log))
    assert log_tail(q.get_job(store, store.job_id), lines=3) == ["line 97", "line 98", "line 99"]


def test_a_retry_shows_no_open_progress_of_the_attempt_before(store):
    """Reported (issue 22, 8): after a retry the old attempt's progress showed for seconds as the new one's. The
    committed range stays (the retry resumes after it); the open range, the stage and the memory go."""
    from tcf.store.sql import connection as sql

    job = q.get_job(store, store.job_id)
    store.log_event("infer:x", "range_start", {"range": 0, "start": 0, "stop": 8, "n_items": 1000})
    store.log_event("infer:x", "range_end", {"range": 0, "start": 0, "stop": 8, "seconds": 5.0})
    store.log_event("infer:x", "range_start", {"range": 1, "start": 8, "stop": 16, "n_items": 1000})
    store.log_event("infer:x", "progress", {"range": 1, "start": 8, "stop": 16, "items_done": 400, "n_items": 1000,
                                            "items_per_s": 200.0, "gpu_mem_bytes": 7 << 30})
    before = live_view(store, job)
    assert progress_summary(before) == "blocks 8:16 40%"
    with store.transaction():  # the first attempt ran a minute ago
        sql(store).execute("UPDATE events SET time = '2025-01-01T00:00:00+00:00'")
    assert q.finish_job(store, job.id, "lost", error="lost: gone")
    assert q.retry_jobs(store, [job.id]) == [job.id]
    queued = live_view(store, q.get_job(store, job.id), since=before)
    assert [(r.label, r.finished) for r in queued.ranges] == [("blocks 0:8", True)] and queued.stage is None
    q.claim(store, 1, "0", 1)
    again = q.get_job(store, job.id)
    view = live_view(store, again, since=before)
    assert [(r.label, r.finished) for r in view.ranges] == [("blocks 0:8", True)]
    assert view.gpu_mem_bytes is None and progress_summary(view) == "starting"
    store.log_event("infer:x", "range_start", {"range": 1, "start": 8, "stop": 16, "n_items": 1000})
    assert progress_summary(live_view(store, again, since=view)) == "blocks 8:16 0%"


def test_a_lost_jobs_elapsed_time_stops_at_its_last_heartbeat(store):
    """Reported (issue 22, 8): a lost job's elapsed time kept ticking."""
    import subprocess
    import sys
    from datetime import datetime

    from tcf.store.sql import connection as sql
    from tcf.util.process import start_time

    job = q.get_job(store, store.job_id)
    start = datetime.fromisoformat(job.started_at).timestamp()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a process that is gone
    q.set_process(store, job.id, proc.pid, start_time(proc.pid) or 1, "log")
    with store.transaction():
        sql(store).execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", [start + 30, job.id])
    lost = q.get_job(store, job.id)
    assert lost.display == "lost" and lost.state == "running"
    assert live_view(store, lost, now=start + 500).elapsed_s == pytest.approx(30)  # not 500: it died at 30
    q.reap_lost(store)
    recorded = q.get_job(store, job.id)
    assert recorded.state == "lost" and live_view(store, recorded, now=start + 900).elapsed_s == pytest.approx(30)
