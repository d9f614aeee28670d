"""Chunk-major pre-inference: a chunk of items through every block range, then the next chunk.

At the scale the method is about, a boundary between two ranges (every item's hidden states) outgrows the
disk: OPT-175B over a million 30-token items is 737 GB per boundary in bf16. Here a chunk's hidden states
live in one pinned host buffer, laid out batch by batch (each batch [n, its longest length, hidden],
packed): a range reads a batch's slice and its output is copied back into the same slice, so a chunk needs
one buffer whatever the number of ranges. The copies run on streams of their own beside the compute (a
batch's slice is read before its output is written: the copy out waits for the compute, which waited for
the copy in; a range starts once the previous one is synchronised).
The next range's weights load on another thread while the current range computes (the planner leaves
room for both); with a single range the weights load once.

Commits are per chunk: the chunk's pooled embeddings (and kept depths) are written into the outputs'
``.tmp`` files, flushed, and state.json records how many items are done. Chunks are slices of one fixed
order (length, then row), so a rerun continues after the last committed chunk whatever its chunk size.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel

from tcf.errors import TcfError
from tcf.lm.attention import ATTENTION_BACKENDS
from tcf.lm.loader import load_stage
from tcf.lm.pooling import POOLINGS, pool
from tcf.preinfer.latents import DTYPES, ArrayFile, Key
from tcf.preinfer.pinned import PinnedRing, slot_bytes
from tcf.preinfer.planner import RangePlan
from tcf.util.dist import barrier, broadcast_object

if TYPE_CHECKING:
    from tcf.preinfer.runner import _Job

_AHEAD = 3  # pooled batches the GPU may run ahead of the writer thread


def item_order(lengths: np.ndarray) -> np.ndarray:
    """The one order chunks slice: by length, then by row."""
    return np.lexsort((np.arange(len(lengths)), lengths))


def chunk_spans(sorted_lengths: np.ndarray, start: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """Slices [a, b) of the ordered items from ``start`` on, each holding at most ``chunk_tokens`` real tokens
    (at least one item)."""
    cum = np.cumsum(sorted_lengths, dtype=np.int64)
    spans, a = [], start
    while a < len(cum):
        base = int(cum[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(cum, base + chunk_tokens, side="right")))
        spans.append((a, b))
        a = b
    return spans


@dataclass
class _Layout:
    """One chunk's batches: global rows, their offset in the packed buffer, the longest length, padding."""

    rows: list[np.ndarray]
    offsets: list[int]
    lengths: list[int]
    padded: list[bool]
    elements: int  # of the packed buffer


def layout(rows: np.ndarray, lengths: np.ndarray, batch_size: int, hidden: int) -> _Layout:
    from tcf.preinfer.runner import length_batches

    out = _Layout([], [], [], [], 0)
    for local in length_batches(lengths[rows], batch_size):
        batch = rows[local]
        longest = int(lengths[batch].max())
        out.rows.append(batch)
        out.offsets.append(out.elements)
        out.lengths.append(longest)
        out.padded.append(bool(lengths[batch].min() < longest))
        out.elements += len(batch) * longest * hidden
    return out


def run_chunks(job: _Job) -> None:
    """Encode every item chunk by chunk into ``job.store``; resumes after the last committed chunk.

    Under torchrun every rank encodes every W-th item of each chunk (in length order, so shares cost the same)
    into the same files; rank 0 decides where to resume, creates the files and commits each chunk once every
    rank's rows of it are written."""
    store, ranges, ctx = job.store, job.ranges, job.ctx
    if store.has_pooled():
        return
    stops = {r.stop for r in ranges}
    missing = [k for k in job.keep if k not in stops]
    if missing:
        raise TcfError(f"kept depths {missing} are not range boundaries of the plan")
    outputs: list[Key] = [*POOLINGS, *job.keep]
    start = _resume_point(job, outputs) if ctx.is_main else None
    done, pending = broadcast_object(start, ctx)
    order = item_order(job.lengths)
    spans = chunk_spans(job.lengths[order], done, job.plan.chunk_tokens)
    writers = {k: store.open_tmp(k, job.latent) for k in pending}
    try:
        _Chunks(job, writers).run(order, spans)
    finally:
        for w in writers.values():
            w.close()
    if ctx.is_main:
        for k in pending:
            store.commit(k, job.latent, durable=True)
    barrier(ctx)


