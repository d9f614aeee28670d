"""Split a transformer stack into block ranges that fit a GPU-memory budget, with a batch size for each.

Pre-inference loads one range of blocks at a time and pushes every item through it, so GPU memory
holds the range's weights, one batch of activations and some slack; latents between ranges live on the
host. The planner packs as many consecutive blocks per range as fit (fewer ranges = fewer latent
boundaries), then picks the largest power-of-two batch that fits each range::

    fp = block_weight_bytes("models/opt-13b", compute_dtype="bf16")
    plan = plan_ranges(fp, model_shape("models/opt-13b"), max_tokens=30, budget="40GiB", n_items=100_000)
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
import math
import re
from dataclasses import dataclass

from tcf.errors import TcfError
from tcf.lm.checkpoint import Footprint, ModelShape, dtype_bytes

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_THROUGHPUT = 400e12  # FLOP/s: conservative bf16 figure for one H200 (anchors.md measures 486-587)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class BudgetTooSmall(TcfError):
    """The budget cannot hold even the smallest piece of work; ``minimum_bytes`` is a budget that can."""

    def __init__(self, message: str, minimum_bytes: int):
        self.minimum_bytes = minimum_bytes
        super().__init__(message)


def parse_bytes(text: str | int) -> int:
    """'8GiB' -> 8589934592, '6.5GB' -> 6500000000, '512MiB', '1024' (bytes). GB = 10^9, GiB = 2^30."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise TcfError(f"bad memory size {text!r}: write a number and a unit, e.g. 8GiB, 6.5GB or 512MiB "
                           "(GiB/MiB/KiB are powers of 2, GB/MB/KB powers of 10)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise TcfError(f"bad memory size {text!r}: must be more than 0 bytes")
    return value


