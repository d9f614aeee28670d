"""Item towers and the projection MLP of the TCF paper (arXiv 2305.11700), plus the recommender's weight init.

Every module here initialises itself in its constructor. The recommenders (SASRec, DSSM) only
initialise the layers they own, so a pretrained language model inside an item tower is never
re-initialised (the reference code's model-wide init overwrote the pretrained weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from tcf.util.dist import DistContext, gather_uneven

INITS = ("xavier", "normal")


def init_weights_(modules: Iterable[nn.Module], scheme: str = "xavier") -> None:
    """Initialise every Linear/Embedding inside ``modules``; biases zero, padding rows zero.

    ``xavier``: Xavier-normal, as the TCF reference does. ``normal``: N(0, 0.02), as BERT and
    RecBole do; it trains small ID models markedly faster. Pass only the recommender's own
    sub-modules, never a tower that may hold pretrained weights.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    for root in modules:
        for m in root.modules():
            if not isinstance(m, (nn.Linear, nn.Embedding)):
                continue
            if scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


class IDTower(nn.Module):
    """ID-based item tower: one learned vector per item id 1..I; id 0 (padding) is a zero vector."""

    def __init__(self, n_items: int, dim: int, init: str = "xavier"):
        super().__init__()
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        init_weights_([self.embedding], init)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] (long) -> vectors [..., dim]."""
        return self.embedding(ids)


class MLP(nn.Sequential):
    """Projection MLP of the method: item/user vectors are GELU outputs.

    n_layers = 0: identity (needs d_in == d_out); 1: Linear -> GELU; n > 1: Linear -> GELU, then
    (n - 1) x [Dropout -> Linear(d_out, d_out) -> GELU].
    """

    def __init__(self, d_in: int, d_out: int, n_layers: int, dropout: float = 0.1, init: str = "xavier"):
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        if n_layers == 0 and d_in != d_out:
            raise ValueError(f"a 0-layer MLP is the identity and needs d_in == d_out ({d_in} != {d_out})")
        layers: list[nn.Module] = []
        if n_layers > 0:
            layers += [nn.Linear(d_in, d_out), nn.GELU()]
        for _ in range(n_layers - 1):
            layers += [nn.Dropout(dropout), nn.Linear(d_out, d_out), nn.GELU()]
        super().__init__(*layers)
        init_weights_([self], init)


def encode_all_items(
    encode: Callable[[torch.Tensor], torch.Tensor], n_items: int, batch: int, device: torch.device,
    ctx: DistContext | None = None, lengths: np.ndarray | None = None,
) -> torch.Tensor:
    """Vectors of item ids 0..I, [I+1, d], ``batch`` ids at a time (bounded memory for big towers).

    With the items' token ``lengths`` (a fine-tuned text tower's ``item_lengths``) the ids go in length
    order, so each chunk is padded to about its own length instead of the longest in a run of ids. Under
    DDP (``ctx``) the ranks take every N-th id of that order and the shares are all-gathered: a fine-tuned
    text tower's table then costs 1/N of the blocks' work per rank instead of all of it."""
    order = (torch.as_tensor(np.argsort(lengths, kind="stable")) if lengths is not None
             else torch.arange(n_items + 1)).to(device)
    world, rank = (ctx.world_size, ctx.rank) if ctx is not None and ctx.distributed else (1, 0)
    mine = order[rank::world]
    local = torch.cat([encode(chunk) for chunk in mine.split(batch)])
    if world == 1:
        shared, where = local, order
    else:
        shared, where = gather_uneven(local, ctx), torch.cat([order[r::world] for r in range(world)])
    table = torch.empty_like(shared)
    table[where] = shared
    return table
