"""`tcf run` with a text tower: pre-inference once and reused, and two gloo ranks training like one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import tcf, text_tower_setup

from tcf.config import load_config
from tcf.experiment import prepared_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    return text_tower_setup(tmp_path_factory.mktemp("text"), small_dataset)


def test_run_pipeline_pre_infers_once_and_reuses_it(setup, tmp_path):
    _, config, _ = setup
    db = tmp_path / "exp.db"
    r = tcf("run", str(config), "-S", "text_encoder.unfreeze=1", "--db", str(db), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:
        starts = c.execute("SELECT count(*) FROM events WHERE kind = 'range_start'").fetchone()[0]
    assert starts >= 1
    r = tcf("run", str(config), "-S", "text_encoder.unfreeze=1", "--db", str(db), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(db) as c:
        again = c.execute("SELECT count(*) FROM events WHERE kind = 'range_start'").fetchone()[0]
        rows = c.execute("SELECT status, item_tower FROM runs").fetchall()
    assert again == starts  # the second run encoded nothing: the latents artifact was reused
    assert rows == [("finished", "text"), ("finished", "text")]


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_two_gloo_ranks_train_a_text_sasrec_like_one_rank(setup, tmp_path, unfreeze):
    """Pre-inference split across ranks, DDP over the LM block and projection, test on the best checkpoint."""
    _, config, _ = setup
    args = ["run", str(config), "-S", f"text_encoder.unfreeze={unfreeze}", "-S", "train.device=cpu",
            "-S", "train.epochs=3", "-S", "train.patience=100", "-S", "train.text_lr=0.001"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    r = tcf(*args, "--db", str(tmp_path / "one" / "e.db"), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(29600 + os.getpid() % 1000 + unfreeze), "-m", "tcf.cli", *args,
                        "--db", str(tmp_path / "two" / "e.db")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, losses = [], []
    for name in ("one", "two"):
        with sqlite3.connect(tmp_path / name / "e.db") as c:
            c.row_factory = sqlite3.Row
            rows.append([dict(row) for row in c.execute("SELECT * FROM results")])
            losses.append([row[0] for row in c.execute("SELECT train_loss FROM epochs ORDER BY epoch")])
            assert len(losses[-1]) == 3  # only rank 0 wrote
        metas = [p / "meta.json" for p in (tmp_path / name / "artifacts" / "latents").iterdir()
                 if not p.name.startswith(".")]
        assert len(metas) == 1  # each store pre-inferred on its own (two ranks: a share each)
    (a,), (b,) = rows
    assert json.loads(metas[0].read_text())["ranks"] == 2
    assert a["status"] == b["status"] == "finished" and a["best_epoch"] == b["best_epoch"]
    # Frozen: the same floats. Fine-tuned: the block gradients are summed across ranks in another order
    # (fp32), which may move one user's target by a rank or so on one CPU and not another; a bound of
    # one user's whole contribution still fails for any real difference between the two trainings.
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    one_user = 1e-6 if unfreeze == 0 else 1.0 / prepared_data(load_config(config)[0]).n_users
    for key in ("valid_hr@10", "valid_ndcg@10", "test_hr@10", "test_ndcg@10"):
        assert b[key] == pytest.approx(a[key], abs=one_user), key
