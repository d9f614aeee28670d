"""Text item towers: frozen and top-N fine-tuned, built from a pre-inference artifact of a tiny OPT."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import tcf
from safetensors.torch import load_file
from test_lm_tokenize import make_tiny_opt

from engine.config import load_config
from engine.data.reader import load_dataset
from engine.dist import DistContext
from engine.experiment import prepared_data
from engine.infer.job import model_dir_of, run_infer_job
from engine.rec.losses import log_popularity
from engine.rec.objective import SASRecObjective
from engine.rec.text_towers import FineTunedTextTower, FrozenTextTower, TextSource
from engine.rec.trainer import build_model, param_groups

N_BLOCKS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("text")
    raw = load_dataset(small_dataset)
    model_dir = make_tiny_opt(root / "tiny-opt", raw.item_texts, hidden=32, n_blocks=N_BLOCKS)
    config = root / "exp.yaml"
    config.write_text(f"""dataset:
  path: {small_dataset}
model:
  item_tower: text
  embedding_dim: 16
  dropout: 0.0
train:
  epochs: 2
  batch_size: 32
text_encoder:
  model: {model_dir}
  max_tokens: 12
  latent_dtype: fp32
  gpu_memory_budget: 1GiB
""")
    return root, config, model_dir


def _source(root: Path, config: Path, unfreeze: int):
    cfg = load_config(config, [f"text_encoder.unfreeze={unfreeze}"])[0]
    latents, _ = run_infer_job(cfg, root / "e.db", device=torch.device("cpu"))
    te = cfg.text_encoder
    return cfg, TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling)


def _checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _digest(model_dir: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(model_dir.glob("*.safetensors")))).hexdigest()


def _one_step(cfg, model, data) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    objective = SASRecObjective(model, log_popularity(data.popularity), cfg.train.loss, data.n_items)
    seqs = torch.as_tensor(data.train_sequences()[:16])
    model.train()
    loss, n = objective(seqs, 0, len(seqs), DistContext(0, 1, torch.device("cpu")), torch.Generator())
    (loss / n).backward()
    optimizer.step()
    return before


def test_fine_tuned_tower_starts_from_the_checkpoint_and_trains_only_its_parameters(setup):
    root, config, model_dir = setup
    cfg, source = _source(root, config, unfreeze=1)
    data = prepared_data(cfg)
    digest = _digest(model_dir)
    model = build_model(cfg, data, source)
    tower = model.item_tower
    assert isinstance(tower, FineTunedTextTower)
    stored = _checkpoint_tensors(model_dir)
    block_params = dict(tower.blocks.named_parameters())
    assert sorted(block_params) == sorted(k.removeprefix("decoder.") for k in stored
                                          if k.startswith(f"decoder.layers.{N_BLOCKS - 1}.")
                                          or k.startswith("decoder.final_layer_norm."))
    for name, p in block_params.items():  # the recommender's init never touched them
        assert torch.equal(p.detach(), stored[f"decoder.{name}"].float()), name

    groups = param_groups(model, cfg)
    text_ids = {id(p) for p in tower.parameters()}
    assert [g["lr"] for g in groups] == [cfg.train.lr, cfg.train.text_lr]
    assert {id(p) for p in groups[1]["params"]} == text_ids
    assert not text_ids & {id(p) for p in groups[0]["params"]}

    latents_before = tower.latents.clone()
    before = _one_step(cfg, model, data)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert {n for n in changed if n.startswith("item_tower.blocks.")}  # the LM block trains
    assert any(n.startswith("item_tower.mlp.") for n in changed) and any(n.startswith("blocks.") for n in changed)
    assert "positions.weight" in changed
    assert torch.equal(tower.latents, latents_before)  # the stored latents are inputs, never trained
    assert _digest(model_dir) == digest  # nor is the checkpoint on disk (its pages are mapped privately)


def test_frozen_tower_is_the_pooled_embedding_through_the_projection(setup):
    root, config, _ = setup
    cfg, source = _source(root, config, unfreeze=0)
    data = prepared_data(cfg)
    model = build_model(cfg, data, source)
    tower = model.item_tower
    assert isinstance(tower, FrozenTextTower)
    assert torch.all(tower.table[0] == 0) and tower.table.shape == (data.n_items + 1, 32)
    table = tower.table.clone()
    names = {n for n, _ in model.named_parameters()}
    assert not any("table" in n for n in names)  # a buffer: not trained, not checkpointed
    before = _one_step(cfg, model, data)
    assert torch.equal(tower.table, table)
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in ("item_tower.mlp.0.weight", "positions.weight"))


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