def _resume_point(job: _Job, outputs: list[Key]) -> tuple[int, list[Key]]:
    """(items of the order already committed, the outputs still to fill); fresh ``.tmp`` files when starting over."""
    store = job.store
    state = store.state()
    done = int(state.get("chunk_done", 0)) if state.get("schedule") == "chunk" else 0
    listed = {*state.get("pooled", []), *state.get("boundaries", [])}
    pending = [k for k in outputs if k not in listed]
    if done and (state.get("chunk_outputs") != [str(k) for k in outputs]
                 or not all(store.partial(k) for k in pending)):
        done = 0
    if not done:
        if any(state.get(k) for k in ("boundaries", "pooled")) and state.get("schedule", "range") != "chunk":
            raise TcfError(f"{store.folder} holds range-major progress; continue it with text_encoder.schedule: "
                           "range, or delete the folder")
        for k in outputs:
            store.create(k, job.shape if isinstance(k, int) else (job.n_items, job.hidden), job.latent)
        pending = outputs
        store.update_state(schedule="chunk", chunk_done=0, chunks=[], chunk_outputs=[str(k) for k in outputs])
    return done, pending


class _Chunks:
    """The chunks of one job: the packed pinned buffer, the weights in flight, the writer and committer threads."""

    def __init__(self, job: _Job, writers: dict[Key, ArrayFile]):
        self.job, self.writers = job, writers
        self.latent = DTYPES[job.latent]
        self.cuda = job.device.type == "cuda"
        self.batch = job.ranges[0].batch_size
        # a batch's copy in and the previous batch's copy out run beside the compute, on streams of their own
        self.h2d = torch.cuda.Stream(job.device) if self.cuda else None
        self.d2h = torch.cuda.Stream(job.device) if self.cuda else None

    def _load(self, r: RangePlan) -> torch.nn.Module:
        job = self.job
        stage = load_stage(job.model_dir, r.start, r.stop, include_embedding=r.start == 0,
                           include_final=r.stop == job.n_blocks, dtype=job.dtype, device=job.device)
        stage.inspect_masks = False  # each batch says whether it is padded: the host never waits on a mask
        return stage

    def run(self, order: np.ndarray, spans: list[tuple[int, int]]) -> None:
        job, ranges = self.job, self.job.ranges
        if not spans:
            return
        rank, world = job.ctx.rank, job.ctx.world_size
        layouts = [layout(order[a:b][rank::world], job.lengths, self.batch, job.hidden) for a, b in spans]
        packed = torch.empty(max(x.elements for x in layouts), dtype=self.latent, pin_memory=self.cuda)
        spec = [((self.batch, job.hidden), self.latent)] * len(POOLINGS)
        ring = PinnedRing(slot_bytes(spec), _AHEAD + 1, pin=self.cuda)
        resident = len(ranges) == 1
        with ThreadPoolExecutor(1, thread_name_prefix="tcf-load") as loader, \
                ThreadPoolExecutor(1, thread_name_prefix="tcf-write") as writer, \
                ThreadPoolExecutor(1, thread_name_prefix="tcf-commit") as committer:
            steps = [(c, i) for c in range(len(spans)) for i in range(len(ranges))]
            upcoming: Future = loader.submit(self._load, ranges[0])
            stage = None
            committing: Future | None = None
            for n, (c, i) in enumerate(steps):
                r = ranges[i]
                if stage is None or not resident:
                    stage = upcoming.result()
                    if not resident and n + 1 < len(steps):
                        upcoming = loader.submit(self._load, ranges[steps[n + 1][1]])
                began = time.perf_counter()
                a, b = spans[c]
                if i == 0:
                    job.reporter.stage(f"chunk {c + 1} of {len(spans)}")  # the ranges below restart per chunk
                job.reporter.range_start(i, r.start, r.stop, b - a)
                writes = self._range(stage, r, layouts[c], packed, ring, writer, b - a)
                while writes:
                    writes.popleft().result()
                if self.cuda:
                    torch.cuda.synchronize(job.device)  # copies out done; the weights' memory free to reuse
                if r.stop in job.keep and r.stop in self.writers:
                    self._write_kept(r.stop, layouts[c], packed)
                if not resident:
                    stage = None
                job.reporter.range_end(i, time.perf_counter() - began)
                if i == len(ranges) - 1:
                    barrier(job.ctx)  # every rank's rows of the chunk are in the files
                    if job.ctx.is_main:
                        if committing is not None:
                            committing.result()
                        committing = committer.submit(self._commit, a, b)
            if committing is not None:
                committing.result()

    def _range(self, stage: torch.nn.Module, r: RangePlan, lay: _Layout, packed: torch.Tensor, ring: PinnedRing,
               writer: ThreadPoolExecutor, chunk_items: int) -> deque[Future]:
        """Queue this rank's batches of the chunk through one range; its output back into ``packed``, or pooled to
        the writer. Progress counts every rank's items, assuming they keep pace with this one."""
        job, device = self.job, self.job.device
        first, last = r.start == 0, r.stop == job.n_blocks
        keep_out = not last or job.n_blocks in job.keep
        writes: deque[Future] = deque()
        n_items = sum(map(len, lay.rows))
        done, t0, shown = 0, time.perf_counter(), time.perf_counter()
        with torch.inference_mode(), sdpa_kernel(ATTENTION_BACKENDS):
            for rows, off, length, padded in zip(lay.rows, lay.offsets, lay.lengths, lay.padded, strict=True):
                view = packed[off: off + len(rows) * length * job.hidden].view(len(rows), length, job.hidden)
                mask = torch.from_numpy(np.arange(length) < job.lengths[rows][:, None]).to(device, non_blocking=True)
                if first:
                    x = torch.from_numpy(job.ids[rows, :length]).to(device, non_blocking=True)
                else:
                    x = self._copy_in(view).to(job.dtype)
                out = stage(x, mask.long(), padded=padded).masked_fill(~mask[..., None], 0)
                if keep_out:
                    self._copy_out(out.to(self.latent), view)
                if last:
                    writes.append(writer.submit(self._store, rows, *self._pooled(out, mask, rows, ring)))
                    while len(writes) > _AHEAD:
                        writes.popleft().result()
                done += len(rows)
                now = time.perf_counter()
                if now - shown >= job.progress_every or done == n_items:
                    total = chunk_items if done == n_items else min(done * job.ctx.world_size, chunk_items)
                    job.reporter.progress(total, chunk_items, total / max(now - t0, 1e-9))
                    shown = now
        return writes

    def _copy_in(self, view: torch.Tensor) -> torch.Tensor:
        """A batch's input from the packed buffer to the device, on the copy-in stream; the compute waits for it."""
        if not self.cuda:
            return view
        compute = torch.cuda.current_stream(self.job.device)
        with torch.cuda.stream(self.h2d):
            staged = view.to(self.job.device, non_blocking=True)
        compute.wait_stream(self.h2d)
        staged.record_stream(compute)  # its memory is free again only once the compute has read it
        return staged

    def _copy_out(self, result: torch.Tensor, view: torch.Tensor) -> None:
        """A batch's output back into its slice of the packed buffer, on the copy-out stream once computed."""
        if not self.cuda:
            view.copy_(result)
            return
        self.d2h.wait_stream(torch.cuda.current_stream(self.job.device))
        with torch.cuda.stream(self.d2h):
            view.copy_(result, non_blocking=True)
        result.record_stream(self.d2h)

    def _pooled(self, out: torch.Tensor, mask: torch.Tensor, rows: np.ndarray,
                ring: PinnedRing) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
        pooled = pool(out, mask)
        _, slots = ring.carve([((len(rows), out.shape[-1]), self.latent)] * len(POOLINGS))
        results = {k: dst.copy_(pooled[k].to(self.latent), non_blocking=True)
                   for k, dst in zip(POOLINGS, slots, strict=True)}
        if not self.cuda:
            return results, None
        ready = torch.cuda.Event()
        ready.record()
        return results, ready

    def _store(self, rows: np.ndarray, results: dict[str, torch.Tensor], ready: torch.cuda.Event | None) -> None:
        if ready is not None:
            ready.synchronize()
        for k, value in results.items():
            self.writers[k].write(rows, value)

    def _write_kept(self, depth: int, lay: _Layout, packed: torch.Tensor) -> None:
        """The chunk's hidden states at a kept depth, from the packed buffer (the GPU is done with it)."""
        for rows, off, length in zip(lay.rows, lay.offsets, lay.lengths, strict=True):
            self.writers[depth].write(rows, packed[off: off + len(rows) * length * self.job.hidden]
                                      .view(len(rows), length, self.job.hidden))

    def _commit(self, a: int, b: int) -> None:
        """Items [a, b) of the order are in the outputs: flush them, then say so in state.json."""
        for w in self.writers.values():
            os.fdatasync(w.fd)
        store = self.job.store
        store.update_state(chunk_done=b, chunks=[*store.state().get("chunks", []), [a, b]])
