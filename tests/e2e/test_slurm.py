"""The queue on a real single-node Slurm (munged + slurmctld + slurmd from Debian's slurm-wlm, started by the
fixture): a sweep submitted with its dependency graph finishes with the results `tcf worker` gets; scancel and
kill -9 show at the next refresh and a retry resumes from the checkpoint; no job process opens experiments.db."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, make_tiny_opt, tcf
from slurm_cluster import SlurmCluster, missing

from tcf.data.reader import load_dataset
from tcf.jobs.queue import SLURM_ENDED
from tcf.store.db import Store

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

# Every Python process of a Slurm job imports this (PYTHONPATH) and notes each file it opens or connects to.
AUDIT = """import os, sys
_log, _busy = os.path.join(os.environ["TCF_AUDIT_DIR"], f"{os.getpid()}.txt"), []
def _hook(event, args):
    if _busy or event not in ("open", "sqlite3.connect") or not args or not isinstance(args[0], (str, os.PathLike)):
        return
    path = os.fspath(args[0])
    if path.endswith((".db", ".db-wal", ".db-shm", ".jsonl")):
        _busy.append(1)  # the hook's own open raises the event again
        try:
            with open(_log, "a") as f:
                f.write(path + "\\n")
        finally:
            _busy.pop()
if "SLURM_JOB_ID" in os.environ:  # a process of a Slurm job (the coordinator's own commands are not audited)
    sys.addaudithook(_hook)
