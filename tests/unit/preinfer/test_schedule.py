"""The schedule planner: range-major or chunk-major from the disk, host memory and the cost model; refusals."""

from __future__ import annotations

import pytest

from tcf.errors import ConfigError
from tcf.lm.checkpoint import Footprint, ModelShape
from tcf.preinfer.planner import BudgetTooSmall, activation_bytes_per_item, format_plan
from tcf.preinfer.schedule import Machine, plan_schedule
from tcf.util.units import GiB

H = 12288  # OPT-175B: 96 blocks of hidden 12,288, FFN 49,152, 96 heads
BLOCK = 12 * H * H * 2 + 13 * H * 2
OPT175 = Footprint([BLOCK] * 96, [BLOCK // 2] * 96, 50272 * H * 2 + 2050 * H * 2, 2 * H * 2)
SHAPE = ModelShape(96, H, 96, 4 * H)
TB = 10**12


def machine(disk: float, host_budget: int = 8 * GiB, host: int = 100 * GiB) -> Machine:
    return Machine(free_disk=int(disk), host_available=host, host_budget=host_budget, read_bandwidth=3e9,
                   where="/nvme")


def plan175(m: Machine, **kw):
    return plan_schedule(OPT175, SHAPE, max_tokens=30, budget=12 * GiB, n_items=1_000_000, n_tokens=19_000_000,
                         machine=m, **kw)


def test_at_175b_scale_a_disk_that_holds_no_boundary_gets_the_chunk_schedule():
    plan = plan175(machine(1 * TB))
    assert plan.schedule == "chunk" and plan.latent_bytes_per_boundary > 700e9  # 737 GB per boundary
    est = plan.estimate
    assert est.disk_bytes < 0.1 * TB and est.latents_s == 0  # only the pooled embeddings reach the disk
    assert est.host_bytes <= 8 * GiB and est.gpu_bytes <= 12 * GiB
    assert est.n_chunks == -(-19_000_000 // plan.chunk_tokens) and plan.chunk_tokens > 100_000
    assert any(r.startswith("range-major needs") and "of disk at /nvme" in r and "short" in r for r in plan.rejected)
    text = format_plan(plan)
    assert "schedule: chunk-major" in text and "peak: GPU" in text and "weight reads" in text


def test_two_neighbouring_ranges_and_a_batch_fit_the_gpu_budget():
    for budget in (10 * GiB, 12 * GiB, 20 * GiB, 40 * GiB):
        plan = plan_schedule(OPT175, SHAPE, max_tokens=30, budget=budget, n_items=1_000_000, machine=machine(1 * TB),
                             schedule="chunk")
        per_item = activation_bytes_per_item(SHAPE, 30)
        batches = {r.batch_size for r in plan.ranges}
        assert len(batches) == 1  # one layout per chunk, read and written in place by every range
        rs = plan.ranges
        for a, b in zip(rs, [*rs[1:], rs[0]], strict=True):  # the next range loads while one runs
            assert a.weight_bytes + b.weight_bytes + a.batch_size * per_item + plan.margin_bytes <= budget
        assert plan.estimate.gpu_bytes <= budget


def test_a_disk_that_holds_the_boundaries_keeps_range_major_unless_chunks_are_clearly_faster():
    slow_disk = plan175(machine(3 * TB))  # boundaries fit, but writing and reading them costs hours
    assert slow_disk.schedule == "chunk" and "range-major: estimated" in slow_disk.rejected[0]
    small = Footprint([BLOCK // 64] * 8, [BLOCK // 128] * 8, 10**6, 10**3)
    plan = plan_schedule(small, ModelShape(8, H // 8, 12, H // 2), max_tokens=30, budget=12 * GiB, n_items=10_000,
                         machine=machine(1 * TB))
    assert plan.schedule == "range" and len(plan.ranges) == 1  # one range: no boundary, nothing to choose


def test_refusals_name_what_is_short_and_by_how_much():
    with pytest.raises(ConfigError) as info:
        plan175(machine(1 * TB), schedule="range")
    assert info.value.key == "text_encoder.schedule" and "range-major needs" in str(info.value)
    assert "GiB of disk at /nvme" in str(info.value) and "short" in str(info.value)
    with pytest.raises(ConfigError) as info:  # the pooled embeddings alone do not fit
        plan175(machine(10e9))
    message = str(info.value)
    assert "range-major needs" in message and "chunk-major needs" in message and "\n" not in message
    with pytest.raises(ConfigError, match="chunk-major needs .* of host memory .*text_encoder.host_memory_budget"):
        plan175(machine(1 * TB), schedule="chunk", chunk_tokens=1_000_000)  # 24.6 GB pinned > 8 GiB
    with pytest.raises(BudgetTooSmall, match="chunk schedule"):
        plan_schedule(OPT175, SHAPE, max_tokens=30, budget=8 * GiB, n_items=10, machine=machine(1 * TB),
                      schedule="chunk")


@pytest.mark.parametrize("schedule", ["range", "chunk"])
def test_kept_depths_are_range_boundaries_in_both_schedules(schedule):
    plan = plan175(machine(100 * TB), schedule=schedule, keep=[94, 95])
    stops = [r.stop for r in plan.ranges]
    assert 94 in stops and 95 in stops and stops[-1] == 96
    kept = 2 * 1_000_000 * 30 * H * 2
    assert plan.estimate.disk_bytes >= kept  # kept depths are outputs: on disk in either schedule
