"""Chunk-major pre-inference under real SIGKILLs: every rerun continues after the last committed chunk, no
committed chunk is computed again, and the embeddings are bitwise those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from helpers import PAD

SCRIPT = """
import sys, numpy as np, torch
from tcf.preinfer.planner import Plan, RangePlan
from tcf.preinfer.runner import run_preinference
torch.set_num_threads(1)
model, out = sys.argv[1], sys.argv[2]
data = np.load(sys.argv[3])
ranges = [RangePlan(0, 1, 0, 0, 4, True, False), RangePlan(1, 3, 0, 0, 4, False, True)]
plan = Plan(ranges, 1 << 30, 0, len(data["lengths"]), data["ids"].shape[1], "fp32", "fp32", 0, 0, 1.0, 0.0,
            schedule="chunk", chunk_tokens=250)
run_preinference(model, data["ids"], data["lengths"], [f"i{r}" for r in range(len(data["lengths"]))], plan, out,
                 device="cpu", dtype=torch.float32, keep_depths=[1])
"""


def _state(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def test_sigkills_at_random_points_resume_at_the_last_committed_chunk(tmp_path):
    import torch
    from transformers import OPTConfig, OPTModel

    model = tmp_path / "opt"
    torch.manual_seed(0)
    OPTModel(OPTConfig(hidden_size=64, num_hidden_layers=3, ffn_dim=128, num_attention_heads=4, vocab_size=200,
                       max_position_embeddings=64, pad_token_id=PAD)).save_pretrained(model)
    rng = np.random.default_rng(0)
    n, t = 1200, 16
    lengths = rng.integers(2, t + 1, n)
    ids = np.where(np.arange(t) < lengths[:, None], rng.integers(3, 200, (n, t)), PAD)
    np.savez(tmp_path / "items.npz", ids=ids, lengths=lengths)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(model), str(out), str(tmp_path / "items.npz")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    out, kills, committed_at_kill = tmp_path / "killed", 0, []
    chooser = random.Random(7)
    while kills < 5:
        proc = start(out)
        # the k-th kill once a k-th sixth of the items is committed, then a random moment into the next chunks
        target, deadline = (kills + 1) * n // 6, time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _state(out).get("chunk_done", 0) < target:
            time.sleep(0.005)
        time.sleep(chooser.uniform(0.0, 0.05))
        if proc.poll() is not None:
            break  # it finished: fewer kill points than asked would fail below
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        kills += 1
        committed_at_kill.append(_state(out).get("chunk_done", 0))
    assert kills == 5, "the run ended before five kills"
    assert committed_at_kill == sorted(committed_at_kill) and committed_at_kill[-1] < n  # progress, never lost
    proc = start(out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    state = _state(out)
    spans = state["chunks"]
    assert [a for a, _ in spans] == [0, *[b for _, b in spans[:-1]]] and spans[-1][1] == n  # each item once
    clean = tmp_path / "clean"
    assert start(clean).wait(timeout=300) == 0
    for name in ("pooled-mean.npy", "pooled-first.npy", "pooled-last.npy", "boundary-001.npy"):
        assert np.array_equal(np.load(out / name), np.load(clean / name)), name
    assert _state(clean)["chunks"] == spans  # the same cuts: a resumed run continues on the uninterrupted run's grid
