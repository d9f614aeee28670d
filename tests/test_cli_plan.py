"""`tcf plan` on a real (tiny) sharded OPT checkpoint written by transformers."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tcf
from transformers import OPTConfig, OPTModel

from tcf.util.gpu import get_provider


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("plan")
    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=64, num_hidden_layers=6, ffn_dim=256, num_attention_heads=4, vocab_size=500,
                    max_position_embeddings=64, word_embed_proj_dim=64)
    OPTModel(cfg).save_pretrained(root / "tiny-opt", max_shard_size="200KB")
    (root / "exp.yaml").write_text(f"dataset:\n  path: {small_dataset}\ntext_encoder:\n  model: {root / 'tiny-opt'}\n")
    return root


def _ranges(stdout: str) -> list[str]:
    return re.findall(r"^(\d+:\d+)\s", stdout, flags=re.M)


def test_plan_covers_every_block_and_shrinks_with_the_budget(setup):
    big = tcf("plan", str(setup / "exp.yaml"), "--gpu-memory-budget", "2GiB", cwd=setup)
    assert big.returncode == 0, big.stderr
    assert _ranges(big.stdout) == ["0:6"]
    pinned = tcf("plan", str(setup / "exp.yaml"), "--gpu-memory-budget", "2GiB", "--ranges", "0:2,2:6",
                 "--batch-size", "8", cwd=setup)
    assert pinned.returncode == 0, pinned.stderr
    assert _ranges(pinned.stdout) == ["0:2", "2:6"] and re.search(r"^0:2\s.*\s8\s", pinned.stdout, flags=re.M)


def test_plan_errors_are_one_line(setup):
    cfg = str(setup / "exp.yaml")
    small = tcf("plan", cfg, "--gpu-memory-budget", "1MiB", cwd=setup)
    assert small.returncode == 2 and re.fullmatch(
        r"error: budget 1\.0 MiB is too small: one block and one item need at least [\d.]+ MiB.*\n", small.stderr)
    bad = tcf("plan", cfg, "--gpu-memory-budget", "2GiB", "--ranges", "0:2,3:6", cwd=setup)
    assert bad.returncode == 2 and "'3:6'" in bad.stderr
    nogpu = tcf("plan", cfg, cwd=setup)
    if not get_provider().available and not torch.cuda.is_available():
        assert nogpu.returncode == 2 and "NVML unavailable" in nogpu.stderr
    else:  # the budget is the GPU's free memory
        assert nogpu.returncode == 0, nogpu.stderr
    missing = tcf("plan", cfg, "-S", f"text_encoder.model={setup / 'nope'}", cwd=setup)
    assert missing.returncode == 2 and "not a model directory" in missing.stderr
