"""Range-major or chunk-major: the order pre-inference takes, chosen from what the machine has.

Range-major (the method's order) pushes every item through one block range, writes the boundary latents to
disk, and the next range reads them: each weight is read once, but a boundary is n_items x max_tokens x
hidden (737 GB for OPT-175B over a million 30-token items in bf16). Chunk-major pushes a chunk of items
through every range before the next chunk: the chunk's hidden states stay in pinned host memory, the
weights are read again for every chunk (the next range loading while the current one computes), and only
the outputs (pooled embeddings, kept depths) reach the disk.

Cost model, per schedule (``tcf plan`` prints it)::

    compute       2 x block parameters x tokens / throughput
    weight reads  range: W / read once; chunk: W / reread per chunk, overlapped with compute range by range
                  (read = text_encoder.read_bandwidth; reread = the host-to-GPU copy rate when the weights fit
                  the page cache (80 % of available host memory), else read)
    latent I/O    range: every boundary written and read once at the read rate; chunk: none
    GPU           the plan's ranges; chunk: two ranges' weights at once (the next one loading)
    host          chunk: one chunk's hidden states, pinned, plus the pooled outputs' pinned slots
    disk          the outputs; range: also the (at most two) boundaries in flight

``auto`` takes range-major where it fits the disk, unless chunk-major is clearly faster (10 % and a
minute); chunk-major where only it fits. A pinned schedule that does not fit, or no schedule that fits, is
refused before any work with one line naming what is short and by how much.

    machine = Machine.probe(latents_root)
    plan = plan_schedule(size.footprint, size.shape, max_tokens=30, budget=12 * GiB, n_items=n, n_tokens=t,
                         machine=machine, keep=[94])
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import ConfigError
from tcf.lm.checkpoint import Footprint, ModelShape, dtype_bytes
from tcf.lm.pooling import POOLINGS
from tcf.preinfer.planner import DEFAULT_THROUGHPUT, BudgetTooSmall, Plan, plan_chunk_ranges, plan_ranges, split_at
from tcf.util.host import memory
from tcf.util.units import GiB, format_bytes, format_bytes_ceil, format_seconds

SCHEDULE_KEY = "text_encoder.schedule"
DEFAULT_READ = 2e9  # bytes/s from disk when nothing says otherwise: a modest NVMe, a fast network filesystem
COPY_RATE = 20e9  # bytes/s from the page cache to a GPU through tcf.lm.transfer's pinned ring (measured, H200 host)
HOST_CAP = 8 * GiB  # the default host share: a chunk of 8 GiB is 350k tokens of a 12,288-wide model
CPU_THROUGHPUT = 30e9  # FLOP/s per CPU thread in fp32 (a rough figure: the estimate's scale, not a promise)
AHEAD = 3  # batches in flight (tcf.preinfer.runner's _AHEAD): pinned output slots are AHEAD + 1 batches


@dataclass(frozen=True)
class Machine:
    """What the planner may use besides the GPU: free disk where the latents go, host memory, read rates."""

    free_disk: int
    host_available: int
    host_budget: int  # host bytes a chunk schedule may pin
    read_bandwidth: float = DEFAULT_READ
    copy_bandwidth: float = COPY_RATE
    throughput: float = DEFAULT_THROUGHPUT
    where: str = "."

    @classmethod
    def probe(cls, folder: Path, host_budget: int | None = None, read_bandwidth: float | None = None,
              throughput: float = DEFAULT_THROUGHPUT) -> Machine:
        """This machine: free disk of ``folder`` (or its nearest existing parent) and available host memory."""
        at = Path(folder).resolve()
        while not at.exists() and at != at.parent:
            at = at.parent
        avail = host_available()
        return cls(shutil.disk_usage(at).free, avail, host_budget or min(HOST_CAP, avail // 2),
                   read_bandwidth or DEFAULT_READ, COPY_RATE, throughput, str(at))


def host_available() -> int:
    """Host memory available now (0 where unknown)."""
    mem = memory()
    return mem[1] - mem[0] if mem else 0


@dataclass(frozen=True)
class Estimate:
    """One schedule's peak bytes per tier and its time, split the way ``tcf plan`` prints it."""

    gpu_bytes: int
    host_bytes: int
    disk_bytes: int
    compute_s: float
    weights_s: float
    latents_s: float
    total_s: float
    n_chunks: int = 1


