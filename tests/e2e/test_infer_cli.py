"""`tcf infer` end to end on a tiny OPT with a trained tokenizer, both saved the way models ship."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_opt, tcf
from transformers import AutoTokenizer, OPTModel

from tcf.config import load_config
from tcf.data.reader import load_dataset
from tcf.preinfer.encode import run_infer_job


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("infer")
    raw = load_dataset(small_dataset)
    model_dir = make_tiny_opt(root / "tiny-opt", raw.item_texts, hidden=32, n_blocks=4, max_shard_size="40KB")
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

    assert not list(latents.glob("boundary-*.npy"))  # consumed boundaries deleted, none kept
    mean, last = np.load(latents / "pooled-mean.npy"), np.load(latents / "pooled-last.npy")
    assert mean.shape == (len(raw.item_keys), 32)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = OPTModel.from_pretrained(str(model_dir)).eval()
    texts = raw.item_texts[:9]
    enc = tok(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state.numpy()
    for i in range(len(texts)):
        n = int(enc["attention_mask"][i].sum())
        assert np.abs(mean[i] - ref[i, :n].mean(0)).max() <= 1e-5
        assert np.abs(last[i] - ref[i, n - 1]).max() <= 1e-5

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


def _one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _no_complete_latents(root: Path) -> None:
    """No latents artifact exists, and no work folder holds committed item embeddings."""
    latents = root / "artifacts" / "latents"
    if latents.is_dir():
        assert [p.name for p in latents.iterdir() if p.name != ".locks" and not p.name.startswith(".work-")] == []
        for work in latents.glob(".work-*"):
            assert not list(work.glob("pooled-*.npy")) and not list(work.glob("boundary-*.npy"))


def test_infer_bad_checkpoint_budget_and_disk_full(setup, tmp_path):
    root, _, model_dir = setup
    # a checkpoint without one of the tensors a block needs
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for index in broken.glob("*.index.json"):
        data = json.loads(index.read_text())
        del data["weight_map"]["decoder.layers.2.fc1.weight"]
        index.write_text(json.dumps(data))
    r = tcf("infer", str(root / "exp.yaml"), "-S", f"text_encoder.model={broken}", "--gpu-memory-budget", "1GiB",
            "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    _one_line_error(r, "layers.2.fc1.weight")
    _no_complete_latents(tmp_path)
    # a budget too small for one block and one item names the smallest that works
    r = tcf("infer", str(root / "exp.yaml"), "--gpu-memory-budget", "300KiB", "--db", str(tmp_path / "e.db"),
            cwd=tmp_path)
    _one_line_error(r, "too small", "need at least")
    _no_complete_latents(tmp_path)
    # the disk is full when a range's latents are written (a file-size limit: the OS refuses the space)
    out = tmp_path / "full"
    out.mkdir()
    limit = 150_000  # the database and token table fit, a boundary (120 x 12 x 32 fp32 = 184 kB) does not
    r = subprocess.run([sys.executable, "-m", "tcf.cli", "infer", str(root / "exp.yaml"), "--gpu-memory-budget",
                        "1GiB", "--ranges", "0:2,2:4", "--db", str(out / "e.db")], cwd=out, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    _one_line_error(r, "boundary-002.npy.tmp", "File too large")
    _no_complete_latents(out)
    assert not list(out.glob("artifacts/latents/.work-*/boundary-*"))  # the partial file is removed too


def test_another_text_template_is_another_pre_inference(setup, tmp_path):
    """Latents are keyed by the token artifact, and that by the texts a template made: a new template encodes
    anew, the same one again reuses."""
    root, raw, _ = setup
    wide = tmp_path / "wide"
    wide.mkdir()
    rows = [f"{k}\t{' '.join(t.split()[:3])}\t{' '.join(t.split()[3:])}\n"  # title: the first three words
            for k, t in zip(raw.item_keys, raw.item_texts, strict=True)]
    (wide / "items.tsv").write_text("item_id\ttitle\trest\n" + "".join(rows))
    shutil.copy(raw.path / "behaviors.tsv", wide / "behaviors.tsv")
    found = []
    for template in ("{title}: {rest}", "{rest} ({title})", "{title}: {rest}"):
        (cfg,) = load_config(root / "exp.yaml", [f"dataset.path={wide}", "text_encoder.gpu_memory_budget=1GiB",
                                                 f"dataset.text_template={json.dumps(template)}"])
        found.append(run_infer_job(cfg, tmp_path / "e.db", device=torch.device("cpu")))
    (a, reused_a), (b, reused_b), (again, reused_again) = found
    assert a != b and not reused_a and not reused_b
    assert again == a and reused_again
    assert json.loads((a / "meta.json").read_text())["key"]["tokens"] != json.loads(
        (b / "meta.json").read_text())["key"]["tokens"]
    assert not np.allclose(np.load(a / "pooled-mean.npy"), np.load(b / "pooled-mean.npy"))


def test_infer_on_two_gloo_ranks_matches_the_whole_model(setup):
    root, raw, model_dir = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29900 + os.getpid() % 90), "-m", "tcf.cli", "infer", str(root / "exp.yaml"),
                        "-S", "text_encoder.max_tokens=10", "--gpu-memory-budget", "1GiB", "--ranges", "0:2,2:4",
                        "--batch-size", "5", "--db", str(root / "ddp.db")], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    latents = Path(r.stdout.strip().splitlines()[-1])
    assert json.loads((latents / "meta.json").read_text())["ranks"] == 2
    mean = np.load(latents / "pooled-mean.npy")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = OPTModel.from_pretrained(str(model_dir)).eval()
    enc = tok(raw.item_texts, padding=True, truncation=True, max_length=10, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state.numpy()
    n = enc["attention_mask"].sum(1).numpy()
    assert max(np.abs(mean[i] - ref[i, : n[i]].mean(0)).max() for i in range(len(n))) <= 1e-5  # no row lost


def test_sigkill_in_the_middle_of_a_range_resumes_from_the_last_committed_one(tmp_path):
    """A real SIGKILL while range 1:2 is being written: the rerun starts at boundary 1, recomputes nothing
    committed, and its item embeddings are bitwise those of an uninterrupted run."""
    from tcf.data.synth import synth_dataset

    data = tmp_path / "data"
    synth_dataset(data, users=60, items=2500, seed=1)
    raw = load_dataset(data)
    model_dir = make_tiny_opt(tmp_path / "opt", raw.item_texts, hidden=64, n_blocks=3)
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {data}\ntext_encoder:\n  model: {model_dir}\n  max_tokens: 12\n"
                      "  latent_dtype: fp32\n  ranges: '0:1,1:2,2:3'\n  batch_size: 1\n")
    args = [sys.executable, "-m", "tcf.cli", "infer", str(config), "--gpu-memory-budget", "1GiB"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen([*args, "--db", str(killed / "e.db")], cwd=killed, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            work = next((killed / "artifacts" / "latents").glob(".work-*"), None) if (
                killed / "artifacts" / "latents").is_dir() else None
            state = work / "state.json" if work else None
            if work and (work / "boundary-002.npy.tmp").exists() and state.is_file() and \
                    1 in json.loads(state.read_text()).get("boundaries", []):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before range 1:2 was under way"
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads((work / "state.json").read_text())
    assert state["boundaries"] == [1] and not state.get("pooled")  # range 1:2 was cut short, uncommitted

    r = subprocess.run([*args, "--db", str(killed / "e.db")], cwd=killed, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    resumed = Path(r.stdout.strip().splitlines()[-1])
    with sqlite3.connect(killed / "e.db") as c:
        starts = [json.loads(d)["start"] for (d,) in c.execute(
            "SELECT payload_json FROM events WHERE kind = 'range_start' ORDER BY id")]
    assert starts == [0, 1, 1, 2]  # first run: 0:1 and 1:2 (killed); rerun: 1:2 and 2:3 only

    clean = tmp_path / "clean"
    clean.mkdir()
    r = subprocess.run([*args, "--db", str(clean / "e.db")], cwd=clean, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    uninterrupted = Path(r.stdout.strip().splitlines()[-1])
    for kind in ("mean", "first", "last"):
        assert np.array_equal(np.load(resumed / f"pooled-{kind}.npy"), np.load(uninterrupted / f"pooled-{kind}.npy"))


def test_a_plan_that_fits_neither_disk_nor_host_memory_is_refused_before_any_latents(setup, tmp_path):
    root, _, _ = setup
    r = tcf("infer", str(root / "exp.yaml"), "--gpu-memory-budget", "1GiB", "--ranges", "0:2,2:4", "--schedule",
            "chunk", "-S", "text_encoder.host_memory_budget=1KiB", "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    _one_line_error(r, "--schedule: pre-inference does not fit this machine: chunk-major needs",
                    "of host memory", "short")
    latents = tmp_path / "artifacts" / "latents"
    assert [p.name for p in latents.iterdir()] == [".locks"]  # only the lock: no work folder, no latents


def test_infer_keeps_the_depth_of_a_sweep_whose_first_run_trains_no_text_tower(setup, tmp_path):
    """As in configs/demo.yaml: pop first, then a frozen and a top-1 text tower sharing one encoder."""
    root, _, model_dir = setup
    config = tmp_path / "runs.yaml"
    config.write_text((root / "exp.yaml").read_text() + "runs:\n  - {name: pop, model.architecture: pop}\n"
                      "  - {name: frozen, model.item_tower: text}\n"
                      "  - {name: top1, model.item_tower: text, text_encoder.unfreeze: 1}\n")
    r = tcf("infer", str(config), "--gpu-memory-budget", "1GiB", "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (latents,) = [Path(line) for line in r.stdout.split()]
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["depths"] == [3] and 3 in [stop for _, stop in meta["ranges"]]  # 4 blocks, the top one fine-tuned
    assert (latents / "boundary-003.npy").is_file()
