"""Deterministic global batches, sharded across ranks.

Each epoch draws one permutation from (seed, epoch), cuts it into global batches, and gives every
rank a contiguous slice of each global batch. Because in-batch negatives are gathered across ranks,
N ranks see exactly the batches a single process would: results do not depend on the world size, and
a resumed run replays the same order without saving sampler state.
"""

from __future__ import annotations

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[torch.Tensor]:
    """Global batches of row indices; a tail smaller than the world size joins the previous batch."""
    perm = epoch_permutation(n, seed, epoch)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < world_size:
        tail = batches.pop()
        batches[-1] = torch.cat([batches[-1], tail])
    return batches


def shard(batch: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, int, int]:
    """This rank's slice of a global batch: (indices, offset of the slice, padded slice width)."""
    width = -(-len(batch) // world_size)
    lo = min(rank * width, len(batch))
    return batch[lo: lo + width], rank * width, width


def prefixes_of(windows: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """The prefix of each left-padded window ``[B, W]`` that ends at its input position ``ends`` [B] and its
    next item, right-aligned into ``[B, W]`` like an evaluation query: row b is ``windows[b, :ends[b] + 2]``
    with zeros to its left."""
    w = windows.shape[1]
    src = torch.arange(w, device=windows.device)[None, :] + (ends[:, None] + 2 - w)
    return windows.gather(1, src.clamp_min(0)).masked_fill(src < 0, 0)


def eval_shard(n: int, rank: int, world_size: int) -> slice:
    """Contiguous users for this rank's evaluation; no user on two ranks, none left out."""
    width = -(-n // world_size)
    return slice(min(rank * width, n), min((rank + 1) * width, n))
