"""Tables that fit a terminal (issue 22, item 2): at 80 and 120 columns `tcf results` and `tcf queue ls` show every
run's and job's id and whole name on one line; metric and descriptive columns go first, named in the caption."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import tcf, tcf_here

from tcf.store.db import Store

NAMES = ["demo-pop-id", "demo-sasrec-demo-opt-frozen", "mind-sasrec-opt-13b-top2-lr3e-4-wd0.1-seed3",
         "demo-sasrec-demo-opt-top1"]


def _store(path: Path) -> list[int]:
    store = Store(path)
    ids = []
    for n, name in enumerate(NAMES):
        run = store.create_run(name=name, config={}, config_hash=f"h{n}", dataset="demo", architecture="sasrec",
                               item_tower="text")
        metrics = {f"{m}@{k}": 0.1 + n / 100 for m in ("hr", "ndcg") for k in (5, 10, 20, 50)}
        store.log_final(run, "valid", metrics, best_epoch=3, stopped_epoch=7)
        store.log_final(run, "test", metrics, best_epoch=3, stopped_epoch=7)
        store.set_status(run, "finished")
        ids.append(run)
    store.close()
    return ids


def _one_line_each(text: str, ids: list[int], names: list[str], width: int) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    for i, name in zip(ids, names, strict=True):
        assert any(re.search(rf"(^|\W){i}\W.*\W{re.escape(name)}(\W|$)", line) for line in lines), (i, name, text)


@pytest.mark.parametrize("width", [80, 120])
def test_results_show_every_runs_id_and_whole_name(tmp_path, width):
    ids = _store(tmp_path / "experiments.db")
    r = tcf("results", cwd=tmp_path, env={"COLUMNS": str(width)})
    assert r.returncode == 0, r.stderr
    _one_line_each(r.stdout, ids, NAMES, width)
    assert "finished" in r.stdout and "test_hr@10" in r.stdout  # identity, then the main metrics
    assert "not shown at" in r.stdout and "valid_ndcg@50" in r.stdout  # what was left out is named


def test_a_wide_terminal_shows_every_column(tmp_path):
    _store(tmp_path / "experiments.db")
    r = tcf("results", cwd=tmp_path, env={"COLUMNS": "400"})
    assert r.returncode == 0 and "not shown" not in r.stdout and "valid_ndcg@50" in r.stdout


@pytest.mark.parametrize("width", [80, 120])
def test_queue_ls_shows_every_jobs_id_and_whole_name(tmp_path, small_dataset, width):
    config = tmp_path / "exp.yaml"
    runs = "".join(f"  - {{name: {name}}}\n" for name in NAMES)
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\nruns:\n{runs}")
    added = tcf_here("queue", "add", str(config), "--tag", "narrow", "--note", "a note that says a lot " * 3,
                     cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    ids = [int(i) for i in added.stdout.split()]
    r = tcf("queue", "ls", cwd=tmp_path, env={"COLUMNS": str(width)})
    assert r.returncode == 0, r.stderr
    _one_line_each(r.stdout, ids, NAMES, width)
