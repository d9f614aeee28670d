"""DSSM two-tower recommender: user-ID tower vs item tower, scored by dot product."""

from __future__ import annotations

import torch
from torch import nn

from tcf.rec.towers import MLP, encode_all_items, init_weights_
from tcf.util.dist import DistContext


class DSSM(nn.Module):
    """user vector = MLP_u(E_u[user]); item vector = MLP_i(tower(item)); no sequence model.

    Users are row indices 0..U-1 (every user is real, so no padding row is needed).
    """

    def __init__(self, item_tower: nn.Module, n_users: int, dim: int, n_mlp_layers: int = 0,
                 dropout: float = 0.1, init: str = "xavier"):
        super().__init__()
        self.item_tower = item_tower
        self.user_embedding = nn.Embedding(n_users, dim)
        self.user_mlp = MLP(dim, dim, n_mlp_layers, dropout, init)
        self.item_mlp = MLP(dim, dim, n_mlp_layers, dropout, init)
        init_weights_([self.user_embedding], init)  # the MLPs initialised themselves; the tower too

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """users [B] row indices -> [B, d]."""
        return self.user_mlp(self.user_embedding(users))

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> [..., d]."""
        return self.item_mlp(self.item_tower(ids))

    def item_table(self, n_items: int, batch: int = 4096, ctx: DistContext | None = None) -> torch.Tensor:
        """Vectors of item ids 0..I, [I+1, d] (shared out over ``ctx``'s ranks); call under
        ``torch.no_grad()`` and ``eval()``."""
        return encode_all_items(self.item_vectors, n_items, batch, self.user_embedding.weight.device, ctx,
                                getattr(self.item_tower, "item_lengths", None))

    def query(self, users: torch.Tensor) -> torch.Tensor:
        """Evaluation query for users [B] -> [B, d] (same as user_vectors)."""
        return self.user_vectors(users)
