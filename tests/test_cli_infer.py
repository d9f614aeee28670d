"""`tcf infer` end to end on a tiny OPT with a trained tokenizer, both saved the way models ship."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tcf
from test_lm_tokenize import make_tokenizer_dir
from transformers import AutoTokenizer, OPTConfig, OPTModel

from engine.data.reader import load_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("infer")
    raw = load_dataset(small_dataset)
    model_dir = make_tokenizer_dir(root / "tiny-opt", raw.item_texts, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=32, num_hidden_layers=4, ffn_dim=64, num_attention_heads=4, vocab_size=len(tok),
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=tok.pad_token_id,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    OPTModel(cfg).save_pretrained(model_dir, max_shard_size="40KB")
    (root / "exp.yaml").write_text(f"dataset:\n  path: {small_dataset}\ntext_encoder:\n  model: {model_dir}\n"
                                   "  max_tokens: 12\n  latent_dtype: fp32\n")
    return root, raw, model_dir


def _infer(root: Path, *args: str):
    return tcf("infer", str(root / "exp.yaml"), "--gpu-memory-budget", "1GiB", "--db", str(root / "e.db"), *args,
               cwd=root)


def test_infer_matches_the_whole_model_and_is_reused(setup):
    root, raw, model_dir = setup
    r = _infer(root, "--ranges", "0:1,1:3,3:4", "--batch-size", "7")
    assert r.returncode == 0, r.stderr
    latents = Path(r.stdout.strip().splitlines()[-1])
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["n_items"] == len(raw.item_keys) and meta["ranges"] == [[0, 1], [1, 3], [3, 4]]

    final = np.load(latents / "boundary-004.npy")
    assert sorted(p.name for p in latents.glob("boundary-*.npy")) == ["boundary-004.npy"]  # consumed ones deleted
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = OPTModel.from_pretrained(str(model_dir)).eval()
    texts = raw.item_texts[:9]
    enc = tok(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state.numpy()
    for i in range(len(texts)):
        n = int(enc["attention_mask"][i].sum())
        assert np.abs(final[i, :n] - ref[i, :n]).max() <= 1e-5

    again = _infer(root)
    assert again.returncode == 0 and "reused" in again.stderr and again.stdout.strip() == r.stdout.strip()
    with sqlite3.connect(root / "e.db") as c:
        kinds = [k for (k,) in c.execute("SELECT kind FROM artifacts ORDER BY kind")]
        starts = c.execute("SELECT count(*) FROM events WHERE kind = 'range_start'").fetchone()[0]
    assert kinds == ["latents", "tokens"] and starts == 3  # the second run encoded nothing


def test_infer_bad_input_is_one_line(setup):
    root, _, _ = setup
    r = tcf("infer", str(root / "exp.yaml"), "-S", f"text_encoder.model={root / 'missing'}", "--db",
            str(root / "bad.db"), cwd=root)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    odd = root / "odd-model"
    odd.mkdir(exist_ok=True)
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    r = tcf("infer", str(root / "exp.yaml"), "-S", f"text_encoder.model={odd}", "--gpu-memory-budget", "1GiB",
            "--db", str(root / "bad.db"), cwd=root)
    assert r.returncode == 2 and "unsupported model_type 'gpt_neox'" in r.stderr and "opt" in r.stderr


def test_infer_on_two_gloo_ranks_matches_the_whole_model(setup):
    root, raw, model_dir = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29900 + os.getpid() % 90), "-m", "tcf_tui.cli", "infer", str(root / "exp.yaml"),
                        "-S", "text_encoder.max_tokens=10", "--gpu-memory-budget", "1GiB", "--ranges", "0:2,2:4",
                        "--batch-size", "5", "--db", str(root / "ddp.db")], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    latents = Path(r.stdout.strip().splitlines()[-1])
    assert json.loads((latents / "meta.json").read_text())["ranks"] == 2
    final = np.load(latents / "boundary-004.npy")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = OPTModel.from_pretrained(str(model_dir)).eval()
    enc = tok(raw.item_texts, padding=True, truncation=True, max_length=10, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state.numpy()
    n = enc["attention_mask"].sum(1).numpy()
    assert max(np.abs(final[i, : n[i]] - ref[i, : n[i]]).max() for i in range(len(n))) <= 1e-5  # no row lost