def format_bytes(n: float) -> str:
    """'1.3 GiB', '512.0 MiB' — GiB from 1 GiB up."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _format_ceil(n: int) -> str:
    """Like :func:`format_bytes` but rounded up, so 'at least X' is always enough."""
    unit, name = (GiB, "GiB") if n >= GiB else (MiB, "MiB")
    return f"{math.ceil(n * 10 / unit) / 10:.1f} {name}"


def parse_ranges(text: str, n_blocks: int) -> list[tuple[int, int]]:
    """'0:6,6:16' -> [(0, 6), (6, 16)]: half-open, contiguous, covering blocks 0..n_blocks-1 exactly."""
    parts = [p.strip() for p in str(text).split(",")]
    out: list[tuple[int, int]] = []
    expected = 0
    for part in parts:
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", part)
        if not m:
            raise TcfError(f"bad block range {part!r} in {text!r}: write start:stop, e.g. 0:6,6:{n_blocks}")
        start, stop = int(m.group(1)), int(m.group(2))
        if stop <= start:
            raise TcfError(f"bad block range {part!r}: stop must be greater than start")
        if start != expected:
            what = "must start at block 0" if expected == 0 else f"must start at {expected}, where the previous ended"
            raise TcfError(f"bad block range {part!r}: {what}")
        if stop > n_blocks:
            raise TcfError(f"bad block range {part!r}: the model has {n_blocks} blocks (0:{n_blocks})")
        out.append((start, stop))
        expected = stop
    if expected != n_blocks:
        raise TcfError(f"block ranges {text!r} stop at {expected}: the model has {n_blocks} blocks; "
                       f"add {expected}:{n_blocks}")
    return out


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


def plan_ranges(footprint: Footprint, shape: ModelShape, *, max_tokens: int, budget: str | int,
                n_items: int = 0, compute_dtype: str = "bf16", latent_dtype: str = "bf16",
                ranges: str | list[tuple[int, int]] | None = None, batch_size: int | None = None,
                batch_floor: int = 16, batch_cap: int = 4096, throughput: float = DEFAULT_THROUGHPUT,
                margin_fraction: float = 0.10, margin_fixed: int = 256 * MiB) -> Plan:
    """Plan block ranges and batch sizes under ``budget`` (bytes or '8GiB').

    The margin kept free is ``margin_fraction * budget + margin_fixed`` (CUDA context, allocator
    fragmentation). Without pins, ranges are as long as possible while a batch of ``batch_floor`` still
    fits (a block too big for that runs alone with whatever batch fits), then balanced so the heaviest
    range is as light as possible; each range gets the largest power-of-two batch up to ``batch_cap``
    (and no larger than needed for ``n_items``). ``ranges`` ('0:6,6:16') and ``batch_size`` pin those
    choices; the planner then only checks that they fit. Raises :class:`BudgetTooSmall` naming a budget
    that would work.
    """
    n = footprint.n_blocks
    if shape.n_blocks != n:
        raise TcfError(f"model config says {shape.n_blocks} blocks but the checkpoint has weights for {n}")
    if max_tokens < 1:
        raise TcfError(f"max tokens must be at least 1, got {max_tokens}")
    if batch_size is not None and batch_size < 1:
        raise TcfError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= margin_fraction < 1:
        raise TcfError(f"margin fraction must be in [0, 1), got {margin_fraction}")
    budget_bytes = parse_bytes(budget)

    def margin_of(b: int) -> int:
        return int(b * margin_fraction) + margin_fixed

    margin = margin_of(budget_bytes)
    avail = budget_bytes - margin
    per_item = activation_bytes_per_item(shape, max_tokens, compute_dtype)
    prefix = [0]
    for w in footprint.block_bytes:
        prefix.append(prefix[-1] + w)

    def weights(s: int, e: int) -> int:
        return (prefix[e] - prefix[s] + (footprint.embedding_bytes if s == 0 else 0)
                + (footprint.final_bytes if e == n else 0))

    def fits(s: int, e: int, b: int) -> bool:
        return weights(s, e) + b * per_item <= avail

    def minimum_budget(need: int) -> int:
        b = math.ceil((need + margin_fixed) / (1 - margin_fraction))
        while b - margin_of(b) < need:
            b += 1
        while b > 1 and b - 1 - margin_of(b - 1) >= need:
            b -= 1
        return b

    def too_small(need: int, what: str) -> BudgetTooSmall:
        low = minimum_budget(need)
        return BudgetTooSmall(f"budget {format_bytes(budget_bytes)} is too small: {what} need at least "
                              f"{_format_ceil(low)} (incl. a margin of {margin_fraction:.0%} + "
                              f"{format_bytes(margin_fixed)})", low)

    cap = batch_cap if n_items <= 0 else max(1, min(batch_cap, 1 << max(0, (n_items - 1).bit_length())))

    def best_batch(s: int, e: int) -> int:
        room = avail - weights(s, e)
        return min(cap, _pow2_floor(room // per_item)) if room >= per_item else 0

    if ranges is not None:
        spans = parse_ranges(ranges, n) if isinstance(ranges, str) else _check_spans(ranges, n)
        if batch_size is not None:
            worst = max(spans, key=lambda r: weights(*r))
            if not fits(*worst, batch_size):
                raise too_small(weights(*worst) + batch_size * per_item,
                                f"blocks {worst[0]}:{worst[1]} at batch {batch_size}")
            batches = [batch_size] * len(spans)
        else:
            worst = max(spans, key=lambda r: weights(*r))
            if not fits(*worst, 1):
                raise too_small(weights(*worst) + per_item, f"blocks {worst[0]}:{worst[1]} and one item")
            batches = [best_batch(*r) for r in spans]
    else:
        floor = min(batch_size or batch_floor, cap)
        worst_block = max(range(n), key=lambda i: weights(i, i + 1))
        need_b = batch_size or 1
        if not fits(worst_block, worst_block + 1, need_b):
            what = "one block and one item" if need_b == 1 else f"one block at batch {need_b}"
            raise too_small(weights(worst_block, worst_block + 1) + need_b * per_item, what)

        def partition(limit: int) -> list[tuple[int, int]]:
            # greedy longest ranges whose weights stay <= limit; a single block is always allowed
            out, s = [], 0
            while s < n:
                e = s + 1
                while e < n and weights(s, e + 1) <= limit:
                    e += 1
                out.append((s, e))
                s = e
            return out

        top = avail - floor * per_item  # heaviest range that still takes a floor-sized batch
        spans = partition(top)
        lo, hi = 0, max(top, 0)  # balance: the lightest limit that needs no more ranges
        while lo < hi:
            mid = (lo + hi) // 2
            if len(partition(mid)) <= len(spans):
                hi = mid
            else:
                lo = mid + 1
        if top >= 0:
            spans = partition(lo)
        batches = [batch_size if batch_size is not None else best_batch(*r) for r in spans]

    plans = [RangePlan(s, e, weights(s, e), b * per_item, b, s == 0, e == n)
             for (s, e), b in zip(spans, batches, strict=True)]
    params = sum(footprint.block_params)
    latent = max(n_items, 0) * max_tokens * shape.hidden * dtype_bytes(latent_dtype)
    seconds = 2 * params * max(n_items, 0) * max_tokens / throughput
    return Plan(plans, budget_bytes, margin, n_items, max_tokens, str(compute_dtype), str(latent_dtype), latent,
                params, throughput, seconds, pinned_ranges=ranges is not None, pinned_batch=batch_size is not None)


def _check_spans(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    return parse_ranges(",".join(f"{s}:{e}" for s, e in spans), n)


def _format_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


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
        f"{plan.boundaries} boundar{'y' if plan.boundaries == 1 else 'ies'}",
        f"estimated compute time: {_format_seconds(plan.estimated_seconds)} "
        f"({plan.params / 1e9:.2f} B block parameters at {plan.throughput / 1e12:.0f} TFLOP/s)",
    ]
    return "\n".join(lines)