def _weights(fp: Footprint) -> int:
    return sum(fp.block_bytes) + fp.embedding_bytes + fp.final_bytes


def _outputs_bytes(n_items: int, max_tokens: int, hidden: int, latent: int, keep: Sequence[int]) -> int:
    return n_items * hidden * latent * len(POOLINGS) + len(set(keep)) * n_items * max_tokens * hidden * latent


def estimate_range(plan: Plan, fp: Footprint, hidden: int, n_tokens: int, keep: Sequence[int],
                   machine: Machine) -> Estimate:
    """Range-major: weights read once, each boundary written and read once, all on disk."""
    lb = dtype_bytes(plan.latent_dtype)
    boundary = plan.n_items * plan.max_tokens * hidden * lb
    passing = [r.stop for r in plan.ranges[:-1] if r.stop not in keep]
    disk = _outputs_bytes(plan.n_items, plan.max_tokens, hidden, lb, keep) + min(2, len(passing)) * boundary
    compute = 2 * plan.params * n_tokens / machine.throughput
    weights = _weights(fp) / machine.read_bandwidth
    latents = 2 * len(plan.ranges[:-1]) * boundary / machine.read_bandwidth
    return Estimate(plan.peak_bytes, 0, disk, compute, weights, latents, compute + weights + latents)


def chunk_host_bytes(chunk_tokens: int, hidden: int, latent: int, batch: int) -> int:
    """Pinned host bytes of a chunk: its hidden states (packed, 5 % for padding) and the pooled output slots."""
    return int(chunk_tokens * hidden * latent * 1.05) + (AHEAD + 1) * batch * hidden * latent * len(POOLINGS)


def estimate_chunk(plan: Plan, fp: Footprint, hidden: int, n_tokens: int, keep: Sequence[int],
                   machine: Machine) -> Estimate:
    """Chunk-major: weights read per chunk (hidden behind compute range by range), no boundary on disk."""
    lb = dtype_bytes(plan.latent_dtype)
    n_chunks = max(1, math.ceil(n_tokens / plan.chunk_tokens))
    total_weights = _weights(fp)
    resident = len(plan.ranges) == 1  # one range: loaded once, kept for every chunk
    reread = machine.copy_bandwidth if total_weights <= 0.8 * machine.host_available else machine.read_bandwidth
    compute = 2 * plan.params * n_tokens / machine.throughput
    first = total_weights / machine.read_bandwidth
    if resident:
        weights, total = first, first + compute
    else:
        weights = first + (n_chunks - 1) * total_weights / reread
        chunk = min(plan.chunk_tokens, n_tokens)
        per_chunk = sum(max(2 * sum(fp.block_params[r.start:r.stop]) * chunk / machine.throughput,
                            r.weight_bytes / reread) for r in plan.ranges)
        total = first + per_chunk * n_chunks
    host = chunk_host_bytes(min(plan.chunk_tokens, n_tokens), hidden, lb, plan.ranges[0].batch_size)
    gpu = plan.peak_bytes if resident else plan.margin_bytes + max(
        a.weight_bytes + b.weight_bytes + a.activation_bytes
        for a, b in zip(plan.ranges, [*plan.ranges[1:], plan.ranges[0]], strict=True))
    return Estimate(gpu, host, _outputs_bytes(plan.n_items, plan.max_tokens, hidden, lb, keep),
                    compute, weights, 0.0, total, n_chunks)


