"""The block-range planner: ranges that fit a budget, pinned ranges checked against the model, its text form."""

from __future__ import annotations

import itertools
import random

import pytest

from tcf.config import parse_block_ranges
from tcf.errors import ConfigError, TcfError
from tcf.lm.checkpoint import Footprint, ModelShape
from tcf.preinfer.planner import BudgetTooSmall, activation_bytes_per_item, check_ranges, format_plan, plan_ranges
from tcf.util.units import GiB, MiB, parse_bytes


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
