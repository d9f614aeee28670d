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
