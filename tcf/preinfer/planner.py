"""Split a transformer stack into block ranges that fit a GPU-memory budget, with a batch size for each.

Pre-inference loads one range of blocks at a time and pushes every item through it, so GPU memory
holds the range's weights, one batch of activations and some slack; latents between ranges live on the
host. The planner packs as many consecutive blocks per range as fit (fewer ranges = fewer latent
boundaries), then picks the largest power-of-two batch that fits each range::

    size = model_size("models/opt-13b", compute_dtype="bf16")    # tcf.lm.checkpoint
    plan = plan_ranges(size.footprint, size.shape, max_tokens=30, budget=40 * GiB, n_items=100_000)
    print(format_plan(plan))

Activation model (bytes per item for one block at T tokens; c = compute-dtype bytes, H hidden,
F FFN width, h heads, k = 2 FFN tensors, or 3 for gated FFNs)::

    c·T·(8·H + k·F)          hidden states: input, norm, Q, K, V, context, output projection, residual sum
    + max(c, 4)·2·h·T²       attention scores and probabilities (softmax may run in fp32)
    + c·T²                   the 4-D attention mask
    + 16·T                   token ids and 0/1 mask (int64)

This is conservative: under ``no_grad`` most of these are freed before the next one exists, and SDPA
kernels never materialise the T² terms. Activations of different blocks in one range never coexist.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tcf.errors import ConfigError
from tcf.lm.checkpoint import Footprint, ModelShape, dtype_bytes
from tcf.util.units import GiB, MiB, format_bytes, format_bytes_ceil, format_seconds

DEFAULT_THROUGHPUT = 400e12  # FLOP/s: conservative bf16 figure for one H200 (dense bf16 matmuls measure 486-587)
BUDGET_KEY = "text_encoder.gpu_memory_budget"
RANGES_KEY = "text_encoder.ranges"


class BudgetTooSmall(ConfigError):
    """The budget cannot hold even the smallest piece of work; ``minimum_bytes`` is a budget that can."""

    def __init__(self, message: str, minimum_bytes: int):
        self.minimum_bytes = minimum_bytes
        super().__init__(None, BUDGET_KEY, message)


def check_ranges(spans: Sequence[tuple[int, int]], n_blocks: int) -> list[tuple[int, int]]:
    """Pinned ranges (already contiguous from block 0, see :func:`tcf.config.parse_block_ranges`) must end
    at the model's last block; a ConfigError naming ``text_encoder.ranges`` says what to add or drop."""
    spans = [(int(s), int(e)) for s, e in spans]
    for s, e in spans:
        if e > n_blocks:
            raise ConfigError(None, RANGES_KEY,
                              f"block range '{s}:{e}': the model has {n_blocks} blocks (0:{n_blocks})")
    end = spans[-1][1] if spans else 0
    if end != n_blocks:
        raise ConfigError(None, RANGES_KEY, f"block ranges stop at {end}: the model has {n_blocks} blocks; "
                                            f"add {end}:{n_blocks}")
    return spans


def activation_bytes_per_item(shape: ModelShape, max_tokens: int, compute_dtype: object = "bf16") -> int:
    """Conservative GPU bytes one item needs while one block runs (formula in the module docstring)."""
    c, t = dtype_bytes(compute_dtype), max_tokens
    k = 3 if shape.gated_ffn else 2
    return c * t * (8 * shape.hidden + k * shape.ffn) + max(c, 4) * 2 * shape.heads * t * t + c * t * t + 16 * t


@dataclass(frozen=True)
class RangePlan:
    start: int
    stop: int  # exclusive
    weight_bytes: int
    activation_bytes: int  # for batch_size items
    batch_size: int
    includes_embedding: bool
    includes_final: bool

    @property
    def peak_bytes(self) -> int:
        """Predicted GPU bytes while this range runs, margin excluded."""
        return self.weight_bytes + self.activation_bytes


@dataclass(frozen=True)
class Plan:
    ranges: list[RangePlan]
    budget_bytes: int
    margin_bytes: int
    n_items: int
    max_tokens: int
    compute_dtype: str
    latent_dtype: str
    latent_bytes_per_boundary: int  # n_items * T * hidden * latent dtype bytes
    params: int  # block (non-embedding) parameters
    throughput: float  # FLOP/s assumed for the estimate
    estimated_seconds: float  # 2 * params * n_items * T / throughput
    pinned_ranges: bool = False
    pinned_batch: bool = False
    schedule: str = "range"  # range-major or chunk-major (tcf.preinfer.schedule)
    chunk_tokens: int = 0  # chunk-major: real tokens per chunk of items
    n_tokens: int = 0  # real tokens of all items (0: unknown, every item at max_tokens)
    estimate: Any = None  # tcf.preinfer.schedule.Estimate: peak bytes per tier, the time split
    rejected: tuple[str, ...] = ()  # the other schedule, and why it was not taken

    @property
    def boundaries(self) -> int:
        """Latent sets written between ranges (the final output not counted)."""
        return len(self.ranges) - 1

    @property
    def peak_bytes(self) -> int:
        """Largest predicted GPU use of any range, margin included; never above ``budget_bytes``."""
        return max(r.peak_bytes for r in self.ranges) + self.margin_bytes


