"""Block-wise pre-inference: push every item through the plan's block ranges, one range in memory at a time.

    plan = plan_ranges(footprint, shape, max_tokens=30, budget=40 << 30, n_items=len(keys))
    out = run_preinference("models/opt-13b", ids, lengths, keys, plan, "artifacts/latents/ab12")
    LatentStore(out).read(shape.n_blocks)   # [n_items, T, H] after the final norm, zeros at padding

Range i loads its stage (embedding for the first, final norm for the last), reads its input (token ids,
or boundary ``start``), runs the items in length-sorted batches trimmed to each batch's longest item,
writes boundary ``stop``, commits it, and deletes the consumed boundary unless asked to keep it.

Resume: boundaries depend only on the model, the inputs and the dtypes, never on how the blocks are
split, so a rerun on the same folder starts at the furthest committed boundary the (possibly new)
plan can start a range from, and never recomputes a committed range. A folder holding latents of
other inputs, dtypes or another model is an error, not something to overwrite silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel
from transformers import PretrainedConfig

from tcf.errors import TcfError
from tcf.lm.attention import ATTENTION_BACKENDS
from tcf.lm.checkpoint import model_shape
from tcf.lm.loader import check_checkpoint, empty_stage, load_config, load_stage
from tcf.lm.pooling import POOLINGS, pool
from tcf.preinfer.latents import DTYPES, ArrayFile, Key, LatentStore, dtype_name
from tcf.preinfer.pinned import PinnedRing, Spec, slot_bytes
from tcf.preinfer.planner import Plan, RangePlan
from tcf.util.dist import DistContext, barrier, gather_objects
from tcf.util.lock import file_lock
from tcf.util.progress import Reporter

STATE_FORMAT = 2  # of a work folder's state.json: a folder of another format is not resumed


def inputs_fingerprint(ids: np.ndarray, lengths: np.ndarray, item_keys: Sequence[str]) -> str:
    """Hash of what the latents are computed from (token ids, lengths, row order)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
    h.update("\0".join(item_keys).encode())
    return h.hexdigest()[:20]


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of at most ``batch_size``, in length order (ties by row), shortest first.

    A batch is padded to its longest item, so batches keep to one length: cutting the sorted rows every
    ``batch_size`` wastes a share of the compute on padding, twice as much on each of two ranks (whose
    batches span twice the length range), which alone kept a 2-GPU run of 10-token items 4 % short of
    2x. A length with fewer than ``batch_size / 8`` items joins the next longer one rather than making a
    batch of its own, since every batch pays a pass over the weights and the kernel launches."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    groups = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1) if len(order) else []
    batches: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for i, group in enumerate(groups):
        pending.append(group)
        if sum(map(len, pending)) * 8 >= batch_size or i == len(groups) - 1:
            merged = np.concatenate(pending)
            batches.extend(np.array_split(merged, -(-len(merged) // batch_size)))  # equal parts, none too big
            pending = []
    return batches


def share(lengths: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's rows: every ``world``-th item in length order, so every share costs about the same."""
    return np.lexsort((np.arange(len(lengths)), lengths))[rank::world]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_preinference(
    model_dir: str | Path,
    ids: np.ndarray | torch.Tensor,
    lengths: np.ndarray | torch.Tensor,
    item_keys: Sequence[str],
    plan: Plan,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    latent_dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    keep_depths: Sequence[int] = (),
    reporter: Reporter | None = None,
    progress_every: float = 0.5,
    ctx: DistContext | None = None,
) -> Path:
    """Compute boundary N (hidden states after every block and the final norm) for all items into ``out_dir``.

    ``ids`` [n, T] are right-padded token ids and ``lengths`` [n] the real token counts, row r being
    ``item_keys[r]``. ``dtype`` is the compute dtype (bf16 on CUDA, fp32 on CPU by default);
    ``latent_dtype`` the stored one (default: ``dtype``). Boundaries in ``keep_depths`` survive being
    consumed; once kept, a boundary stays until :meth:`LatentStore.delete`. Returns ``out_dir``.

    Under torchrun (``ctx`` with several ranks, one GPU each) every rank encodes its own share of the
    items (every W-th item in length order, so shares cost the same) straight into the same boundary
    file; rank 0 creates, commits and reports. No item is encoded twice and none is lost.
    """
    device = torch.device(device or default_device())
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    ids = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    lengths = (lengths.numpy() if isinstance(lengths, torch.Tensor) else np.asarray(lengths)).astype(np.int64)
    _check_inputs(ids, lengths, item_keys)
    job = _Job(Path(model_dir), ids, lengths, plan, LatentStore(out_dir), dtype, dtype_name(latent_dtype or dtype),
               device, reporter or Reporter(), progress_every, ctx or DistContext(0, 1, device))
    with (file_lock(Path(out_dir) / ".lock", what="pre-inference in this folder") if job.ctx.is_main
          else contextlib.nullcontext()):
        job.open_folder(item_keys, keep_depths)
        job.run()
    return Path(out_dir)


class _Job:
    """One pre-inference over one folder: which ranges are left, and running them one after another.

    Commits (fsync, rename, state.json) run on one thread, in order, while the next range computes; it
    is the only writer of state.json until the job ends. A second thread allocates a range's pinned
    buffers (and rehearses the process's first batch) while the range's weights load."""

    def __init__(self, model_dir: Path, ids: np.ndarray, lengths: np.ndarray, plan: Plan, store: LatentStore,
                 dtype: torch.dtype, latent: str, device: torch.device, reporter: Reporter, progress_every: float,
                 ctx: DistContext):
        self.model_dir, self.ids, self.lengths, self.store = model_dir, ids, lengths, store
        self.dtype, self.latent, self.device, self.ctx = dtype, latent, device, ctx
        self.reporter = reporter if ctx.is_main else Reporter()
        self.progress_every = progress_every
        self.config = load_config(model_dir)
        check_checkpoint(model_dir)
        shape = model_shape(model_dir)
        self.n_blocks, self.hidden = shape.n_blocks, shape.hidden
        self.plan, self.ranges = plan, _check_plan(plan, self.n_blocks)
        self.n_items = len(lengths)
        self.shape = (self.n_items, ids.shape[1], self.hidden)
        self.mine = share(lengths, ctx.rank, ctx.world_size)
        self.keep: list[int] = []
        self.source: ArrayFile | None = None  # this process's handle on the current range's input boundary

    def open_folder(self, item_keys: Sequence[str], keep_depths: Sequence[int]) -> None:
        """Rank 0 checks the folder holds this job's latents (or nothing), then every rank reads what is kept."""
        store, ctx = self.store, self.ctx
        if ctx.is_main:
            identity = {"format": STATE_FORMAT, "model": str(self.model_dir.resolve()), "n_blocks": self.n_blocks,
                        "shape": list(self.shape), "compute_dtype": dtype_name(self.dtype),
                        "latent_dtype": self.latent, "inputs": inputs_fingerprint(self.ids, self.lengths, item_keys)}
            state = _open_state(store, identity)
            if not state:
                store.clear()
                store.write_items(item_keys, self.lengths)
            keep = sorted(set(state.get("kept", [])) | {int(k) for k in keep_depths})
            store.update_state(**identity, plan=[[r.start, r.stop] for r in self.ranges], kept=keep)
        barrier(ctx)
        self.keep = store.state().get("kept", [])

    def _todo(self) -> list[tuple[int, RangePlan]]:
        """The ranges left, from the furthest committed boundary; finishes the clean-up a crash may have cut."""
        store = self.store
        first = len(self.ranges) if store.has_pooled() else _resume_index(self.ranges, store.committed())
        for r in self.ranges[:first]:
            if self.ctx.is_main and r.start > 0 and r.start not in self.keep and r.start in store.committed():
                store.delete(r.start)
        return [(i, r) for i, r in enumerate(self.ranges) if i >= first]

    def run(self) -> None:
        """Every range left (range-major), or every chunk left (chunk-major: :mod:`tcf.preinfer.chunked`)."""
        if self.plan.schedule == "chunk":
            from tcf.preinfer.chunked import run_chunks

            run_chunks(self)
            return
        state = self.store.state()
        if state.get("schedule") == "chunk" and state.get("chunk_done") and not self.store.has_pooled():
            raise TcfError(f"{self.store.folder} holds chunk-major progress ({state['chunk_done']:,} of "
                           f"{self.n_items:,} items); continue it with text_encoder.schedule: chunk, or delete "
                           "the folder")
        if self.ctx.is_main and state.get("schedule") == "chunk":
            self.store.update_state(schedule="range", chunk_done=0)
        committer = ThreadPoolExecutor(1, thread_name_prefix="tcf-commit")
        pinner = ThreadPoolExecutor(1, thread_name_prefix="tcf-pin")
        committing: Future | None = None
        try:
            todo = self._todo()
            for i, r in todo:
                began = time.perf_counter()
                if self.ctx.is_main:
                    self.reporter.range_start(i, r.start, r.stop, self.n_items)
                outputs, timing = self._run_range(r, pinner, rehearse_first=(i, r) == todo[0])
                if self.ctx.is_main:
                    if committing is not None:
                        committing.result()  # commits stay in order; an error surfaces here
                    committing = committer.submit(_commit, self.store, outputs, r, self.keep, self.latent, timing)
                    self.reporter.range_end(i, time.perf_counter() - began)
            if committing is not None:
                committing.result()
            barrier(self.ctx)
        finally:
            if self.source is not None:
                self.source.close()
            committer.shutdown(wait=True)
            pinner.shutdown(wait=True)

    def _run_range(self, r: RangePlan, pinner: ThreadPoolExecutor, rehearse_first: bool) -> tuple[list[Key], dict]:
        """Load range ``r``, encode this rank's items through it into fresh output files; returns the outputs
        to commit and the range's timings (every rank's, gathered)."""
        store, ctx, latent = self.store, self.ctx, self.latent
        began = time.perf_counter()
        outputs = _outputs(r, self.n_blocks, self.keep)
        batches = [self.mine[local] for local in length_batches(self.lengths[self.mine], r.batch_size)]
        rings = rehearsal = None
        if self.device.type == "cuda":
            rings = pinner.submit(_rings, batches, self.lengths, r.start > 0, outputs, self.hidden, DTYPES[latent])
            if rehearse_first:  # a process pays its first-use costs once, in its first range
                rehearsal = pinner.submit(rehearse, self.config, r.start, batches[0] if batches else None,
                                          self.lengths, self.hidden, self.dtype, self.device)
        stage = load_stage(self.model_dir, r.start, r.stop, include_embedding=r.start == 0,
                           include_final=r.stop == self.n_blocks, dtype=self.dtype, device=self.device)
        loaded = time.perf_counter()
        if r.start > 0 and self.source is None:
            self.source = store.open(r.start)  # committed by an earlier run
        writers: dict[Key, ArrayFile] = {}
        try:
            if ctx.is_main:
                for k in outputs:
                    store.create(k, self.shape if isinstance(k, int) else (self.n_items, self.hidden), latent)
            barrier(ctx)
            ready = time.perf_counter()
            writers = {k: store.open_tmp(k, latent, sync_every=_SYNC_EVERY if _durable(k, self.keep) else None)
                       for k in outputs}
            if rehearsal is not None:
                rehearsal.result()
            _Batches(stage, self.source, self.ids, self.lengths, self.device, self.dtype, DTYPES[latent], writers,
                     rings.result() if rings else None).run(batches, self.reporter, self.progress_every,
                                                             ctx.world_size)
        except BaseException:
            for w in writers.values():
                w.close()
            if ctx.is_main:
                for k in outputs:
                    store.discard(k)
            raise
        finally:
            del stage
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        computed = time.perf_counter()
        # waits for every rank, so every rank's rows are in the files; the ranks' own seconds tell
        # a slow GPU (encode_s) from one that waited for another's weight load (wait_s)
        ranks = gather_objects({"load_s": round(loaded - began, 3), "wait_s": round(ready - loaded, 3),
                                "encode_s": round(computed - ready, 3)}, ctx)
        if self.source is not None:
            self.source.close()
        store.release(r.start)
        self.source = writers.pop(r.stop, None)  # the next range reads what this one wrote, before it is renamed
        for w in writers.values():
            w.close()
        return outputs, {"range": [r.start, r.stop], "load_s": round(loaded - began, 3),
                         "run_s": round(computed - loaded, 3), "ranks": ranks}


def _commit(store: LatentStore, outputs: list[Key], r: RangePlan, keep: Sequence[int], latent: str,
            timing: dict) -> None:
    """Make range ``r``'s outputs official, then drop its consumed input (unless kept)."""
    began = time.perf_counter()
    for k in outputs:
        store.commit(k, latent, durable=_durable(k, keep))
    if r.start > 0 and r.start not in keep:
        store.delete(r.start)
    timing["commit_s"] = round(time.perf_counter() - began, 3)
    store.update_state(timings=[*store.state().get("timings", []), timing])


def _durable(k: Key, keep: Sequence[int]) -> bool:
    """The job's outputs (pooled embeddings, kept depths) are fsynced; a boundary the next range consumes
    need not be (it is committed as volatile)."""
    return isinstance(k, str) or k in keep


def _outputs(r: RangePlan, n_blocks: int, keep: Sequence[int]) -> list[Key]:
    """What range ``r`` writes: the boundary after it, or for the last range the pooled embeddings (and
    the full final hidden states only when kept)."""
    if r.stop < n_blocks:
        return [r.stop]
    return [*POOLINGS, *([n_blocks] if n_blocks in keep else [])]


def rehearse(config: PretrainedConfig, start: int, rows: np.ndarray | None, lengths: np.ndarray, hidden: int,
             dtype: torch.dtype, device: torch.device) -> bool:
    """Run the shape of a range's first batch (``rows``) through block ``start`` built with zero weights.

    A process's first batch pays for loading the kernels it launches, creating the cuBLAS handles and
    growing the allocator: on an H100 about 0.25 s, which every rank of a data-parallel run pays in full.
    Called while the range's weights load (on another thread), it moves those costs off the encoding;
    it reads no weights, and steps aside (returns False) where the block would not leave 2 GiB free or
    runs out of memory beside the load."""
    if rows is None or not len(rows):
        return False
    block = empty_stage(config, start, start + 1, False, False)
    weights = sum(t.numel() for t in block.parameters()) * dtype.itemsize
    length = int(lengths[rows].max())
    with torch.cuda.device(device):
        if torch.cuda.mem_get_info(device)[0] < weights + (2 << 30):
            return False
        try:
            with torch.inference_mode(), sdpa_kernel(ATTENTION_BACKENDS):
                block = block.to_empty(device=device).to(dtype)
                for t in (*block.parameters(), *block.buffers()):
                    t.zero_()  # defined values: a position table or a norm must not meet garbage
                block.inspect_masks = False
                mask = torch.from_numpy(np.arange(length) < lengths[rows][:, None]).to(device)
                x = torch.zeros((len(rows), length, hidden), dtype=dtype, device=device)
                block(x, mask.long(), padded=bool(lengths[rows].min() < length))
            torch.cuda.current_stream(device).synchronize()
        except torch.cuda.OutOfMemoryError:
            return False  # the weights loading beside it need the memory more
    return True


def _input_specs(rows: np.ndarray, lengths: np.ndarray, hidden: int | None, latent: torch.dtype) -> list[Spec]:
    """A batch's inputs: token ids (or the boundary's latents when ``hidden`` is given) and the mask."""
    n, length = len(rows), int(lengths[rows].max())
    x = ((n, length), torch.int64) if hidden is None else ((n, length, hidden), latent)
    return [x, ((n, length), torch.bool)]


def _output_specs(rows: np.ndarray, lengths: np.ndarray, outputs: Sequence[Key], hidden: int,
                  latent: torch.dtype) -> list[Spec]:
    """A batch's results: [n, length, hidden] per boundary, [n, hidden] per pooling."""
    n, length = len(rows), int(lengths[rows].max())
    return [((n, length, hidden) if isinstance(k, int) else (n, hidden), latent) for k in outputs]


def _rings(batches: list[np.ndarray], lengths: np.ndarray, from_latents: bool, outputs: Sequence[Key], hidden: int,
           latent: torch.dtype) -> tuple[PinnedRing, PinnedRing]:
    """Pinned slots for the inputs and the results of ``_AHEAD + 1`` batches, each fitting the largest batch."""
    h = hidden if from_latents else None
    inputs = max((slot_bytes(_input_specs(b, lengths, h, latent)) for b in batches), default=0)
    results = max((slot_bytes(_output_specs(b, lengths, outputs, hidden, latent)) for b in batches), default=0)
    return PinnedRing(inputs, _AHEAD + 1), PinnedRing(results, _AHEAD + 1)


class _Batches:
    """Pushes one rank's batches (rows of one length band each) through a stage, each trimmed to its
    longest item, into the range's output files.

    A reader thread gathers the next batches' inputs (into pinned slots of ``rings`` on a GPU) and a writer
    thread stores finished batches, and nothing in the loop waits for the GPU (a batch's lengths, known on
    the host, tell the stage whether it is padded), so the host queues batches ahead of the GPU. Outputs are
    zero past each item's length."""

    def __init__(self, stage: torch.nn.Module, source: ArrayFile | None, ids: np.ndarray, lengths: np.ndarray,
                 device: torch.device, dtype: torch.dtype, latent: torch.dtype, writers: dict[Key, ArrayFile],
                 rings: tuple[PinnedRing, PinnedRing] | None):
        stage.inspect_masks = False  # each batch says whether it is padded: the host never waits on a mask
        self.stage, self.source, self.ids, self.lengths = stage, source, ids, lengths
        self.device, self.dtype, self.latent, self.writers, self.rings = device, dtype, latent, writers, rings
        self.hidden, self.given = (None, latent) if source is None else (source.shape[2], source.dtype)
        self.keys = list(writers)

    def fetch(self, rows: np.ndarray) -> tuple[np.ndarray, int | None, torch.Tensor, torch.Tensor, bool]:
        """A batch's inputs on the host (reader thread): token ids or the input boundary's rows, and the mask."""
        lengths = self.lengths
        length = int(lengths[rows].max())
        padded = bool(lengths[rows].min() < length)
        mask = torch.from_numpy(np.arange(length) < lengths[rows][:, None])
        specs, slot = _input_specs(rows, lengths, self.hidden, self.given), None
        if self.rings is None:
            x = torch.empty(specs[0][0], dtype=specs[0][1])
        else:  # pinned: a pageable copy would stall the GPU queue
            slot, (x, pinned_mask) = self.rings[0].carve(specs)
            if (used := self.rings[0].done[slot]) is not None:
                used.synchronize()  # the GPU has copied the batch that had this slot
            mask = pinned_mask.copy_(mask)
        if self.source is None:
            x.copy_(torch.from_numpy(self.ids[rows, :length]))
        else:
            self.source.read(rows, length, x)
        return rows, slot, x, mask, padded

    def store(self, rows: np.ndarray, results: dict[Key, torch.Tensor], ready: torch.cuda.Event | None) -> None:
        """Write a finished batch (writer thread), once the GPU has copied it out."""
        if ready is not None:
            ready.synchronize()
        for k, value in results.items():
            self.writers[k].write(rows, value)

    def to_device(self, slot: int | None, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue a batch's copies to the device; its pinned slot is free again once they are done."""
        x = x.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        if self.rings is not None:
            self.rings[0].done[slot] = torch.cuda.Event()
            self.rings[0].done[slot].record()
        return x, mask

    def compute(self, rows: np.ndarray, x: torch.Tensor, mask: torch.Tensor,
                padded: bool) -> tuple[dict[Key, torch.Tensor], torch.cuda.Event | None]:
        """Queue one batch on the device; returns its results (host slots on a GPU) and their event."""
        out = self.stage(x if self.source is None else x.to(self.dtype), mask.long(), padded=padded)
        out = out.masked_fill(~mask[..., None], 0)
        pooled = pool(out, mask) if any(isinstance(k, str) for k in self.keys) else {}
        results = {k: out if isinstance(k, int) else pooled[k] for k in self.keys}
        if self.rings is None:
            return {k: v.to(self.latent) for k, v in results.items()}, None
        # into the slot of the batch written ``_AHEAD + 1`` batches ago
        _, slots = self.rings[1].carve(_output_specs(rows, self.lengths, self.keys, out.shape[-1], self.latent))
        results = {k: dst.copy_(results[k].to(self.latent), non_blocking=True)
                   for k, dst in zip(self.keys, slots, strict=True)}
        ready = torch.cuda.Event()
        ready.record()
        return results, ready

    def run(self, batches: list[np.ndarray], reporter: Reporter, progress_every: float, world: int) -> None:
        """Every batch, reads ``_AHEAD`` ahead and writes at most ``_AHEAD`` behind. Progress counts all
        ranks' items, assuming they keep pace with this one."""
        n_items, total_mine = len(self.lengths), sum(map(len, batches))
        began = last = time.perf_counter()
        done = 0
        with ThreadPoolExecutor(1, thread_name_prefix="tcf-read") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="tcf-write") as writer, torch.inference_mode(), \
                sdpa_kernel(ATTENTION_BACKENDS):  # not cuDNN's: see tcf.lm.attention
            reads = deque(reader.submit(self.fetch, b) for b in batches[:_AHEAD])
            writes: deque[Future] = deque()
            for b in range(len(batches)):
                rows, slot, x, mask, padded = reads.popleft().result()
                x, mask = self.to_device(slot, x, mask)
                if b + _AHEAD < len(batches):
                    reads.append(reader.submit(self.fetch, batches[b + _AHEAD]))
                results, ready = self.compute(rows, x, mask, padded)
                writes.append(writer.submit(self.store, rows, results, ready))
                while len(writes) > _AHEAD:
                    writes.popleft().result()
                done += len(rows)
                now = time.perf_counter()
                if now - last >= progress_every or done == total_mine:
                    total = n_items if done == total_mine else min(done * world, n_items)
                    reporter.progress(total, n_items, total / max(now - began, 1e-9))
                    last = now
            while writes:
                writes.popleft().result()


_SYNC_EVERY = 64 << 20  # durable outputs are flushed to disk as they are written, so committing them is quick
_AHEAD = 3  # batches read ahead of the GPU, and batches the GPU may run ahead of the writer


def _check_inputs(ids: np.ndarray, lengths: np.ndarray, item_keys: Sequence[str]) -> tuple[int, int]:
    if ids.ndim != 2:
        raise TcfError(f"token ids must be [n_items, max_tokens], got shape {list(ids.shape)}")
    n, t = ids.shape
    if lengths.shape != (n,) or len(item_keys) != n:
        raise TcfError(f"{n} rows of token ids but {len(lengths)} lengths and {len(item_keys)} item keys")
    if n == 0:
        raise TcfError("no items to pre-infer")
    if lengths.min() < 1 or lengths.max() > t:
        raise TcfError(f"token lengths must be in 1..{t}, got {int(lengths.min())}..{int(lengths.max())}")
    if len(set(item_keys)) != n:
        raise TcfError("item keys are not unique")
    return n, t


def _check_plan(plan: Plan, n_blocks: int) -> list[RangePlan]:
    ranges = list(plan.ranges)
    expected = 0
    for r in ranges:
        if r.start != expected or r.stop <= r.start or r.batch_size < 1:
            raise TcfError(f"plan range {r.start}:{r.stop} (batch {r.batch_size}) does not continue at block "
                           f"{expected} with a positive batch")
        expected = r.stop
    if expected != n_blocks:
        raise TcfError(f"plan covers blocks 0:{expected} but the model has {n_blocks}")
    return ranges


def _open_state(store: LatentStore, identity: dict) -> dict:
    """The folder's state when it belongs to this job; {} when it is empty or holds nothing reusable."""
    state = store.state()
    if not state:
        return {}
    differs = [key for key, value in identity.items() if state.get(key) != value]
    if not differs:
        return state
    if not state.get("boundaries") and not state.get("pooled"):
        return {}  # nothing committed: start over cleanly
    raise TcfError(f"{store.folder} holds latents of another job ({', '.join(differs)} differ); "
                   "use another folder or delete this one")


def _resume_index(ranges: list[RangePlan], committed: list[int]) -> int:
    """Index of the first range to run: the one starting at the furthest committed boundary."""
    for i in range(len(ranges) - 1, -1, -1):
        if ranges[i].start in committed:
            return i
    return 0
