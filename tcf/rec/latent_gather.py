"""Rows of stored latents for the fine-tuned text tower, read one batch ahead of the GPU.

A training step needs the latents of its batch's unique items (about 80 MB for 670 items of an
OPT-1.3B boundary). Read through a memory map, that costs a page fault per 4 KiB and a pageable copy
to the GPU: on an H200 the step then waits on the host for three times as long as its blocks compute.
Here rows are read with ``pread`` by several threads into pinned buffers, the next batch's rows while
the current step runs, and copied to the GPU asynchronously.

On a GPU with room to spare (the boundary needs at most ``CACHE_SHARE`` of its free memory) the whole
boundary is copied to the GPU once instead, and a batch is a gather there: no host reads at all.

Usage::

    gather = LatentGather(store.open(depth), lengths)
    gather.prefetch(next_rows)           # on a worker thread
    x, mask = gather.take(rows, device)  # the prefetched rows when they match, else read now
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from tcf.preinfer.latents import ArrayFile

READERS = 4  # pread threads: the page cache copies at several GB/s per thread
CACHE_SHARE = 0.25  # keep the boundary on the GPU when it needs at most this share of the free memory
CACHE_CHUNK = 256 << 20  # bytes per host-to-GPU copy while filling that cache


class LatentGather:
    """Reads rows of one boundary into a ring of two pinned buffers (plain memory on the CPU)."""

    def __init__(self, file: ArrayFile, lengths: np.ndarray):
        self.file = file
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]  # the H2D copy out of each buffer
        self._next = 0
        self._lock = threading.Lock()
        self._pending: tuple[np.ndarray, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self.pin = torch.cuda.is_available()
        self._cache: torch.Tensor | None = None  # the whole boundary on the GPU
        self._cache_checked = False

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tcf-prefetch")
            self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="tcf-pread")
        assert self._readers is not None
        return self._pool, self._readers

    def _buffer(self, n: int, length: int) -> tuple[int, torch.Tensor]:
        """A free slot of the ring, grown to hold [n, length, H]."""
        with self._lock:
            slot, self._next = self._next, 1 - self._next
        event = self._copied[slot]
        if event is not None:
            event.synchronize()  # the GPU has finished copying the last batch out of this buffer
        size = n * length * self.file.shape[2]
        buf = self._buffers[slot]
        if buf is None or buf.numel() < size:
            buf = torch.empty(max(size, int(size * 1.25)), dtype=self.file.dtype, pin_memory=self.pin)
            self._buffers[slot] = buf
        return slot, buf[:size].view(n, length, self.file.shape[2])

    def _read(self, rows: np.ndarray) -> tuple[int, torch.Tensor]:
        length = int(self.lengths[rows].max())
        slot, out = self._buffer(len(rows), length)
        _, readers = self._pools()
        chunks = [c for c in np.array_split(np.arange(len(rows)), READERS) if len(c)]
        futures = [readers.submit(self.file.read, rows[c], length, out[c[0]:c[-1] + 1]) for c in chunks]
        for f in futures:
            f.result()
        return slot, out

    def _device_cache(self, device: torch.device) -> torch.Tensor | None:
        """The boundary on ``device`` when it fits (decided once, at the first GPU batch)."""
        if device.type != "cuda" or self._cache_checked:
            return self._cache
        self._cache_checked = True
        if self._pending is not None:  # a read started before the decision; its rows are not needed
            self._pending[1].result()
            self._pending = None
        need = self.file.row_bytes * self.file.shape[0]
        if need > CACHE_SHARE * torch.cuda.mem_get_info(device)[0]:
            return None
        cache = torch.empty(self.file.shape, dtype=self.file.dtype, device=device)
        step = max(1, CACHE_CHUNK // self.file.row_bytes)
        host = torch.empty((step, *self.file.shape[1:]), dtype=self.file.dtype, pin_memory=True)
        for lo in range(0, self.file.shape[0], step):
            rows = np.arange(lo, min(lo + step, self.file.shape[0]))
            cache[lo:lo + len(rows)].copy_(self.file.read(rows, out=host[:len(rows)]))
        self._cache = cache
        return cache

    def prefetch(self, rows: np.ndarray) -> None:
        """Start reading ``rows`` (latents row numbers, ascending) for the next :meth:`take`."""
        if self._cache is not None:
            return  # nothing to read: the rows are on the GPU
        rows = np.asarray(rows, dtype=np.int64)
        pool, _ = self._pools()
        self._pending = (rows, pool.submit(self._read, rows))

    def take(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, T, H] latents on ``device``, [n, T] bool mask) for ``rows``; T = their longest length."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = torch.as_tensor(self.lengths[rows])
        cache = self._device_cache(device)
        if cache is not None:
            length = int(lengths.max())
            index = torch.from_numpy(rows).to(device, non_blocking=True)
            mask = (torch.arange(length) < lengths[:, None]).to(device, non_blocking=True)
            return cache[:, :length][index], mask
        pending, self._pending = self._pending, None
        if pending is not None and np.array_equal(pending[0], rows):
            slot, host = pending[1].result()
        else:
            if pending is not None:
                pending[1].result()  # never leave a read writing into a buffer we may hand out
            slot, host = self._read(rows)
        x = host.to(device, non_blocking=self.pin)
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self._copied[slot] = event
        else:
            x = x.clone()  # the buffer is reused two batches later
        mask = (torch.arange(host.shape[1]) < lengths[:, None]).to(device, non_blocking=self.pin)
        return x, mask

    def close(self) -> None:
        for pool in (self._pool, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._readers = None
        self._cache = None
        self.file.close()
