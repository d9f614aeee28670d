"""The job queue in a real experiments.db: dependencies, claiming, cancel/retry/rm, lost detection."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcf.config import load_config
from tcf.errors import TcfError
from tcf.jobs import queue as q
from tcf.store.db import Store
from tcf.store.sql import connection as sql
from tcf.util.process import is_alive, start_time


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "experiments.db")


def _configs(tmp_path: Path, dataset: Path, body: str = "model:\n  architecture: pop\n") -> list:
    p = tmp_path / "exp.yaml"
    p.write_text(f"dataset:\n  path: {dataset}\n{body}")
    return load_config(p)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, small_dataset) -> Path:
    from tcf.data.reader import load_dataset
    from tcf.lm.tiny import build_tiny_opt  # here, not at the top: spawned claimers import this module

    out = tmp_path_factory.mktemp("enc") / "tiny-opt"
    build_tiny_opt(out, load_dataset(small_dataset).item_texts, hidden=32, n_blocks=3, vocab_size=500)
    return out


def test_text_sweep_queues_one_preinference_that_the_trainings_wait_for(tmp_path, store, small_dataset, encoder):
    body = (f"model:\n  item_tower: text\ntext_encoder:\n  model: {encoder}\n"
            "sweep:\n  text_encoder.unfreeze: [0, 1, 2]\n  seed: [1, 2]\n")
    ids = q.add_jobs(store, _configs(tmp_path, small_dataset, body), tags=["scaling"], note="n", priority=3)
    jobs = {j.id: j for j in q.list_jobs(store)}
    infer = [j for j in jobs.values() if j.kind == "infer"]
    train = [j for j in jobs.values() if j.kind == "train"]
    assert len(infer) == 1 and len(train) == 6 and ids[0] == infer[0].id
    assert infer[0].spec["keep_depths"] == [1, 2]  # depths of unfreeze 2 and 1 of a 3-block model
    # no budget in the config: the worker waits for the least memory the planner can work in
    from tcf.preinfer.encode import minimum_budget

    assert infer[0].mem_bytes == minimum_budget(_configs(tmp_path, small_dataset, body)[0]) > 256 << 20
    assert all(j.mem_bytes is None for j in train)
    assert all(j.deps == (infer[0].id,) and j.tags == ("scaling",) and j.priority == 3 for j in train)
    assert Path(train[0].config["dataset"]["path"]).is_absolute()

    # only the pre-inference is ready; the trainings become ready when it finished
    first = q.claim(store, 1, "cpu", 1)
    assert first.id == infer[0].id and first.state == "running" and first.attempts == 1
    assert q.claim(store, 1, "cpu", 1) is None
    # the same sweep queued again while it runs depends on the running pre-inference, adds none
    again = q.add_jobs(store, _configs(tmp_path, small_dataset, body))
    assert len(again) == 6 and all(q.get_job(store, i).deps == (infer[0].id,) for i in again)

    assert q.finish_job(store, first.id, "finished", exit_code=0)
    assert q.claim(store, 1, "cpu", 1).kind == "train"


def test_claim_order_priority_then_age_and_gpu_fit(tmp_path, store, small_dataset):
    (a,) = q.add_jobs(store, _configs(tmp_path, small_dataset), priority=0)
    (b,) = q.add_jobs(store, _configs(tmp_path, small_dataset), priority=5)
    (wide,) = q.add_jobs(store, _configs(tmp_path, small_dataset), priority=9, gpus=2)
    assert q.next_ready(store, 1).id == b  # the 2-GPU job does not fit one free GPU
    assert q.claim(store, 1, "0,1", 2).id == wide
    assert q.claim(store, 1, "2", 1).id == b
    assert q.claim(store, 1, "3", 1).id == a


def test_a_busy_gpu_is_never_claimed_twice(tmp_path, store, small_dataset):
    for _ in range(2):
        q.add_jobs(store, _configs(tmp_path, small_dataset))
    first = q.claim(store, 1, "0", 1)
    assert first is not None
    assert q.busy_devices(store) == {"0"}  # claimed, no process yet: held
    assert q.claim(store, 2, "0", 1) is None  # another worker on the same host
    q.set_process(store, first.id, os.getpid(), start_time(os.getpid()), "log")
    assert q.busy_devices(store) == {"0"}
    q.set_process(store, first.id, 2 ** 22 + 7, 1, "log")  # a process that does not exist
    assert q.busy_devices(store) == set()


def _claimer(db: str, worker: int, out: mp.Queue) -> None:
    store = Store(db)
    mine = []
    while (job := q.claim(store, worker, "cpu", 1)) is not None:
        mine.append(job.id)
    out.put(mine)


def test_concurrent_claims_take_every_job_exactly_once(tmp_path, store, small_dataset):
    cfgs = _configs(tmp_path, small_dataset)
    ids = [i for _ in range(40) for i in q.add_jobs(store, cfgs)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(store.path), w, out)) for w in range(8)]
    for p in procs:
        p.start()
    claimed = [i for _ in procs for i in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == sorted(ids)
    rows = sql(store).execute("SELECT attempts, state FROM jobs").fetchall()
    assert all(r == (1, "running") for r in rows)


def test_cancel_retry_edit_remove(tmp_path, store, small_dataset):
    a, b = (q.add_jobs(store, _configs(tmp_path, small_dataset))[0] for _ in range(2))
    assert "cancelled" in q.cancel_job(store, a)
    assert q.get_job(store, a).state == "cancelled"
    with pytest.raises(TcfError, match="only queued or running"):
        q.cancel_job(store, a)
    with pytest.raises(TcfError, match="only failed, lost or cancelled"):
        q.retry_jobs(store, [b])
    assert q.retry_jobs(store, [a]) == [a]
    assert q.get_job(store, a).state == "queued"

    job = q.edit_job(store, b, priority=7, tags=["x", "y"], note="check lr")
    assert (job.priority, job.tags, job.note) == (7, ("x", "y"), "check lr")
    with pytest.raises(TcfError, match="invalid tag"):
        q.edit_job(store, b, tags=["two words"])
    q.remove_job(store, a)
    with pytest.raises(TcfError, match="no job with id"):
        q.get_job(store, a)


def test_job_ids_are_never_reused_after_rm(tmp_path, store, small_dataset):
    """Reported (issue 22, 5): a removed job's id went to the next job, which appended to its log."""
    a, b, c = (q.add_jobs(store, _configs(tmp_path, small_dataset))[0] for _ in range(3))
    assert (a, b, c) == (1, 2, 3)
    q.remove_job(store, c)  # the newest: max(id) + 1 would give its id out again
    (d,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    for job_id in (a, b, d):
        q.remove_job(store, job_id)
    (e,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    assert (d, e) == (4, 5)
    with store.transaction():  # whoever inserts (an older tcf, the sqlite3 CLI) moves the mark too
        sql(store).execute("INSERT INTO jobs (id, kind, name, config_json, spec_json, state, created_at) "
                           "VALUES (9, 'train', 'by hand', '{}', '{}', 'finished', '2025-01-01')")
    q.remove_job(store, 9)
    assert q.add_jobs(store, _configs(tmp_path, small_dataset)) == [10]


def test_a_cancelled_job_whose_process_died_before_it_could_say_so_is_cancelled(tmp_path, store, small_dataset):
    """A cancel that lands before the job set its handlers kills it at once: cancelled, for readers and for any
    worker that reaps it, never lost."""
    (job_id,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    q.claim(store, 1, "cpu", 1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    q.set_process(store, job_id, proc.pid, start_time(proc.pid), "log")
    assert "SIGTERM" in q.cancel_job(store, job_id)
    proc.wait()
    assert q.get_job(store, job_id).display == "cancelled"
    assert q.reap_lost(store) == []
    job = q.get_job(store, job_id)
    assert job.state == "cancelled" and "is gone" in job.error


def test_running_job_with_dead_process_shows_lost_and_is_reaped(tmp_path, store, small_dataset):
    (job_id,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    q.claim(store, 1, "cpu", 1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    q.set_process(store, job_id, proc.pid, start_time(proc.pid), "log")
    assert q.get_job(store, job_id).display == "running"
    proc.kill()
    proc.wait()
    assert not is_alive(proc.pid, start_time(proc.pid))
    assert q.get_job(store, job_id).display == "lost"  # readers see it at once
    assert q.get_job(store, job_id).state == "running"
    assert q.reap_lost(store, skip={job_id}) == []  # a worker's own child: it records the exit status itself
    assert q.get_job(store, job_id).state == "running"
    assert q.reap_lost(store) == [job_id]
    job = q.get_job(store, job_id)
    assert job.state == job.display == "lost" and "is gone" in job.error
    assert q.retry_jobs(store, failed=True) == [job_id]


def test_pid_reuse_counts_as_lost_but_a_silent_live_process_is_only_stale(tmp_path, store, small_dataset):
    """Reported (issue 17, item 7): a SIGSTOPped job was recorded lost by another worker after ~25 s. Its
    process lives: it is stale, never lost, however long it is silent."""
    a, b = (q.add_jobs(store, _configs(tmp_path, small_dataset))[0] for _ in range(2))
    q.claim(store, 1, "cpu", 1)
    q.claim(store, 1, "cpu", 1)
    me = os.getpid()
    q.set_process(store, a, me, start_time(me) + 1, "log")  # this PID, but another process's start time
    q.set_process(store, b, me, start_time(me), "log")
    assert q.get_job(store, a).display == "lost"
    assert q.get_job(store, b).display == "running"
    assert q.heartbeat(store, b, peak_mem_bytes=123)
    for silent in (q.STALE_AFTER_S + 1, q.HOST_LOST_AFTER_S * 10):
        assert {j.id: j.display for j in q.list_jobs(store, now=time.time() + silent)} == {a: "lost", b: "stale"}
        assert q.reap_lost(store, now=time.time() + silent) in ([a], [])
    assert q.get_job(store, b).state == "running" and q.get_job(store, b).peak_mem_bytes == 123


def test_a_job_of_another_host_is_lost_only_after_a_long_silence(tmp_path, store, small_dataset):
    (job_id,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    q.claim(store, 1, "cpu", 1)
    with store.transaction():
        sql(store).execute("UPDATE jobs SET host = 'elsewhere', pid = 1 WHERE id = ?", [job_id])
    start = q.get_job(store, job_id).heartbeat
    assert q.get_job(store, job_id, now=start + q.STALE_AFTER_S + 1).display == "stale"
    assert q.reap_lost(store, now=start + q.HOST_LOST_AFTER_S - 1) == []
    assert q.reap_lost(store, now=start + q.HOST_LOST_AFTER_S + 1) == [job_id]
    assert "no heartbeat from elsewhere" in q.get_job(store, job_id).error


def test_a_job_that_ends_after_being_marked_lost_records_its_true_end(tmp_path, store, small_dataset):
    (job_id,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    job = q.claim(store, 1, "cpu", 1)
    assert q.finish_job(store, job_id, "lost", error="lost: no heartbeat from elsewhere for 600 s")
    assert q.heartbeat(store, job_id, attempt=job.attempts)  # alive after all: running again
    assert q.get_job(store, job_id).state == "running" and q.get_job(store, job_id).error is None
    assert q.finish_job(store, job_id, "lost", error="lost: again")
    assert q.finish_job(store, job_id, "finished", exit_code=0, attempt=job.attempts)
    assert q.get_job(store, job_id).state == "finished"
    # a retried job's old process must not write over the new attempt
    (other,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    first = q.claim(store, 1, "cpu", 1, job_id=other)
    q.finish_job(store, other, "lost", error="lost")
    q.retry_jobs(store, [other])
    q.claim(store, 1, "cpu", 1, job_id=other)
    assert not q.finish_job(store, other, "failed", error="old attempt", attempt=first.attempts)
    assert not q.heartbeat(store, other, attempt=first.attempts) or q.get_job(store, other).state == "running"
    assert q.get_job(store, other).error is None


def test_a_claimed_job_is_alive_while_its_worker_is(tmp_path, store, small_dataset):
    """Start-up counts too: between the claim and its process's first heartbeat, its worker vouches for it."""
    (job_id,) = q.add_jobs(store, _configs(tmp_path, small_dataset))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    wid = q.register_worker(store, worker.pid, start_time(worker.pid), "cpu")
    q.claim(store, wid, "cpu", 1)
    assert q.get_job(store, job_id, now=time.time() + q.STALE_AFTER_S - 1).display == "running"
    worker.kill()
    worker.wait()
    assert q.get_job(store, job_id).display == "lost"
    assert q.reap_lost(store) == [job_id] and "died before starting it" in q.get_job(store, job_id).error


def test_dependency_that_failed_blocks_until_retried(tmp_path, store, small_dataset, encoder):
    body = f"model:\n  item_tower: text\ntext_encoder:\n  model: {encoder}\n"
    infer_id, train_id = q.add_jobs(store, _configs(tmp_path, small_dataset, body))
    q.claim(store, 1, "cpu", 1)
    q.finish_job(store, infer_id, "failed", error="boom")
    assert q.get_job(store, train_id).display == "blocked"
    assert q.claim(store, 1, "cpu", 1) is None
    with pytest.raises(TcfError, match="depend on it"):
        q.remove_job(store, infer_id)
    q.retry_jobs(store, [infer_id])
    assert q.get_job(store, train_id).display == "queued"