"""
SASREC = ["-S", "model.embedding_dim=32", "-S", "train.batch_size=32", "-S", "train.patience=100",
          "-S", "eval.ks=[5,10]", "-S", "train.epochs=6"]
SAME = ("status", "best_epoch", "stopped_epoch", "lm_params", "protocol", "item_tower")  # and every metric


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def env(cluster, tmp_path_factory):
    """What `tcf` (and through sbatch's --export=ALL, every job) runs with: the cluster, this checkout, the audit."""
    audit = tmp_path_factory.mktemp("audit")
    (audit / "hook").mkdir()
    (audit / "hook" / "sitecustomize.py").write_text(AUDIT)
    (audit / "opened").mkdir()
    path = os.pathsep.join([str(audit / "hook"), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"SLURM_CONF": cluster.env["SLURM_CONF"], "PYTHONPATH": path, "TCF_AUDIT_DIR": str(audit / "opened"),
            "OMP_NUM_THREADS": "1"}


def _sync_until(db: Path, env: dict, done, timeout: float = 400, what: str = "jobs") -> list[dict]:
    deadline = time.time() + timeout
    while True:
        r = tcf("queue", "ls", "--json", "--db", str(db), cwd=db.parent, env=env)
        assert r.returncode == 0, r.stderr
        jobs = json.loads(r.stdout)
        if done(jobs):
            return jobs
        assert time.time() < deadline, f"timed out waiting for {what}: {jobs}"
        time.sleep(1)


def _assert_same(got: dict, want: dict) -> None:
    keys = [k for k in want if k in SAME or k.startswith(("test_", "valid_"))]
    assert len(keys) >= 8 and {k: got.get(k) for k in keys} == {k: want[k] for k in keys}, got["name"]


def _ended(job: dict) -> bool:
    """Ended in tcf (its records said so) and in Slurm (squeue saw its end)."""
    return job["state"] in ("finished", "failed", "lost", "cancelled") and job["slurm_state"] in SLURM_ENDED


def _results(db: Path, env: dict) -> dict[tuple[str, int], dict]:
    """`tcf results` (a coordinator: it syncs first), keyed by run name and seed."""
    r = tcf("results", "--format", "json", "--db", str(db), cwd=db.parent, env=env)
    assert r.returncode == 0, r.stderr
    seeds = {row["run_id"]: row["config"]["seed"] for row in Store(db, readonly=True).runs()}
    return {(row["name"], seeds[row["run_id"]]): row for row in json.loads(r.stdout)}


def _tables(db: Path) -> dict[str, list]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608 - our table names
                for t in ("runs", "epochs", "metrics", "events", "artifacts", "jobs", "merged_records")}


@pytest.fixture(scope="module")
def sweep(env, small_dataset, tmp_path_factory):
    """One pre-inference and four training jobs: run by `tcf worker`, and submitted to Slurm."""
    root = tmp_path_factory.mktemp("sweep")
    model = make_tiny_opt(root / "opt", load_dataset(small_dataset).item_texts, hidden=32, n_blocks=2)
    config = root / "sweep.yaml"
    config.write_text(f"""dataset:
  path: {small_dataset}
model:
  item_tower: text
  embedding_dim: 16
  dropout: 0.0
train:
  epochs: 2
  batch_size: 64
  text_lr: 0.001
text_encoder:
  model: {model}
  max_tokens: 12
  latent_dtype: fp32
sweep:
  text_encoder.unfreeze: [0, 1]
  seed: [1, 2]
""")
    local = root / "local" / "experiments.db"
    local.parent.mkdir()
    assert tcf("queue", "add", str(config), "--db", str(local), cwd=root).returncode == 0
    r = tcf("worker", "--exit-when-idle", "--gpus", "cpu", "--db", str(local), cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr

    db = root / "cluster" / "experiments.db"
    db.parent.mkdir()
    r = tcf("queue", "add", str(config), "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    ids = [int(i) for i in r.stdout.split()]
    before = db.read_bytes()
    dry = tcf("queue", "submit", "--time", "00:30:00", "--dry-run", "--db", str(db), cwd=root, env=env)
    assert dry.returncode == 0, dry.stderr
    assert db.read_bytes() == before and not (db.parent / "artifacts" / "jobs").exists()  # submitted nothing
    r = tcf("queue", "submit", "--time", "00:30:00", "--db", str(db), cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    jobs = _sync_until(db, env, lambda js: all(_ended(j) for j in js), what="the sweep")
    return {"root": root, "local": local, "db": db, "ids": ids, "dry": dry.stdout, "jobs": jobs, "env": env}


@pytest.mark.xdist_group("slurm-sweep")  # one sweep per session, not one per worker
def test_the_sweep_runs_on_slurm_with_the_results_of_a_local_worker(sweep):
    jobs = {j["id"]: j for j in sweep["jobs"]}
    assert [jobs[i]["kind"] for i in sweep["ids"]] == ["infer", "train", "train", "train", "train"]
    assert all(j["state"] == "finished" for j in jobs.values()), jobs
    assert all(j["slurm_id"] and j["slurm_state"] == "COMPLETED" for j in jobs.values())
    local, slurm = _results(sweep["local"], sweep["env"]), _results(sweep["db"], sweep["env"])
    assert sorted(local) == sorted(slurm) and len(slurm) == 4
    for name, row in slurm.items():
        _assert_same(row, local[name])
    with sqlite3.connect(sweep["db"]) as c:  # every epoch, metric and progress event came through the records
        assert c.execute("SELECT count(*) FROM epochs").fetchone()[0] == 8
        assert c.execute("SELECT count(*) FROM events WHERE kind = 'range_end'").fetchone()[0] == 2
        assert c.execute("SELECT count(*) FROM artifacts WHERE kind = 'latents'").fetchone()[0] == 1


@pytest.mark.xdist_group("slurm-sweep")  # one sweep per session, not one per worker
def test_live_progress_of_slurm_jobs_folds_as_for_local_ones(sweep):
    """The Live screen's fold reads the merged events and epochs of a Slurm job as it reads a local job's."""
    from tcf.jobs.queue import get_job
    from tcf.store.events import live_view, progress_summary

    store = Store(sweep["db"], readonly=True)
    local = Store(sweep["local"], readonly=True)
    infer, train = sweep["ids"][:2]
    for s in (store, local):
        ranges = live_view(s, get_job(s, infer)).ranges
        assert [(r.label, r.finished, r.done == r.total > 0) for r in ranges] == [
            ("blocks 0:1", True, True), ("blocks 1:2", True, True)]
        view = live_view(s, get_job(s, train))
        assert [(e.epoch, e.finished, e.done == e.total > 0) for e in view.epochs] == [(1, True, True), (2, True, True)]
        assert progress_summary(view) == "2 epochs"


@pytest.mark.xdist_group("slurm-sweep")  # one sweep per session, not one per worker
def test_training_started_only_after_the_preinference_finished(sweep, cluster):
    infer, *trains = sweep["ids"]
    jobs = {j["id"]: j for j in sweep["jobs"]}

    def times(slurm_id: str) -> tuple[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], env=cluster.env, capture_output=True,
                             text=True).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields["StartTime"], fields["EndTime"]

    infer_end = times(jobs[infer]["slurm_id"])[1]
    for t in trains:
        assert times(jobs[t]["slurm_id"])[0] >= infer_end
        assert jobs[t]["deps"] == [infer]
    script = (Path(sweep["db"]).parent / "artifacts" / "jobs" / f"job-{trains[0]}" / "job.sbatch").read_text()
    assert script in sweep["dry"]  # the dry run printed the very script that was submitted
    assert f"--dependency=afterok:<job {infer}>" in sweep["dry"]


@pytest.mark.xdist_group("slurm-sweep")  # one sweep per session, not one per worker
def test_no_job_process_opened_experiments_db(sweep):
    logs = list(Path(sweep["env"]["TCF_AUDIT_DIR"]).glob("*.txt"))
    opened = [line for f in logs for line in f.read_text().splitlines()]
    assert len(logs) >= 5 and any(p.endswith("records-1.jsonl") for p in opened)  # the hook saw the jobs
    db = str(sweep["db"])
    assert [p for p in opened if p.startswith(db)] == []


@pytest.mark.xdist_group("slurm-sweep")  # one sweep per session, not one per worker
def test_syncing_again_changes_nothing(sweep):
    before = _tables(sweep["db"])
    r = tcf("queue", "sync", "--db", str(sweep["db"]), cwd=sweep["root"], env=sweep["env"])
    assert r.returncode == 0, r.stderr
    assert _tables(sweep["db"]) == before


def _ops(path: Path, op: str) -> list[dict]:
    """The arguments of the complete records of kind ``op`` in a job's record file."""
    from tcf.store.records import read_records

    return [r.args for r in read_records(path)[0] if r.op == op]


def _epochs(db: Path, run_id: int) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT count(*) FROM epochs WHERE run_id = ?", [run_id]).fetchone()[0]


def test_scancel_kill_and_requeue_of_running_jobs(env, small_dataset, tmp_path, cluster):
    """scancel and kill -9 show as cancelled and lost at the next `tcf queue ls`, and `tcf queue retry` resumes
    them from their checkpoints; a requeued job (preemption) resumes by itself. All end with the metrics of runs
    that were never interrupted."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: sasrec\nsweep:\n  seed: [1, 2, 3]\n")
    ref_db = tmp_path / "ref" / "experiments.db"
    assert tcf("run", str(cfg), *SASREC, "--db", str(ref_db), cwd=tmp_path).returncode == 0
    ref = _results(ref_db, env)

    db = tmp_path / "experiments.db"
    ids = [int(i) for i in tcf("queue", "add", str(cfg), *SASREC, "--db", str(db), cwd=tmp_path).stdout.split()]
    assert tcf("queue", "submit", "--db", str(db), cwd=tmp_path, env=env).returncode == 0
    records = [db.parent / "artifacts" / "jobs" / f"job-{i}" / "records-1.jsonl" for i in ids]
    deadline = time.time() + 300
    while not all(len(_ops(r, "log_epoch")) >= 2 for r in records):  # read as they are written, no sync needed
        assert time.time() < deadline, "timed out waiting for two epochs of each job"
        time.sleep(0.1)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        slurm_ids = [c.execute("SELECT slurm_id FROM jobs WHERE id = ?", [i]).fetchone()[0] for i in ids]
    subprocess.run(["scancel", slurm_ids[0]], env=cluster.env, check=True)
    os.kill(_ops(records[1], "start")[0]["pid"], signal.SIGKILL)
    subprocess.run(["scontrol", "requeue", slurm_ids[2]], env=cluster.env, check=True)
    deadline = time.time() + 60  # a requeued job waits two minutes (BeginTime) unless told to start now
    while "PENDING" not in subprocess.run(["squeue", "-h", "-j", slurm_ids[2], "-o", "%T"], env=cluster.env,
                                          capture_output=True, text=True).stdout:
        assert time.time() < deadline, "the requeued job never went back to PENDING"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={slurm_ids[2]}", "StartTime=now"], env=cluster.env, check=True)
    cancelled, killed, requeued = ({"id": i} for i in ids)
    time.sleep(2)  # Slurm notes both ends
    shown = {j["id"]: j for j in json.loads(tcf("queue", "ls", "--json", "--db", str(db), cwd=tmp_path,
                                                env=env).stdout)}
    assert shown[cancelled["id"]]["state"] == "cancelled", shown
    assert shown[killed["id"]]["state"] == "lost" and "signal 9" in shown[killed["id"]]["error"], shown
    assert shown[requeued["id"]]["state"] in ("queued", "running"), shown  # back in Slurm's queue
    stopped_at = {i: _epochs(db, shown[i]["run_id"]) for i in ids[:2]}
    assert all(2 <= n < 6 for n in stopped_at.values()), stopped_at

    for i in ids[:2]:
        r = tcf("queue", "retry", str(i), "--db", str(db), cwd=tmp_path, env=env)
        assert r.returncode == 0 and "Slurm job" in r.stderr, r.stderr
    jobs = _sync_until(db, env, lambda js: all(_ended(j) for j in js), what="the retried jobs")
    assert [(j["state"], j["attempts"]) for j in sorted(jobs, key=lambda j: j["id"])] == [
        ("finished", 2), ("finished", 2), ("finished", 1)], jobs
    for j in jobs:
        log = Path(j["log_path"]).read_text()
        assert f"resuming run {j['run_id']}" in log
    assert len(_ops(records[2], "start")) == 2  # the requeued job started twice within its one attempt
    got = _results(db, env)
    for name, row in got.items():
        _assert_same(row, ref[name])


def test_a_job_of_two_ranks_runs_as_srun_torchrun_with_the_rendezvous_from_slurm(env, small_dataset, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: sasrec\n  dropout: 0.0\n"
                   "train:\n  epochs: 1\n  device: cpu\n")
    db = tmp_path / "experiments.db"
    (job_id,) = map(int, tcf("queue", "add", str(cfg), "--gpus", "2", "--db", str(db), cwd=tmp_path).stdout.split())
    r = tcf("queue", "submit", "--db", str(db), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "artifacts" / "jobs" / f"job-{job_id}" / "job.sbatch").read_text()
    assert "exec srun" in script and "--rdzv_backend=c10d" in script
    (job,) = _sync_until(db, env, lambda js: all(_ended(j) for j in js), what="the two-rank job")
    log = Path(job["log_path"]).read_text()
    assert job["state"] == "finished", log
    records = tmp_path / "artifacts" / "jobs" / f"job-{job_id}" / "records-1.jsonl"
    assert len(_ops(records, "start")) == 1 and len(_ops(records, "log_epoch")) == 1  # rank 0 alone records
    assert log.count(f"job {job_id} (train)") == 2  # both ranks ran the job process
    (row,) = _results(db, env).values()
    assert row["status"] == "finished" and row["test_hr@10"] is not None


def test_retrying_a_cancelled_preinference_resubmits_the_training_that_waits_for_it(env, small_dataset, tmp_path):
    """afterok on a cancelled job can never be met: Slurm keeps the training pending (tcf: blocked), and the
    retry of the pre-inference cancels it in Slurm and submits it again after the new pre-inference."""
    model = make_tiny_opt(tmp_path / "opt", load_dataset(small_dataset).item_texts, hidden=32, n_blocks=2)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  item_tower: text\n  embedding_dim: 16\n"
                   f"train:\n  epochs: 1\ntext_encoder:\n  model: {model}\n  max_tokens: 12\n")
    db = tmp_path / "experiments.db"
    infer, train = map(int, tcf("queue", "add", str(cfg), "--db", str(db), cwd=tmp_path).stdout.split())
    assert tcf("queue", "submit", "--db", str(db), cwd=tmp_path, env=env).returncode == 0
    r = tcf("queue", "cancel", str(infer), "--db", str(db), cwd=tmp_path, env=env)  # scancel
    assert r.returncode == 0 and "scancel" in r.stderr, r.stderr
    def blocked(js: list[dict]) -> bool:
        by_id = {j["id"]: j for j in js}
        return by_id[train]["state"] == "blocked" and _ended(by_id[infer])

    jobs = {j["id"]: j for j in _sync_until(db, env, blocked, timeout=60, what="the training blocked behind "
                                                                              "the cancelled pre-inference")}
    assert jobs[infer]["state"] == "cancelled" and jobs[train]["slurm_state"] == "PENDING"
    old = jobs[train]["slurm_id"]
    r = tcf("queue", "retry", str(infer), "--db", str(db), cwd=tmp_path, env=env)
    assert r.returncode == 0 and f"job {train} " in r.stderr, r.stderr
    jobs = {j["id"]: j for j in _sync_until(db, env, lambda js: all(_ended(j) for j in js), what="both jobs")}
    assert jobs[infer]["state"] == jobs[train]["state"] == "finished", jobs
    assert jobs[train]["slurm_id"] != old and jobs[train]["attempts"] == 2


def test_submit_refuses_a_bad_flag_in_one_line(tmp_path, env):
    db = tmp_path / "experiments.db"
    for args, flag in ((["--time", "soon"], "--time"), (["--gres", "gpu:one"], "--gres"),
                       (["--partition", "a b"], "--partition")):
        r = tcf("queue", "submit", *args, "--dry-run", "--db", str(db), cwd=tmp_path, env=env)
        assert r.returncode == 2 and r.stderr.startswith(f"error: {flag}:") and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_the_job_process_module_runs_without_textual():
    r = subprocess.run([sys.executable, "-c", "import sys, tcf.jobs.slurm, tcf.jobs.records, tcf.store.records; "
                        "print('textual' in sys.modules)"], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
