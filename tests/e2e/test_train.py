"""End-to-end training through the CLI: resume after SIGKILL, two gloo ranks, the demo, evaluation protocols."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tcf, tcf_here, text_tower_setup

BASE = ["-S", "model.embedding_dim=32", "-S", "train.batch_size=32", "-S", "train.patience=100",
        "-S", "eval.ks=[5,10]"]


def _config(tmp_path: Path, dataset: Path, **extra: str) -> Path:
    lines = [f"dataset:\n  path: {dataset}\n"]
    p = tmp_path / "exp.yaml"
    p.write_text("".join(lines))
    return p


def _results(db: Path) -> list[dict]:
    r = tcf("results", "--format", "json", "--db", str(db), cwd=db.parent)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _epochs_done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_resume_after_sigkill_matches_uninterrupted(tmp_path, small_dataset):
    cfg = _config(tmp_path, small_dataset)
    args = ["run", str(cfg), *BASE, "-S", "train.epochs=6", "-S", "model.architecture=sasrec"]

    ref_db = tmp_path / "ref.db"
    r = tcf(*args, "--db", str(ref_db), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (ref,) = _results(ref_db)

    db = tmp_path / "killed.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tcf.cli", *args, "--db", str(db)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _epochs_done(db) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _epochs_done(db)
    assert 3 <= done < 6
    (killed,) = _results(db)
    with sqlite3.connect(db) as c:  # SIGKILL leaves no chance to record anything ...
        assert c.execute("SELECT status FROM runs").fetchone()[0] == "running"
    assert killed["status"] == "interrupted"  # ... but its owner is gone, so readers say what it is

    r = tcf("run", "--resume", str(killed["run_id"]), "--db", str(db), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (resumed,) = _results(db)
    assert resumed["status"] == "finished"
    for key in ("test_hr@10", "test_ndcg@10", "test_hr@5", "valid_hr@10", "best_epoch"):
        assert resumed[key] == ref[key], key
    with sqlite3.connect(db) as c:
        epochs = [e for (e,) in c.execute("SELECT epoch FROM epochs ORDER BY epoch")]
    assert epochs == list(range(1, 7))  # every epoch recorded once, none replayed twice


def test_resume_refuses_finished_run(tmp_path, small_dataset):
    cfg = _config(tmp_path, small_dataset)
    db = tmp_path / "x.db"
    assert tcf("run", str(cfg), "-S", "model.architecture=pop", "--db", str(db), cwd=tmp_path).returncode == 0
    r = tcf("run", "--resume", "1", "--db", str(db), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "error: run 1 already finished"


# (CE needs no gathering: its windows run the same code as IBCE's up to the loss)
@pytest.mark.parametrize("arch,loss,examples", [("sasrec", "ibce", "windows"), ("dssm", "ibce", "windows"),
                                                ("sasrec", "ibce", "prefixes")])
def test_two_gloo_ranks_match_one_rank(tmp_path, small_dataset, arch, loss, examples):
    cfg = _config(tmp_path, small_dataset)
    # an epoch of prefixes is ~20x the steps of one of windows: sums in the two orders of floats drift apart
    # (by 1e-5 in the loss) within three of them, so two epochs compare as closely as three of windows
    epochs = 2 if examples == "prefixes" else 3
    args = ["run", str(cfg), *BASE, "-S", f"train.epochs={epochs}", "-S", f"model.architecture={arch}",
            "-S", f"train.loss={loss}", "-S", f"train.examples={examples}",
            "-S", "model.dropout=0.0", "-S", "train.device=cpu"]
    one = tmp_path / "one.db"
    r = tcf(*args, "--db", str(one), cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    two = tmp_path / "two.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29500 + os.getpid() % 1000), "-m", "tcf.cli", *args,
                        "--db", str(two)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (a,), (b,) = _results(one), _results(two)
    for key in ("valid_hr@10", "valid_ndcg@10", "test_hr@10", "test_ndcg@10", "test_hr@5"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert a["best_epoch"] == b["best_epoch"]
    with sqlite3.connect(two) as c:  # only rank 0 wrote: one run, one row per epoch
        assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        assert c.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == epochs


def test_sigterm_marks_run_interrupted_and_resume_keeps_its_config(tmp_path, small_dataset):
    cfg = _config(tmp_path, small_dataset)
    db = tmp_path / "t.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tcf.cli", "run", str(cfg), *BASE, "-S", "train.epochs=50",
                             "--db", str(db)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _epochs_done(db) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    (row,) = _results(db)
    assert row["status"] == "interrupted"
    r = tcf("run", "--resume", str(row["run_id"]), "-S", "train.epochs=3", "--db", str(db), cwd=tmp_path)
    assert r.returncode == 2 and "give no CONFIG or -S" in r.stderr


def test_cold_start_protocol_from_run_to_results(tmp_path, small_dataset):
    """`eval.protocol: cold` end to end: the run comparison, `tcf results` (json, text, pivot) and the store
    say which protocol made each number; the text tower's cold metrics are numbers, the ID tower's n/a."""
    root, config, _ = text_tower_setup(tmp_path, small_dataset)
    cold = root / "cold.yaml"
    cold.write_text(config.read_text() + "eval:\n  protocol: cold\n  cold_items: 0.2\nruns:\n"
                    "  - model.architecture: pop\n  - model.item_tower: id\n  - name: cold-text\n")
    db = root / "e.db"
    r = tcf_here("run", str(cold), "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "test metrics (cold, x100)" in r.stdout and "not applicable" in r.stdout  # one protocol: in the title
    full = root / "full.yaml"
    full.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    assert tcf_here("run", str(full), "--db", str(db), cwd=root).returncode == 0

    rows = json.loads(tcf_here("results", "--format", "json", "--db", str(db), cwd=root).stdout)
    by = {(row["architecture"], row["item_tower"], row["protocol"]): row for row in rows}
    assert set(by) == {("pop", "text", "cold"), ("sasrec", "id", "cold"), ("sasrec", "text", "cold"),
                       ("pop", "id", "full")}
    text, id_, pop = by["sasrec", "text", "cold"], by["sasrec", "id", "cold"], by["pop", "text", "cold"]
    assert 0 < text["test_ndcg@10"] < text["test_hr@10"] <= 1
    assert id_["test_hr@10"] is None and id_["test_ndcg@10"] is None and id_["valid_hr@10"] > 0
    assert pop["test_hr@10"] == 0.0 < by["pop", "id", "full"]["test_hr@10"]
    with sqlite3.connect(db) as c:
        assert sorted(c.execute("SELECT protocol, count(*) FROM runs GROUP BY protocol")) == [("cold", 3),
                                                                                             ("full", 1)]
        assert c.execute("SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.item_tower = 'id' "
                         "AND r.protocol = 'cold' AND m.split = 'test' AND m.value IS NULL").fetchone() == (2,)

    table = root / "results.txt"
    assert tcf_here("results", "--output", str(table), "--db", str(db), cwd=root).returncode == 0
    text_lines = table.read_text().splitlines()
    columns = [c.strip() for c in next(line for line in text_lines if "┃" in line).split("┃")]
    assert "protocol" in columns
    id_line = next(line for line in text_lines if "sasrec-id" in line)
    cells = [c.strip() for c in id_line.split("│")]
    assert cells[columns.index("protocol")] == "cold" and cells[columns.index("test_hr@10")] == "-"

    pivot = tcf_here("results", "--pivot", "architecture,item_tower:dataset", "--metric", "test_hr@10",
                     "--format", "csv", "--db", str(db), cwd=root)
    assert pivot.returncode == 0, pivot.stderr
    cells = list(csv.DictReader(io.StringIO(pivot.stdout)))
    assert sorted((c["protocol"], c["architecture"], c["item_tower"]) for c in cells) == [
        ("cold", "pop", "text"), ("cold", "sasrec", "text"), ("full", "pop", "id")]  # no cell mixes them


def test_each_run_records_its_threads_and_repeats_exactly_at_that_count(tmp_path, small_dataset):
    """Two runs pinned to 2 threads (no OMP_NUM_THREADS) record 2 and end with the same metrics to the last bit;
    the user's OMP_NUM_THREADS=1 overrides train.threads and is what the run records."""
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  embedding_dim: 16\n"
                      "train:\n  epochs: 2\n  batch_size: 64\n  threads: 2\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "tcf.cli", "run", str(config)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "computed with 2 CPU threads (set by train.threads)" in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "tcf.cli", "run", str(config)], cwd=tmp_path,
                       env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "computed with 1 CPU thread (set by OMP_NUM_THREADS)" in " ".join(r.stdout.split())
    rows = json.loads(subprocess.run([sys.executable, "-m", "tcf.cli", "results", "--format", "json"], cwd=tmp_path,
                                     env=env, capture_output=True, text=True, check=True).stdout)
    assert [row["threads"] for row in rows] == [2, 2, 1]
    metrics = [{k: v for k, v in row.items() if k.startswith(("test_", "valid_"))} for row in rows]
    assert metrics[0] == metrics[1] and metrics[0]["test_hr@10"] > 0
