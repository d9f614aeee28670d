"""Page-locked host buffers allocated once per range, before its batches run, and reused in turn.

Allocating pinned memory as each batch needs it (``pin_memory=True``, ``torch.empty(..., pin_memory=True)``)
calls ``cudaHostAlloc`` for every new size, on the host path that feeds the GPU: on an H100 a first pass
spent 0.32 s there and left the GPU idle between its first batches. A :class:`PinnedRing` is sized from
the range's batches, which are known before its weights load, so it is allocated while they do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_ALIGN = 256  # every carved tensor starts on a boundary any dtype (and a DMA tcf) is happy with

Spec = tuple[tuple[int, ...], torch.dtype]


def _size(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= int(d)
    return n


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return -(-_size(shape, dtype) // _ALIGN) * _ALIGN


def slot_bytes(specs: Sequence[Spec]) -> int:
    """Bytes one slot needs to hold tensors of these (shape, dtype)s side by side."""
    return sum(_nbytes(shape, dtype) for shape, dtype in specs)


class PinnedRing:
    """``slots`` pinned buffers of ``nbytes`` each, handed out round-robin by :meth:`carve`.

    The caller guarantees a slot is no longer in use (its copies done, its reader finished) when it comes
    round again; the ring only hands them out in order. Slot ``i``'s ``done`` event, when the caller
    records one, says when the GPU has finished reading it."""

    def __init__(self, nbytes: int, slots: int, pin: bool = True) -> None:
        self.buffers = [torch.empty(max(nbytes, _ALIGN), dtype=torch.uint8, pin_memory=pin) for _ in range(slots)]
        self.done: list[torch.cuda.Event | None] = [None] * slots
        self._next = 0

    def carve(self, specs: Sequence[Spec]) -> tuple[int, list[torch.Tensor]]:
        """The next slot's index and contiguous tensors of the given (shape, dtype)s laid out in it."""
        i = self._next
        self._next = (i + 1) % len(self.buffers)
        buf = self.buffers[i]
        if slot_bytes(specs) > len(buf):
            raise ValueError(f"{slot_bytes(specs)} bytes do not fit a pinned slot of {len(buf)}")
        out, at = [], 0
        for shape, dtype in specs:
            out.append(buf[at: at + _size(shape, dtype)].view(dtype).view(shape))
            at += _nbytes(shape, dtype)
        return i, out
