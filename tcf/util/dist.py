"""torch.distributed glue: one process per device under torchrun, or a single process.

Collectives here accept uneven shards (padding to the largest) so callers never duplicate data to
make ranks equal, which would bias metrics and in-batch negatives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from tcf.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(pref: str, local_rank: int) -> torch.device:
    """``train.device`` on this machine: a CUDA device that is not there is one error naming the key."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(pref)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(None, "train.device", f"{pref}, but torch sees no CUDA GPU here")
    if device.index is None:
        return torch.device("cuda", local_rank % count)
    if device.index >= count:
        raise ConfigError(None, "train.device", f"{pref}, but torch sees {count} CUDA GPU(s)")
    return device


def init_distributed(device_pref: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_pref, local_rank)
    if world <= 1:
        return DistContext(0, 1, device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj`` (any picklable value), in rank order, on every rank; waits for all ranks."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        x = x.clone()
        dist.all_reduce(x)
    return x


def gather_padded(t: torch.Tensor, ctx: DistContext, pad_to: int, with_grad: bool = False) -> torch.Tensor:
    """Concatenate each rank's ``t`` (first dim padded with zeros to ``pad_to``) in rank order.

    With ``with_grad`` the gradient flows back to every rank's rows, which is what lets in-batch
    negatives span the whole global batch.
    """
    if t.shape[0] < pad_to:
        pad = t.new_zeros((pad_to - t.shape[0], *t.shape[1:]))
        t = torch.cat([t, pad])
    if not ctx.distributed:
        return t
    if with_grad:
        return torch.cat(dist_fn.all_gather(t), dim=0)
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def gather_uneven(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate shards of different lengths in rank order (no padding left in the result)."""
    if not ctx.distributed:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    full = gather_padded(t, ctx, max(sizes))
    width = max(sizes)
    return torch.cat([full[r * width: r * width + s] for r, s in enumerate(sizes)])