def plan_schedule(footprint: Footprint, shape: ModelShape, *, max_tokens: int, budget: int, n_items: int,
                  n_tokens: int | None = None, machine: Machine, schedule: str = "auto",
                  chunk_tokens: int | None = None, keep: Sequence[int] = (), compute_dtype: str = "bf16",
                  latent_dtype: str = "bf16", ranges: Sequence[tuple[int, int]] | None = None,
                  batch_size: int | None = None) -> Plan:
    """The plan to run: its ranges (split at ``keep``), its schedule and the estimate of each tier.

    ``n_tokens`` is the items' real token count (default: every item at ``max_tokens``). Raises a
    ConfigError naming ``text_encoder.schedule`` when nothing fits, :class:`BudgetTooSmall` when the GPU
    budget cannot hold a range."""
    if schedule not in ("auto", "range", "chunk"):
        raise ConfigError(None, SCHEDULE_KEY, f"must be auto, range or chunk, got {schedule!r}")
    tokens = n_tokens if n_tokens is not None else n_items * max_tokens
    kw = dict(max_tokens=max_tokens, n_items=n_items, compute_dtype=compute_dtype, latent_dtype=latent_dtype,
              ranges=ranges, batch_size=batch_size, throughput=machine.throughput)
    lb = dtype_bytes(latent_dtype)
    candidates: dict[str, tuple[Plan, Estimate]] = {}
    errors: dict[str, str] = {}
    if schedule in ("auto", "range"):
        plan = split_at(plan_ranges(footprint, shape, budget=budget, **kw), keep)
        plan = dataclasses.replace(plan, schedule="range", n_tokens=tokens)
        candidates["range"] = (plan, estimate_range(plan, footprint, shape.hidden, tokens, keep, machine))
    if schedule in ("auto", "chunk"):
        try:
            plan = split_at(plan_chunk_ranges(footprint, shape, budget=budget, **kw), keep)
        except BudgetTooSmall as exc:
            if schedule == "chunk":
                raise
            errors["chunk"] = str(exc)
        else:
            batch = plan.ranges[0].batch_size
            room = machine.host_budget - chunk_host_bytes(0, shape.hidden, lb, batch)
            fitted = max(1, int(room / (shape.hidden * lb * 1.05))) if room > 0 else 0
            size = chunk_tokens or min(tokens, max(fitted, max_tokens))
            plan = dataclasses.replace(plan, schedule="chunk", chunk_tokens=max(size, max_tokens), n_tokens=tokens)
            candidates["chunk"] = (plan, estimate_chunk(plan, footprint, shape.hidden, tokens, keep, machine))
    fitting = {}
    for name, (plan, est) in candidates.items():
        short = _shortfall(est, machine)
        if short:
            errors[name] = f"{name}-major needs {short}"
        else:
            fitting[name] = (plan, est)
    if not fitting:
        raise ConfigError(None, SCHEDULE_KEY, "pre-inference does not fit this machine: " + "; ".join(
            errors[k] for k in ("range", "chunk") if k in errors))
    name = "range" if "range" in fitting else "chunk"
    if len(fitting) == 2 and _clearly_faster(fitting["chunk"][1], fitting["range"][1]):
        name = "chunk"
    plan, est = fitting[name]
    return dataclasses.replace(plan, estimate=est, estimated_seconds=est.total_s, rejected=tuple(
        errors[k] if k in errors else f"{k}-major: estimated {format_seconds(candidates[k][1].total_s)}"
        for k in candidates if k != name))


def _clearly_faster(a: Estimate, b: Estimate) -> bool:
    """``a`` saves more than 10 % and more than a minute over ``b``: below that, range-major's fewer moving
    parts (and its runs under torchrun) are worth more than the estimate's precision."""
    return a.total_s < 0.9 * b.total_s and a.total_s < b.total_s - 60


def _shortfall(est: Estimate, machine: Machine) -> str:
    """'' when ``est`` fits the disk and the host share; else what is short and by how much."""
    parts = []
    if est.disk_bytes > machine.free_disk:
        parts.append(f"{format_bytes_ceil(est.disk_bytes)} of disk at {machine.where} "
                     f"({format_bytes(machine.free_disk)} free, {format_bytes_ceil(est.disk_bytes - machine.free_disk)}"
                     " short)")
    if est.host_bytes > machine.host_budget:
        parts.append(f"{format_bytes_ceil(est.host_bytes)} of host memory ({format_bytes(machine.host_budget)} "
                     f"allowed by text_encoder.host_memory_budget, "
                     f"{format_bytes_ceil(est.host_bytes - machine.host_budget)} short)")
    return " and ".join(parts)
