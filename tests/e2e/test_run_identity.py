"""A run can only ever continue itself: its own checkpoints, its own inputs, one trainer at a time; and two
runs that need the same pre-inference share it instead of failing.

Each test reproduces a reported case and a sibling of the same class (issue 17, items 1-4).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tcf, text_tower_setup

from tcf.errors import TcfError
from tcf.experiment import checkpoint_dir, owning
from tcf.store.db import Store

ARGS = ["-S", "model.embedding_dim=16", "-S", "train.batch_size=64", "-S", "train.patience=100", "-S", "seed=3"]


def _config(folder: Path, dataset: str) -> Path:
    p = folder / "exp.yaml"
    p.write_text(f"dataset:\n  path: {dataset}\n")
    return p


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tcf.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _count(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _kill_after(proc: subprocess.Popen, db: Path, epochs: int, sig: int = signal.SIGKILL) -> None:
    """Let the run record ``epochs`` epochs (0: just its row, training), then send ``sig``."""
    deadline = time.time() + 240
    sql = "SELECT count(*) FROM epochs" if epochs else "SELECT count(*) FROM runs WHERE status = 'running'"
    while _count(db, sql) < max(epochs, 1) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    proc.wait(timeout=60)


def _result(db: Path) -> dict:
    r = tcf("results", "--format", "json", "--db", str(db), cwd=db.parent)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    return row


def _epochs(db: Path) -> list[int]:
    with sqlite3.connect(db) as c:
        return [e for (e,) in c.execute("SELECT epoch FROM epochs ORDER BY epoch")]


# -- 1. resume only ever continues its own run -----------------------------------------------------

def test_a_second_store_in_the_same_folder_never_resumes_from_the_first_ones_checkpoints(tmp_path, small_dataset):
    """Reported: another experiments.db in the same folder, its run 1 killed early, `--resume 1` 'finished' at
    once with the first store's metrics (run-1/last.pt was the first store's)."""
    cfg = str(_config(tmp_path, str(small_dataset)))
    first = tmp_path / "first.db"
    assert tcf("run", cfg, *ARGS, "-S", "train.epochs=2", "--db", str(first), cwd=tmp_path).returncode == 0
    second = tmp_path / "second.db"
    proc = _start(["run", cfg, *ARGS, "-S", "train.epochs=4", "--db", str(second)], tmp_path)
    _kill_after(proc, second, epochs=0)
    r = tcf("run", "--resume", "1", "--db", str(second), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _epochs(second) == [1, 2, 3, 4]  # trained its own four epochs, not the first store's two
    reference = tmp_path / "reference.db"
    assert tcf("run", cfg, *ARGS, "-S", "train.epochs=4", "--db", str(reference), cwd=tmp_path).returncode == 0
    for key in ("test_hr@10", "test_ndcg@10", "best_epoch"):
        assert _result(second)[key] == _result(reference)[key], key


def test_a_checkpoint_of_another_run_is_refused(tmp_path, small_dataset):
    """Sibling: whatever puts another run's last.pt into a run's folder, the resume refuses it."""
    cfg = str(_config(tmp_path, str(small_dataset)))
    db = tmp_path / "e.db"
    assert tcf("run", cfg, *ARGS, "-S", "train.epochs=1", "--db", str(db), cwd=tmp_path).returncode == 0
    proc = _start(["run", cfg, *ARGS, "-S", "train.epochs=30", "--db", str(db)], tmp_path)
    _kill_after(proc, db, epochs=2)
    store = Store(db)
    donor, victim = (store.get_run(i) for i in (1, 2))
    donor_dir, victim_dir = (checkpoint_dir(db, r["id"], r["uuid"]) for r in (donor, victim))
    assert donor_dir != victim_dir
    assert torch.load(donor_dir / "last.pt", weights_only=True)["identity"]["run"] == donor["uuid"]
    shutil.copy(donor_dir / "last.pt", victim_dir / "last.pt")
    r = tcf("run", "--resume", "2", "--db", str(db), cwd=tmp_path)
    assert r.returncode == 2 and "a checkpoint of another run" in r.stderr and donor["uuid"] in r.stderr
    assert "Traceback" not in r.stderr


def test_a_new_run_never_starts_in_a_folder_holding_files(tmp_path):
    """Sibling: the folder of a new run must be empty (it can only be another run's)."""
    folder = tmp_path / "run-1-abc"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"someone else's")
    store = Store(tmp_path / "e.db")
    with pytest.raises(TcfError, match="holds another run's files"):
        with owning(store, {"id": 1}, folder, resume=False):
            pass
    assert (folder / "last.pt").read_bytes() == b"someone else's"


# -- 2. resume and retry train on the same data -------------------------------------------------------