def split_at(plan: Plan, depths: list[int] | tuple[int, ...]) -> Plan:
    """``plan`` with a range boundary at each of ``depths`` (blocks applied), so those latents exist.

    A split range keeps its batch size: each part weighs no more than the whole did (its weight bytes
    are shown pro rata by blocks)."""
    out: list[RangePlan] = []
    for r in plan.ranges:
        cuts = [r.start, *sorted(d for d in set(depths) if r.start < d < r.stop), r.stop]
        for s, e in zip(cuts, cuts[1:], strict=False):
            weight = r.weight_bytes * (e - s) // (r.stop - r.start)
            out.append(RangePlan(s, e, weight, r.activation_bytes, r.batch_size,
                                 r.includes_embedding and s == r.start, r.includes_final and e == r.stop))
    return dataclasses.replace(plan, ranges=out)


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n >= 1 else 0


@dataclass(frozen=True)
class _Budget:
    """What fits where: a range's weights, the activations of a batch, and the margin kept free."""

    footprint: Footprint
    budget: int
    per_item: int  # activation bytes of one item
    margin_fraction: float
    margin_fixed: int
    cap: int  # largest useful batch
    prefix: tuple[int, ...]  # prefix sums of block weights

    @property
    def margin(self) -> int:
        return self.margin_of(self.budget)

    @property
    def avail(self) -> int:
        return self.budget - self.margin

    def margin_of(self, budget: int) -> int:
        return int(budget * self.margin_fraction) + self.margin_fixed

    def weights(self, s: int, e: int) -> int:
        fp = self.footprint
        return (self.prefix[e] - self.prefix[s] + (fp.embedding_bytes if s == 0 else 0)
                + (fp.final_bytes if e == fp.n_blocks else 0))

    def fits(self, s: int, e: int, batch: int) -> bool:
        return self.weights(s, e) + batch * self.per_item <= self.avail

    def best_batch(self, s: int, e: int) -> int:
        room = self.avail - self.weights(s, e)
        return min(self.cap, _pow2_floor(room // self.per_item)) if room >= self.per_item else 0

    def minimum_budget(self, need: int) -> int:
        """The least budget whose room (budget minus margin) holds ``need`` bytes."""
        b = math.ceil((need + self.margin_fixed) / (1 - self.margin_fraction))
        while b - self.margin_of(b) < need:
            b += 1
        while b > 1 and b - 1 - self.margin_of(b - 1) >= need:
            b -= 1
        return b

    def too_small(self, s: int, e: int, batch: int, what: str) -> BudgetTooSmall:
        low = self.minimum_budget(self.weights(s, e) + batch * self.per_item)
        return BudgetTooSmall(f"budget {format_bytes(self.budget)} is too small: {what} need at least "
                              f"{format_bytes_ceil(low)} (incl. a margin of {self.margin_fraction:.0%} + "
                              f"{format_bytes(self.margin_fixed)})", low)


def _check_pinned(b: _Budget, spans: list[tuple[int, int]], batch_size: int | None) -> list[int]:
    """Batch sizes for pinned ranges: ``batch_size`` if it fits the heaviest range, else the best each takes."""
    worst = max(spans, key=lambda r: b.weights(*r))
    need = batch_size or 1
    if not b.fits(*worst, need):
        what = f"at batch {batch_size}" if batch_size is not None else "and one item"
        raise b.too_small(*worst, need, f"blocks {worst[0]}:{worst[1]} {what}")
    return [batch_size] * len(spans) if batch_size is not None else [b.best_batch(*r) for r in spans]


def _partition(b: _Budget, limit: int) -> list[tuple[int, int]]:
    """Greedy longest ranges whose weights stay <= ``limit``; a single block is always allowed."""
    n, out, s = b.footprint.n_blocks, [], 0
    while s < n:
        e = s + 1
        while e < n and b.weights(s, e + 1) <= limit:
            e += 1
        out.append((s, e))
        s = e
    return out


def _partition_auto(b: _Budget, floor: int, batch_size: int | None) -> list[tuple[int, int]]:
    """As few ranges as take a batch of ``floor``, then balanced: the lightest weight limit that needs no more."""
    n = b.footprint.n_blocks
    worst_block = max(range(n), key=lambda i: b.weights(i, i + 1))
    need = batch_size or 1
    if not b.fits(worst_block, worst_block + 1, need):
        raise b.too_small(worst_block, worst_block + 1, need,
                          "one block and one item" if need == 1 else f"one block at batch {need}")
    top = b.avail - floor * b.per_item  # heaviest range that still takes a floor-sized batch
    spans = _partition(b, top)
    if top < 0:
        return spans
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_partition(b, mid)) <= len(spans):
            hi = mid
        else:
            lo = mid + 1
    return _partition(b, lo)


def plan_ranges(footprint: Footprint, shape: ModelShape, *, max_tokens: int, budget: int,
                n_items: int = 0, compute_dtype: str = "bf16", latent_dtype: str = "bf16",
                ranges: Sequence[tuple[int, int]] | None = None, batch_size: int | None = None,
                batch_floor: int = 16, batch_cap: int = 4096, throughput: float = DEFAULT_THROUGHPUT,
                margin_fraction: float = 0.10, margin_fixed: int = 256 * MiB) -> Plan:
    """Plan block ranges and batch sizes under ``budget`` bytes.

    The margin kept free is ``margin_fraction * budget + margin_fixed`` (CUDA context, allocator
    fragmentation). Without pins, ranges are as long as possible while a batch of ``batch_floor`` still
    fits (a block too big for that runs alone with whatever batch fits), then balanced so the heaviest
    range is as light as possible; each range gets the largest power-of-two batch up to ``batch_cap``
    (and no larger than needed for ``n_items``). ``ranges`` ([(0, 6), (6, 16)]) and ``batch_size`` pin
    those choices; the planner then only checks that they fit. Raises :class:`BudgetTooSmall` naming a
    budget that would work.
    """
    n = footprint.n_blocks
    if shape.n_blocks != n:
        raise ConfigError(None, "text_encoder.model",
                          f"model config says {shape.n_blocks} blocks but the checkpoint has weights for {n}")
    for key, value, low in (("text_encoder.max_tokens", max_tokens, 1), ("text_encoder.batch_size", batch_size, 1),
                            (BUDGET_KEY, budget, 1)):
        if value is not None and value < low:
            raise ConfigError(None, key, f"must be at least {low}, got {value}")
    if not 0 <= margin_fraction < 1:
        raise ValueError(f"margin fraction must be in [0, 1), got {margin_fraction}")
    cap = batch_cap if n_items <= 0 else max(1, min(batch_cap, 1 << max(0, (n_items - 1).bit_length())))
    prefix = [0]
    for w in footprint.block_bytes:
        prefix.append(prefix[-1] + w)
    b = _Budget(footprint, int(budget), activation_bytes_per_item(shape, max_tokens, compute_dtype),
                margin_fraction, margin_fixed, cap, tuple(prefix))
    if ranges is not None:
        spans = check_ranges(ranges, n)
        batches = _check_pinned(b, spans, batch_size)
    else:
        spans = _partition_auto(b, min(batch_size or batch_floor, cap), batch_size)
        batches = [batch_size if batch_size is not None else b.best_batch(*r) for r in spans]
    plans = [RangePlan(s, e, b.weights(s, e), k * b.per_item, k, s == 0, e == n)
             for (s, e), k in zip(spans, batches, strict=True)]
    params = sum(footprint.block_params)
    latent = max(n_items, 0) * max_tokens * shape.hidden * dtype_bytes(latent_dtype)
    seconds = 2 * params * max(n_items, 0) * max_tokens / throughput
    return Plan(plans, b.budget, b.margin, n_items, max_tokens, str(compute_dtype), str(latent_dtype), latent,
                params, throughput, seconds, pinned_ranges=ranges is not None, pinned_batch=batch_size is not None)


def plan_chunk_ranges(footprint: Footprint, shape: ModelShape, *, budget: int, batch_floor: int = 16,
                      **kw: Any) -> Plan:
    """Block ranges for a chunk schedule, where each range runs while the next one loads (after the last, the
    first again, for the next chunk). One range when the whole model fits (loaded once). Otherwise the longest
    ranges whose every neighbouring pair leaves room for a batch of ``batch_floor`` (or the pinned batch), and
    one batch size for all, the largest multiple of 8 beside the heaviest pair (a chunk's batches are laid out
    once, and every range reads and writes them in place). Keyword arguments as :func:`plan_ranges`."""
    whole = plan_ranges(footprint, shape, budget=budget, batch_floor=batch_floor, **kw)
    if len(whole.ranges) == 1:
        return whole
    n, pinned = footprint.n_blocks, kw.get("batch_size")
    per_item = activation_bytes_per_item(shape, kw["max_tokens"], kw.get("compute_dtype", "bf16"))
    b = _Budget(footprint, budget, per_item, kw.get("margin_fraction", 0.10), kw.get("margin_fixed", 256 * MiB),
                max(r.batch_size for r in whole.ranges), tuple(itertools.accumulate(footprint.block_bytes, initial=0)))

    def heaviest_pair(spans: list[tuple[int, int]]) -> int:
        return max(b.weights(*x) + b.weights(*y) for x, y in zip(spans, [*spans[1:], spans[0]], strict=True))

    need = (pinned or batch_floor) * per_item
    if kw.get("ranges") is not None:
        spans = [(r.start, r.stop) for r in whole.ranges]
    else:  # the heaviest range weight that still leaves every pair room for the batch, by bisection
        lo, hi = max(b.weights(i, i + 1) for i in range(n)), b.avail
        spans = _partition(b, lo)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if heaviest_pair(cand := _partition(b, mid)) + need <= b.avail:
                lo, spans = mid, cand
            else:
                hi = mid - 1
    room = b.avail - heaviest_pair(spans)
    fit = room // per_item
    batch = pinned or min(b.cap, fit - fit % 8 if fit >= 8 else fit)  # a multiple of 8: every batch is a layout
    if batch < 1 or batch * per_item > room:
        low = b.minimum_budget(heaviest_pair(spans) + (pinned or 1) * per_item)
        raise BudgetTooSmall(f"budget {format_bytes(budget)} is too small for a chunk schedule: two neighbouring "
                             f"ranges' weights and {'the batch' if pinned else 'one item'} need at least "
                             f"{format_bytes_ceil(low)}", low)
    ranges = [RangePlan(s, e, b.weights(s, e), batch * per_item, batch, s == 0, e == n) for s, e in spans]
    return dataclasses.replace(whole, ranges=ranges)


def format_plan(plan: Plan) -> str:
    """Plain-text table of a plan, for ``tcf plan``."""
    pins = [w for w, on in (("ranges", plan.pinned_ranges), ("batch size", plan.pinned_batch)) if on]
    lines = [
        f"budget {format_bytes(plan.budget_bytes)}, margin {format_bytes(plan.margin_bytes)}, "
        f"compute {plan.compute_dtype}, {plan.n_items:,} items x {plan.max_tokens} tokens"
        + (f" (pinned: {', '.join(pins)})" if pins else ""),
        "",
        f"{'range':<10}{'blocks':>7}{'weights GiB':>13}{'activ. GiB':>12}{'batch':>7}{'peak GiB':>10}  stages",
    ]
    for r in plan.ranges:
        stages = ", ".join(x for x, on in (("embedding", r.includes_embedding), ("final norm", r.includes_final)) if on)
        lines.append(f"{f'{r.start}:{r.stop}':<10}{r.stop - r.start:>7}{r.weight_bytes / GiB:>13.2f}"
                     f"{r.activation_bytes / GiB:>12.2f}{r.batch_size:>7}"
                     f"{(r.peak_bytes + plan.margin_bytes) / GiB:>10.2f}  {stages}")
    lines += [
        "",
        f"latents per boundary: {format_bytes(plan.latent_bytes_per_boundary)} ({plan.latent_dtype}), "
        f"{plan.boundaries} boundar{'y' if plan.boundaries == 1 else 'ies'}"
        + (" (chunk schedule: in host memory, never on disk)" if plan.schedule == "chunk" and plan.boundaries else ""),
    ]
    est = plan.estimate
    if est is None:
        lines.append(f"estimated compute time: {format_seconds(plan.estimated_seconds)} "
                     f"({plan.params / 1e9:.2f} B block parameters at {_rate(plan.throughput)})")
        return "\n".join(lines)
    if plan.schedule == "chunk":
        lines.append(f"schedule: chunk-major, {est.n_chunks:,} chunk{'s' if est.n_chunks != 1 else ''} of up to "
                     f"{plan.chunk_tokens:,} tokens, every range per chunk"
                     + (" (one range: weights loaded once)" if len(plan.ranges) == 1 else
                        ", the next range loading while one computes"))
    else:
        lines.append("schedule: range-major, every item through one range, boundaries on disk")
    lines += [f"  not {why}" for why in plan.rejected]
    lines += [
        f"peak: GPU {format_bytes(est.gpu_bytes)}, host {format_bytes(est.host_bytes)} pinned, "
        f"disk {format_bytes(est.disk_bytes)}",
        f"estimated time: {format_seconds(est.total_s)} = compute {format_seconds(est.compute_s)} "
        f"({plan.params / 1e9:.2f} B block parameters at {_rate(plan.throughput)}), weight reads "
        f"{format_seconds(est.weights_s)}" + (" (overlapped with compute)" if plan.schedule == "chunk" else "")
        + f", latent I/O {format_seconds(est.latents_s)}",
    ]
    return "\n".join(lines)


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.0f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.0f} GFLOP/s"
