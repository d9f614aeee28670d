"""`tcf plan` on a real (tiny) sharded OPT checkpoint written by transformers."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import tcf
from transformers import OPTConfig, OPTModel

from tcf.preinfer.encode import host_budget
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
    assert small.returncode == 2 and re.fullmatch(  # the engine names the config key, the CLI the flag given
        r"error: --gpu-memory-budget: budget 1\.0 MiB is too small: one block and one item need at least "
        r"[\d.]+ MiB.*\n", small.stderr)
    keyed = tcf("plan", cfg, "-S", "text_encoder.gpu_memory_budget=1MiB", cwd=setup)
    assert keyed.returncode == 2 and keyed.stderr.startswith("error: text_encoder.gpu_memory_budget: budget 1.0 MiB")
    bad = tcf("plan", cfg, "--gpu-memory-budget", "2GiB", "--ranges", "0:2,3:6", cwd=setup)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --ranges: bad block range '3:6'")
    unit = tcf("plan", cfg, "--gpu-memory-budget", "8G", cwd=setup)
    assert unit.returncode == 2 and unit.stderr.startswith("error: --gpu-memory-budget: bad memory size '8G'")
    default = tcf("plan", cfg, cwd=setup)
    assert default.returncode == 0, default.stderr  # the GPU's free memory, or on the CPU half the host's
    budget = float(re.match(r"budget ([\d.]+) GiB", default.stdout).group(1))
    if not get_provider().available and not torch.cuda.is_available():
        assert budget == pytest.approx(host_budget() / (1 << 30), abs=1.0)
    missing = tcf("plan", cfg, "-S", f"text_encoder.model={setup / 'nope'}", cwd=setup)
    assert missing.returncode == 2 and "not a model directory" in missing.stderr
