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


def test_plan_splits_where_fine_tuned_blocks_start_and_names_its_schedule(setup, small_dataset):
    """A sweep whose first run trains no text tower (pop) still plans the depths its fine-tuned runs need."""
    sweep = setup / "sweep.yaml"
    sweep.write_text(f"""dataset:
  path: {small_dataset}
text_encoder:
  model: {setup / 'tiny-opt'}
runs:
  - {{name: pop, model.architecture: pop}}
  - {{name: frozen, model.item_tower: text}}
  - {{name: top2, model.item_tower: text, text_encoder.unfreeze: 2}}
""")
    r = tcf("plan", str(sweep), "--gpu-memory-budget", "2GiB", cwd=setup)
    assert r.returncode == 0, r.stderr
    assert _ranges(r.stdout) == ["0:4", "4:6"]  # boundary 4 kept: the input of the top two blocks
    assert "schedule: range-major" in r.stdout and "estimated time:" in r.stdout and "peak: GPU" in r.stdout
    chunk = tcf("plan", str(sweep), "--gpu-memory-budget", "2GiB", "--schedule", "chunk", cwd=setup)
    assert chunk.returncode == 0, chunk.stderr
    assert "schedule: chunk-major" in chunk.stdout and _ranges(chunk.stdout) == ["0:4", "4:6"]
    bad = tcf("plan", str(sweep), "--schedule", "diagonal", cwd=setup)
    assert bad.returncode == 2 and "diagonal" in bad.stderr
    host = tcf("plan", str(sweep), "--gpu-memory-budget", "2GiB", "--schedule", "chunk", "-S",
               "text_encoder.host_memory_budget=1KiB", cwd=setup)
    assert host.returncode == 2 and re.fullmatch(
        r"error: --schedule: pre-inference does not fit this machine: chunk-major needs .* of host memory .* short\)\n",
        host.stderr)
