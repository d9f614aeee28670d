"""Sweeps over encoders x unfreeze depths x seeds: one pre-inference per encoder serves every depth."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import make_tiny_opt, tcf

from tcf.config import load_config
from tcf.data.reader import load_dataset
from tcf.lm.checkpoint import parameter_count
from tcf.preinfer.encode import sweep_depths
from tcf.util.progress import stage_label

SIZES = {"opt-a": (32, 2), "opt-b": (48, 3)}  # name: (hidden, blocks)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("sweep")
    texts = load_dataset(small_dataset).item_texts
    models = {name: make_tiny_opt(root / name, texts, hidden=h, n_blocks=n) for name, (h, n) in SIZES.items()}
    config = root / "sweep.yaml"
    config.write_text(f"""dataset:
  path: {small_dataset}
model:
  item_tower: text
  embedding_dim: 16
  dropout: 0.0
train:
  epochs: 1
  batch_size: 64
  text_lr: 0.001
text_encoder:
  model: {models['opt-a']}
  max_tokens: 12
  latent_dtype: fp32
sweep:
  text_encoder.model: [{models['opt-a']}, {models['opt-b']}]
  text_encoder.unfreeze: [0, 1]
  seed: [1, 2]
""")
    db = root / "exp.db"
    r = tcf("run", str(config), "--db", str(db), cwd=root, timeout=900)
    assert r.returncode == 0, r.stderr
    return root, config, db, models


def test_sweep_depths_cover_every_unfreeze_of_the_same_encoder(sweep):
    _, config, _, models = sweep
    configs = load_config(config)
    depths = sweep_depths(configs)
    for cfg, keep in zip(configs, depths, strict=True):
        blocks = SIZES[Path(cfg.text_encoder.model).name][1]
        assert keep == (blocks - 1,)  # the frozen runs ask for the fine-tuned runs' depth too
    id_only = load_config(config, ["model.item_tower=id"])
    assert set(sweep_depths(id_only)) == {()}


def test_sweep_runs_every_combination_and_encodes_once_per_encoder(sweep):
    root, _, db, models = sweep
    with sqlite3.connect(db) as c:
        runs = c.execute("SELECT id, name, status, lm_params, config_json FROM runs ORDER BY id").fetchall()
        starts = c.execute("SELECT source, payload_json FROM events WHERE kind = 'range_start'").fetchall()
        payloads = [json.loads(p) for (p,) in c.execute(
            "SELECT payload_json FROM events WHERE kind = 'stage' AND run_id = ?", [runs[0][0]])]
    stages = {stage_label(p["stage"], p.get("epoch")) for p in payloads}
    assert len(runs) == 8 and all(r[2] == "finished" for r in runs)
    combos = set()
    for _, _, _, lm_params, config_json in runs:
        cfg = json.loads(config_json)
        model = Path(cfg["text_encoder"]["model"]).name
        combos.add((model, cfg["text_encoder"]["unfreeze"], cfg["seed"]))
        assert lm_params == parameter_count(models[model])
    assert len(combos) == 8
    assert {"pre-inference", "epoch 1", "evaluate test"} <= stages  # the run's stages are in the db

    artifacts = sorted(p for p in (root / "artifacts" / "latents").iterdir() if not p.name.startswith("."))
    assert len(artifacts) == 2  # one per encoder, not one per (encoder, depth)
    by_hash = {}
    for art in artifacts:
        meta = json.loads((art / "meta.json").read_text())
        blocks = SIZES[Path(meta["model"]).name][1]
        assert meta["depths"] == [blocks - 1] and (art / f"boundary-{blocks - 1:03d}.npy").exists()
        by_hash[art.name] = meta
    sources: dict[str, list[int]] = {}
    for source, payload in starts:
        sources.setdefault(source.removeprefix("infer:"), []).append(json.loads(payload)["range"])
    assert set(sources) == set(by_hash)  # no other pre-inference ran
    for name, ranges in sources.items():  # and each ran every range of its plan exactly once
        assert sorted(ranges) == list(range(len(by_hash[name]["ranges"])))


def test_a_new_depth_encodes_again_and_an_old_depth_reuses(sweep, tmp_path):
    root, config, db, models = sweep
    args = ["-S", f"text_encoder.model={models['opt-b']}", "-S", "seed=1", "-S", "train.epochs=1"]
    with sqlite3.connect(db) as c:
        before = c.execute("SELECT count(*) FROM events WHERE kind = 'range_start'").fetchone()[0]
    r = tcf("infer", str(config), *args, "-S", "text_encoder.unfreeze=1", "--db", str(db), cwd=root)
    assert r.returncode == 0 and "reused" in r.stderr, r.stderr
    r = tcf("infer", str(config), *args, "-S", "text_encoder.unfreeze=2", "--db", str(db), cwd=root)
    assert r.returncode == 0 and "wrote" in r.stderr, r.stderr
    meta = json.loads((Path(r.stdout.strip()) / "meta.json").read_text())
    assert meta["depths"] == [1]
    with sqlite3.connect(db) as c:
        after = c.execute("SELECT count(*) FROM events WHERE kind = 'range_start'").fetchone()[0]
    assert after > before


def test_pivot_of_the_sweep_aggregates_seeds_and_compiles_as_latex(sweep, tmp_path):
    root, _, db, _ = sweep
    spec = "text_encoder.model,text_encoder.unfreeze:dataset"
    r = tcf("results", "--pivot", spec, "--format", "json", "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    pivot = json.loads(r.stdout)
    flat = json.loads(tcf("results", "--format", "json", "--db", str(db), cwd=root).stdout)
    with sqlite3.connect(db) as c:
        config = {i: json.loads(j) for i, j in c.execute("SELECT id, config_json FROM runs")}
    groups: dict[tuple, list[float]] = {}
    for row in flat:
        te = config[row["run_id"]]["text_encoder"]
        groups.setdefault((Path(te["model"]).name, te["unfreeze"]), []).append(row["test_ndcg@10"])
    assert len(pivot["cells"]) == len(groups) == 4
    for cell in pivot["cells"]:
        values = groups[(cell["row"]["text_encoder.model"], cell["row"]["text_encoder.unfreeze"])]
        mean = sum(values) / 2
        assert cell["n"] == 2 and cell["mean"] == pytest.approx(mean)
        assert cell["std"] == pytest.approx((sum((v - mean) ** 2 for v in values)) ** 0.5)  # ddof=1, n=2
    table = tcf("results", "--pivot", spec, "--db", str(db), cwd=root, env={"COLUMNS": "160"})
    assert table.returncode == 0 and "±" in table.stdout

    tex = tmp_path / "t.tex"
    r = tcf("results", "--pivot", spec, "--format", "latex", "--output", str(tex), "--db", str(db), cwd=root)
    assert r.returncode == 0, r.stderr
    assert r"\toprule" in tex.read_text() and r"$\pm$" in tex.read_text()
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                                      f"{tex.read_text()}\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
