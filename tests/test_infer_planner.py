"""Checkpoint footprints from safetensors headers, the block-range planner and its text form."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from safetensors.torch import save_file

from tcf.config import parse_block_ranges
from tcf.errors import ConfigError, TcfError
from tcf.lm.checkpoint import (
    Footprint,
    ModelShape,
    block_weight_bytes,
    checkpoint_tensors,
    model_shape,
    model_size,
    read_safetensors_header,
)
from tcf.lm.families import family
from tcf.lm.families.spec import Layout
from tcf.preinfer.planner import BudgetTooSmall, activation_bytes_per_item, check_ranges, format_plan, plan_ranges
from tcf.util.units import GiB, MiB, parse_bytes


def _opt_like_tensors(n_blocks=3, hidden=16, ffn=40, vocab=50, dtype=torch.float32):
    t = {"decoder.embed_tokens.weight": torch.zeros(vocab, hidden, dtype=dtype),
         "decoder.embed_positions.weight": torch.zeros(34, hidden, dtype=dtype),
         "decoder.final_layer_norm.weight": torch.zeros(hidden, dtype=dtype),
         "decoder.final_layer_norm.bias": torch.zeros(hidden, dtype=dtype)}
    for i in range(n_blocks):
        p = f"decoder.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = torch.zeros(hidden, hidden, dtype=dtype)
        t[p + "fc1.weight"] = torch.zeros(ffn + i, hidden, dtype=dtype)  # blocks differ in size on purpose
        t[p + "final_layer_norm.weight"] = torch.zeros(hidden, dtype=dtype)
        t[p + "step"] = torch.zeros(3, dtype=torch.int64)  # integer buffers keep their size under a cast
    return t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _expected(tensors, compute_bytes=None):
    def size(x):
        if compute_bytes is None or not x.is_floating_point():
            return _nbytes(x)
        return x.numel() * compute_bytes
    blocks: dict[int, int] = {}
    for name, x in tensors.items():
        if ".layers." in name:
            i = int(name.split(".")[2])
            blocks[i] = blocks.get(i, 0) + size(x)
    emb = sum(size(x) for k, x in tensors.items() if "embed" in k)
    final = sum(size(x) for k, x in tensors.items() if k.startswith("decoder.final_layer_norm"))
    return [blocks[i] for i in sorted(blocks)], emb, final


def test_header_matches_true_sizes(tmp_path):
    tensors = _opt_like_tensors()
    tensors["x.half"] = torch.zeros(3, 5, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    header = read_safetensors_header(tmp_path / "model.safetensors")
    assert set(header) == set(tensors)
    for name, x in tensors.items():
        assert header[name].nbytes == _nbytes(x), name
        assert header[name].shape == tuple(x.shape)
    assert header["x.half"].dtype == "BF16"


@pytest.mark.parametrize("compute", [None, "bf16", "fp32"])
def test_block_bytes_single_file(tmp_path, compute):
    tensors = _opt_like_tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    fp = block_weight_bytes(tmp_path, family("opt").layout, compute_dtype=compute)
    blocks, emb, final = _expected(tensors, {None: None, "bf16": 2, "fp32": 4}[compute])
    assert fp.block_bytes == blocks and fp.embedding_bytes == emb and fp.final_bytes == final
    assert fp.block_params == [sum(x.numel() for k, x in tensors.items() if f".layers.{i}." in k) for i in range(3)]
    if compute == "bf16":  # fp32 weights run in bf16 take half, the int64 buffers do not shrink
        full = block_weight_bytes(tmp_path, family("opt").layout)
        assert fp.block_bytes[0] == (full.block_bytes[0] - 24) // 2 + 24


def test_block_bytes_sharded_with_index(tmp_path):
    tensors = _opt_like_tensors(n_blocks=4)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / fname)
        weight_map.update(dict.fromkeys(keys, fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert set(checkpoint_tensors(tmp_path)) == set(tensors)
    fp = block_weight_bytes(tmp_path, family("opt").layout)
    assert (fp.block_bytes, fp.embedding_bytes, fp.final_bytes) == _expected(tensors)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(TcfError, match="shard 'model-00002-of-00002.safetensors' is missing"):
        checkpoint_tensors(tmp_path)


def test_real_hf_opt_checkpoint(tmp_path):
    from transformers import OPTConfig, OPTModel

    cfg = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, ffn_dim=48, num_attention_heads=4,
                    max_position_embeddings=40, word_embed_proj_dim=32)
    model = OPTModel(cfg)
    model.save_pretrained(tmp_path)
    size = model_size(tmp_path)  # layout from config.json's model_type
    fp = size.footprint
    assert fp.n_blocks == 3
    total = sum(_nbytes(p) for p in model.state_dict().values())
    assert sum(fp.block_bytes) + fp.embedding_bytes + fp.final_bytes == total
    assert fp.block_bytes[1] == sum(_nbytes(p) for p in model.decoder.layers[1].state_dict().values())
    assert model_shape(tmp_path) == size.shape == ModelShape(n_blocks=3, hidden=32, heads=4, ffn=48)


def test_t5_decoder_is_ignored(tmp_path):
    t = {"shared.weight": torch.zeros(10, 4), "encoder.block.0.layer.0.w": torch.zeros(4, 4),
         "encoder.final_layer_norm.weight": torch.zeros(4), "decoder.block.0.layer.0.w": torch.zeros(4, 4)}
    save_file(t, tmp_path / "model.safetensors")
    fp = block_weight_bytes(tmp_path, family("t5").layout)
    assert fp.block_bytes == [64] and fp.embedding_bytes == 160 and fp.final_bytes == 16  # no decoder byte


def test_checkpoint_errors(tmp_path):
    with pytest.raises(TcfError, match="no .safetensors files"):
        checkpoint_tensors(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not")
    with pytest.raises(TcfError, match="bad.safetensors"):
        checkpoint_tensors(tmp_path)
    (tmp_path / "bad.safetensors").unlink()
    save_file({"decoder.layers.0.w": torch.zeros(2), "decoder.layers.2.w": torch.zeros(2)},
              tmp_path / "model.safetensors")
    with pytest.raises(TcfError, match=r"no weights for block\(s\) \[1\]"):
        block_weight_bytes(tmp_path, family("opt").layout)
    with pytest.raises(TcfError, match="no tensor matches"):
        block_weight_bytes(tmp_path, Layout(r"^nothing\.(\d+)", r"^emb", None))
    with pytest.raises(TcfError, match="config.json"):
        model_size(tmp_path)


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("text,value", [
    ("8GiB", 8 * GiB), ("6.5GB", 6_500_000_000), ("512MiB", 512 * MiB), ("512 mib", 512 * MiB),
    ("1024", 1024), ("2KB", 2000), ("1TiB", 1 << 40), (" 0.5 GiB ", GiB // 2), (4096, 4096),
])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "8G", "GiB", "-1GiB", "0", "1.2.3GB", "eight GiB", "8 GiBs"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="bad memory size"):
        parse_bytes(text)


def test_parse_ranges():
    assert check_ranges(parse_block_ranges("0:6,6:16"), 16) == [(0, 6), (6, 16)]
    assert check_ranges(parse_block_ranges(" 0:16 "), 16) == [(0, 16)]
    assert parse_block_ranges([[0, 6], [6, 16]]) == ((0, 6), (6, 16))


@pytest.mark.parametrize("text,match", [
    ("1:16", "'1:16'.*must start at block 0"),
    ("0:6,7:16", "'7:16'.*must start at 6"),
    ("0:6,5:16", "'5:16'.*must start at 6"),
    ("0:6,6-16", "bad block range '6-16'"),
    ("0:0,0:16", "'0:0'.*greater than start"),
    ("0:6,,6:16", "bad block range ''"),
])
def test_parse_ranges_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_block_ranges(text)


@pytest.mark.parametrize("text,match", [("0:6,6:17", "'6:17'.*has 16 blocks"), ("0:6", "stop at 6.*add 6:16")])
def test_ranges_must_cover_the_model(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_ranges(parse_block_ranges(text), 16)
    assert info.value.key == "text_encoder.ranges"


# ---------------------------------------------------------------- planner

def _footprint(n, block, emb=0, final=0, jitter=0.0, seed=0):
    rng = random.Random(seed)
    sizes = [int(block * (1 + rng.uniform(-jitter, jitter))) for _ in range(n)]
    return Footprint(sizes, [s // 2 for s in sizes], emb, final)


SHAPES = [ModelShape(12, 768, 12, 3072), ModelShape(24, 2048, 32, 8192), ModelShape(40, 5120, 40, 20480),
          ModelShape(32, 4096, 32, 11008, gated_ffn=True), ModelShape(1, 64, 2, 256)]


def _check_plan(plan, fp):
    n = fp.n_blocks
    assert plan.ranges[0].start == 0 and plan.ranges[-1].stop == n
    for a, b in itertools.pairwise(plan.ranges):
        assert a.stop == b.start
    assert all(r.stop > r.start for r in plan.ranges)
    assert sorted(i for r in plan.ranges for i in range(r.start, r.stop)) == list(range(n))
    for r in plan.ranges:
        assert r.batch_size >= 1
        assert r.peak_bytes + plan.margin_bytes <= plan.budget_bytes
        assert r.includes_embedding == (r.start == 0) and r.includes_final == (r.stop == n)
    assert plan.peak_bytes <= plan.budget_bytes


def test_planner_invariants_over_budgets_and_shapes():
    for shape, tokens, jitter in itertools.product(SHAPES, [8, 30, 512], [0.0, 0.5]):
        per_block = 12 * shape.hidden * shape.hidden * 2  # ~bf16 weights of a block
        fp = _footprint(shape.n_blocks, per_block, emb=50_000 * shape.hidden * 2, final=4 * shape.hidden,
                        jitter=jitter, seed=shape.hidden)
        prev = None
        for budget in [int(x * GiB) for x in (0.3, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 40, 80, 141)]:
            try:
                plan = plan_ranges(fp, shape, max_tokens=tokens, budget=budget, n_items=100_000)
            except BudgetTooSmall as exc:
                assert prev is None, "a smaller budget worked but this one did not"
                ok = plan_ranges(fp, shape, max_tokens=tokens, budget=exc.minimum_bytes, n_items=100_000)
                _check_plan(ok, fp)
                with pytest.raises(BudgetTooSmall):
                    plan_ranges(fp, shape, max_tokens=tokens, budget=exc.minimum_bytes - 1, n_items=100_000)
                continue
            _check_plan(plan, fp)
            if prev is not None:
                assert len(plan.ranges) <= len(prev.ranges), (shape, tokens, budget)
            floor_fits = [r for r in plan.ranges if r.stop - r.start > 1]
            assert all(r.batch_size >= 16 for r in floor_fits)  # multi-block ranges keep the batch floor
            prev = plan


def test_planner_random_shapes_property():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 30)
        shape = ModelShape(n, rng.choice([32, 256, 1024, 4096]), rng.choice([2, 8, 32]), rng.randint(64, 16384))
        fp = _footprint(n, rng.randint(1, 500) * MiB, emb=rng.randint(0, 2000) * MiB, final=rng.randint(0, 9) * MiB,
                        jitter=rng.random(), seed=rng.random())
        tokens = rng.choice([1, 16, 30, 128])
        budget = rng.randint(300, 200_000) * MiB
        try:
            plan = plan_ranges(fp, shape, max_tokens=tokens, budget=budget, n_items=rng.randint(0, 10**6))
        except BudgetTooSmall as exc:
            assert exc.minimum_bytes > budget
            _check_plan(plan_ranges(fp, shape, max_tokens=tokens, budget=exc.minimum_bytes), fp)
            continue
        _check_plan(plan, fp)
        bigger = plan_ranges(fp, shape, max_tokens=tokens, budget=budget * 2, n_items=plan.n_items)
        assert len(bigger.ranges) <= len(plan.ranges)


def test_whole_model_in_one_range_when_it_fits():
    shape = ModelShape(24, 2048, 32, 8192)
    fp = _footprint(24, 100 * MiB, emb=200 * MiB, final=1)
    plan = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("80GiB"), n_items=100_000)
    assert [(r.start, r.stop) for r in plan.ranges] == [(0, 24)]
    assert plan.ranges[0].batch_size == 4096 and plan.boundaries == 0
    small = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("80GiB"), n_items=100)
    assert small.ranges[0].batch_size == 128  # no batch bigger than the items need


def test_too_small_budget_message_and_minimum():
    shape = ModelShape(4, 1024, 16, 4096)
    fp = _footprint(4, 1 * GiB)
    with pytest.raises(BudgetTooSmall, match=r"budget 1\.0 GiB is too small: one block and one item need at least "
                                            r"1\.4 GiB") as info:
        plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("1GiB"))
    plan = plan_ranges(fp, shape, max_tokens=30, budget=info.value.minimum_bytes)
    assert len(plan.ranges) == 4 and all(r.batch_size >= 1 for r in plan.ranges)
    plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("1.4GiB"))  # the figure in the message is enough


def test_pinned_ranges_and_batch():
    shape = ModelShape(16, 2048, 32, 8192)
    fp = _footprint(16, 200 * MiB, emb=400 * MiB)
    plan = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("24GiB"), ranges=[(0, 6), (6, 16)], batch_size=64)
    assert [(r.start, r.stop, r.batch_size) for r in plan.ranges] == [(0, 6, 64), (6, 16, 64)]
    assert plan.pinned_ranges and plan.pinned_batch
    plan = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("24GiB"), ranges=[(0, 6), (6, 16)])
    assert all(r.batch_size >= 64 for r in plan.ranges)
    plan = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("8GiB"), batch_size=32)
    _check_plan(plan, fp)
    assert {r.batch_size for r in plan.ranges} == {32}
    with pytest.raises(BudgetTooSmall, match="blocks 0:16 at batch 100000") as info:
        plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("8GiB"), ranges=[(0, 16)], batch_size=100_000)
    plan_ranges(fp, shape, max_tokens=30, budget=info.value.minimum_bytes, ranges=[(0, 16)], batch_size=100_000)
    with pytest.raises(ConfigError, match="stop at 5"):  # pinned ranges arrive checked for gaps (config)
        plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("8GiB"), ranges=[(0, 5)])


def test_activation_formula():
    s = ModelShape(1, 768, 12, 3072)
    c, t = 2, 30
    assert activation_bytes_per_item(s, t, "bf16") == c * t * (8 * 768 + 2 * 3072) + 4 * 2 * 12 * t * t \
        + c * t * t + 16 * t
    assert activation_bytes_per_item(s, t, "fp32") > activation_bytes_per_item(s, t, "bf16")
    gated = ModelShape(1, 768, 12, 3072, gated_ffn=True)
    assert activation_bytes_per_item(gated, t) - activation_bytes_per_item(s, t) == c * t * 3072


def test_plan_latents_time_and_format():
    shape = ModelShape(40, 5120, 40, 20480)
    fp = _footprint(40, 600 * MiB, emb=500 * MiB, final=20_000)
    plan = plan_ranges(fp, shape, max_tokens=30, budget=parse_bytes("16GiB"), n_items=100_000)
    assert plan.latent_bytes_per_boundary == 100_000 * 30 * 5120 * 2
    assert plan.estimated_seconds == pytest.approx(2 * sum(fp.block_params) * 100_000 * 30 / 400e12)
    text = format_plan(plan)
    assert "0:" in text and "latents per boundary: 28.6 GiB (bf16)" in text
    assert f"{plan.boundaries} boundar" in text and "estimated compute time" in text
    assert len(text.splitlines()) == len(plan.ranges) + 6
    assert "embedding" in text.splitlines()[3]


def test_planner_input_errors():
    fp = _footprint(4, MiB)
    with pytest.raises(TcfError, match="config says 5 blocks"):
        plan_ranges(fp, ModelShape(5, 64, 2, 64), max_tokens=30, budget=parse_bytes("1GiB"))
    with pytest.raises(ConfigError, match="must be at least 1") as info:
        plan_ranges(fp, ModelShape(4, 64, 2, 64), max_tokens=30, budget=0)
    assert info.value.key == "text_encoder.gpu_memory_budget"
    with pytest.raises(TcfError, match="unknown dtype"):
        plan_ranges(fp, ModelShape(4, 64, 2, 64), max_tokens=30, budget=parse_bytes("1GiB"), compute_dtype="int3")


def test_split_at_puts_a_boundary_at_each_kept_depth():
    from tcf.preinfer.planner import Plan, RangePlan, split_at

    plan = Plan([RangePlan(0, 4, 400, 10, 8, True, False), RangePlan(4, 6, 200, 10, 16, False, True)],
                1000, 0, 10, 5, "bf16", "bf16", 0, 0, 1.0, 0.0)
    got = split_at(plan, [3, 4, 5])
    assert [(r.start, r.stop, r.batch_size) for r in got.ranges] == [(0, 3, 8), (3, 4, 8), (4, 5, 16), (5, 6, 16)]
    assert [r.includes_embedding for r in got.ranges] == [True, False, False, False]
    assert [r.includes_final for r in got.ranges] == [False, False, False, True]
    assert all(r.peak_bytes <= 410 for r in got.ranges)  # no part outweighs the range it came from
    assert split_at(plan, []).ranges == plan.ranges
