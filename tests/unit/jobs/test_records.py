"""A job's records (tcf.store.records) merged into a real experiments.db (tcf.jobs.records): exactly once, in
sequence, a record cut short ignored until it is complete, a reopened writer continuing after a torn tail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcf.config import load_config
from tcf.errors import TcfError
from tcf.jobs import queue as q
from tcf.jobs.records import merge, read_spec, write_spec
from tcf.store.db import Store
from tcf.store.records import RecordWriter, read_records, record_file
from tcf.store.sql import connection as sql


@pytest.fixture
def job(tmp_path, small_dataset) -> tuple[Store, q.Job, RecordWriter]:
    """A training job handed to another machine: its run reserved, job.json written, a writer on its records."""
    from tcf.experiment import reserve_run

    store = Store(tmp_path / "experiments.db")
    (tmp_path / "exp.yaml").write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: sasrec\n")
    cfg = load_config(tmp_path / "exp.yaml")[0]
    (job_id,) = q.add_jobs(store, [cfg])
    q.set_run(store, job_id, reserve_run(store, cfg))
    folder = tmp_path / "jobs" / f"job-{job_id}"
    q.submitted(store, job_id, slurm_id="77", options={}, job_dir=str(folder), log_path=str(folder / "x.log"),
                attempt=1)
    job = q.get_job(store, job_id)
    write_spec(folder, job, 1, store.get_run(job.run_id))
    spec = read_spec(folder)
    return store, job, RecordWriter(record_file(folder, spec.attempts), job.id, spec.run)


def _tables(store: Store) -> dict[str, list]:
    return {t: sql(store).execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608 - our table names
            for t in ("runs", "epochs", "metrics", "events", "artifacts", "jobs", "merged_records")}


def _a_run(w: RecordWriter, run_id: int) -> None:
    w.start(slurm_job="77")
    w.claim_run(run_id)
    w.log_event(f"run:{run_id}", "stage", {"stage": "epoch", "epoch": 1, "total": 10}, run_id)
    w.log_epoch(run_id, 1, 3.5, 1.25, {"hr@10": 0.125})
    w.log_final(run_id, "valid", {"hr@10": 0.125}, 1, 1)
    w.log_final(run_id, "test", {"hr@10": 0.25, "ndcg@10": 0.0625}, 1, 1)
    w.set_status(run_id, "finished")
    w.end("finished", None, 0, None)


def test_records_merge_through_the_store_exactly_once(job):
    store, j, w = job
    _a_run(w, j.run_id)
    assert merge(store, j) == 8
    run = store.get_run(j.run_id)
    assert run["status"] == "finished" and run["metrics"] == {"test_hr@10": 0.25, "test_ndcg@10": 0.0625,
                                                              "valid_hr@10": 0.125}
    assert run["owner_pid"] == os.getpid()  # the job process's, not the coordinator's (here: the same)
    assert [e["job_id"] for e in store.events()] == [j.id]
    got = q.get_job(store, j.id)
    assert got.state == "finished" and got.pid == os.getpid()
    before = _tables(store)
    assert merge(store, q.get_job(store, j.id)) == 0
    assert _tables(store) == before


def test_a_record_cut_short_waits_until_it_is_complete(job):
    store, j, w = job
    w.start()
    w.log_epoch(j.run_id, 1, 3.5, 1.0, {"hr@10": 0.5})
    w.close()
    line = json.dumps({"seq": 3, "time": "2025-01-01T00:00:00+00:00", "op": "log_epoch",
                       "args": {"run_id": j.run_id, "epoch": 2, "train_loss": 3.0, "seconds": 1.0,
                                "metrics": {"hr@10": 0.75}}}) + "\n"
    with open(w.path, "ab") as f:  # what a SIGKILL mid-write leaves: the first half of a line
        f.write(line[:40].encode())
    assert merge(store, j) == 2
    assert [e["epoch"] for e in store.epochs(j.run_id)] == [1]
    assert merge(store, j) == 0
    with open(w.path, "ab") as f:
        f.write(line[40:].encode())
    assert merge(store, j) == 1
    assert [(e["epoch"], e["metrics"]) for e in store.epochs(j.run_id)] == [(1, {"hr@10": 0.5}), (2, {"hr@10": 0.75})]


def test_a_reopened_writer_drops_a_torn_tail_and_continues_the_count(job):
    store, j, w = job
    w.start()
    w.claim_run(j.run_id)
    w.close()
    with open(w.path, "ab") as f:
        f.write(b'{"seq": 3, "op": "log_ep')
    again = RecordWriter(w.path, j.id, read_spec(Path(j.job_dir)).run)
    assert again.get_run(j.run_id)["status"] == "running"  # its own earlier records are folded in
    again.log_epoch(j.run_id, 1, 2.0, 1.0, {"hr@10": 0.5})
    records, end = read_records(w.path)
    assert [r.seq for r in records] == [1, 2, 3] and end == w.path.stat().st_size
    assert merge(store, j) == 3 and len(store.epochs(j.run_id)) == 1


def test_a_record_of_another_run_is_refused_naming_the_file(job):
    store, j, w = job
    w.log_event("run:999", "stage", {"stage": "epoch"}, 999)
    with pytest.raises(TcfError, match=r"records-1\.jsonl: record 1 names run 999"):
        merge(store, j)
    assert store.events() == []


def test_a_sigkilled_writer_leaves_only_complete_records(job):
    """A real writer process killed while it appends: whatever it left merges, and nothing half-written does."""
    store, j, w = job
    w.close()
    code = ("import sys; from tcf.store.records import RecordWriter\n"
            f"w = RecordWriter(sys.argv[1], {j.id}, None)\n"
            "i = 0\n"
            "while True:\n"
            "    i += 1; w.log_event('x', 'progress', {'pad': 'y' * 5000, 'i': i})\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(w.path)], env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")])})
    deadline = time.time() + 60
    while not (w.path.exists() and w.path.stat().st_size > 200_000):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    records, _ = read_records(w.path)
    assert merge(store, j) == len(records) > 10
    assert [e["payload"]["i"] for e in store.events()] == list(range(1, len(records) + 1))


def test_a_job_spec_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(TcfError, match=r"job\.json: cannot read the job's description"):
        read_spec(tmp_path)