def test_resume_reads_the_same_data_from_anywhere_and_refuses_changed_data(tmp_path, small_dataset):
    """Reported: a relative dataset.path, and `--resume` from another folder trained on another dataset.
    Sibling: the same file changed in place is refused, naming it."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    for folder in (home, elsewhere):
        (folder / "data").mkdir(parents=True)
    shutil.copytree(small_dataset, home / "data" / "ds")
    other = elsewhere / "data" / "ds"  # the same relative path, other users
    shutil.copytree(small_dataset, other)
    lines = (other / "behaviors.tsv").read_text().splitlines(keepends=True)
    (other / "behaviors.tsv").write_text("".join([lines[0], *lines[1:][::-1][:200]]))
    cfg = str(_config(home, "data/ds"))
    db = home / "e.db"
    proc = _start(["run", cfg, *ARGS, "-S", "train.epochs=6", "--db", str(db)], home)
    _kill_after(proc, db, epochs=2)
    run = Store(db).get_run(1)
    assert run["config"]["dataset"]["path"] == str(home / "data" / "ds")  # stored absolute
    assert set(run["inputs"]) == {"dataset/behaviors.tsv", "dataset/news.tsv"}

    behaviors = home / "data" / "ds" / "behaviors.tsv"
    original = behaviors.read_bytes()
    behaviors.write_bytes(original.replace(b"\n", b"\n", 1) + b"U99999\tN1 N2 N3 N4 N5\n")
    r = tcf("run", "--resume", "1", "--db", str(db), cwd=elsewhere)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {behaviors}: changed since run 1 started")
    behaviors.write_bytes(original)

    r = tcf("run", "--resume", "1", "--db", str(db), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    reference = home / "reference.db"
    assert tcf("run", cfg, *ARGS, "-S", "train.epochs=6", "--db", str(reference), cwd=home).returncode == 0
    for key in ("test_hr@10", "test_ndcg@10", "best_epoch"):
        assert _result(db)[key] == _result(reference)[key], key


# -- 3. one run, one trainer -------------------------------------------------------------------------

def test_a_run_being_trained_cannot_be_resumed_elsewhere(tmp_path, small_dataset):
    """Reported: `tcf run --resume N` was accepted while run N trained in another process. Sibling: once
    its trainer is gone (SIGKILL: the lock dies with it), the resume is accepted."""
    cfg = str(_config(tmp_path, str(small_dataset)))
    db = tmp_path / "e.db"
    proc = _start(["run", cfg, *ARGS, "-S", "train.epochs=500", "--db", str(db)], tmp_path)
    try:
        _wait = time.time() + 120
        while _count(db, "SELECT count(*) FROM epochs") < 1 and time.time() < _wait:
            time.sleep(0.05)
        r = tcf("run", "--resume", "1", "--db", str(db), cwd=tmp_path)
        assert r.returncode == 2 and f"run 1 is being trained by pid {proc.pid}" in r.stderr
        assert proc.poll() is None  # the trainer goes on, its run untouched
        assert _result(db)["status"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _result(db)["status"] == "interrupted"
    again = _start(["run", "--resume", "1", "--db", str(db)], tmp_path)
    _kill_after(again, db, epochs=_count(db, "SELECT count(*) FROM epochs") + 1, sig=signal.SIGTERM)
    assert _result(db)["status"] == "interrupted"


# -- 4. one pre-inference for two runs that need it at once ------------------------------------------

@pytest.mark.parametrize("unfreeze", [(0, 0), (0, 1)], ids=["same-depths", "other-depths"])
def test_two_runs_needing_the_same_preinference_at_once_share_it(tmp_path_factory, small_dataset, unfreeze):
    """Reported: two runs that needed one pre-inference at once; one failed ("another process is running
    pre-inference here"). Now the second waits and reuses the first's latents (sibling: when it needs a depth
    the first does not keep, it encodes after it); both finish and no work folder is left."""
    root, config, _ = text_tower_setup(tmp_path_factory.mktemp("shared"), small_dataset)
    db = root / "e.db"
    procs = [_start(["run", str(config), "-S", "train.epochs=1", "-S", f"text_encoder.unfreeze={u}",
                     "-S", "text_encoder.batch_size=2", "--db", str(db)], root) for u in unfreeze]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    latents = root / "artifacts" / "latents"
    assert not [p for p in latents.iterdir() if p.name.startswith(".work-")]
    with sqlite3.connect(db) as c:
        starts = c.execute("SELECT source, payload_json FROM events WHERE kind = 'range_start'").fetchall()
        assert [s for (s,) in c.execute("SELECT status FROM runs")] == ["finished", "finished"]
    sources = {s for s, _ in starts}
    ranges = sorted(json.loads(p)["range"] for _, p in starts)
    if unfreeze[0] == unfreeze[1]:
        assert len(sources) == 1 and ranges == sorted(set(ranges))  # encoded once, every range once
    else:  # the top-1 run first: its artifact also serves the frozen run; else each encodes its own
        assert len(sources) in (1, 2)
