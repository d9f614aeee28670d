"""Training objectives as modules, so DDP sees one forward per step and syncs every gradient.

Each objective returns ``(loss_sum, n_terms)`` for this rank's shard; the trainer divides by the
global number of terms. In-batch candidates are gathered from all ranks with gradients, so the loss
over N ranks equals the loss a single process computes on the same global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from tcf.rec.losses import bce_loss, ce_loss, ibce_loss, sample_negatives
from tcf.util.dist import DistContext, gather_padded


def _count(n: float, like: torch.Tensor) -> torch.Tensor:
    """``n`` as a 0-d float tensor on ``like``'s device, made by a kernel: ``torch.tensor(n, device=cuda)``
    copies from the host and waits for the GPU to finish every queued step first."""
    return torch.full((), float(n), device=like.device)


class _Objective(nn.Module):
    def __init__(self, model: nn.Module, log_pop: torch.Tensor, loss: str, n_items: int):
        super().__init__()
        self.model = model
        self.register_buffer("log_pop", log_pop, persistent=False)
        self.loss = loss
        self.n_items = n_items


class SASRecObjective(_Objective):
    """Next-item prediction at every real position of each user's training window."""

    def forward(self, seq: torch.Tensor, offset: int, width: int, ctx: DistContext,
                generator: torch.Generator, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_rows``: the number of real input positions in ``seq`` when the caller knows it (from a host
        copy): finding them then needs no wait for the GPU."""
        hidden, vecs = self.model(seq)  # [b, L, d], [b, L+1, d]
        real = seq[:, :-1] != 0
        if n_rows is None:
            rows_b, rows_t = real.nonzero(as_tuple=True)
        else:
            rows_b, rows_t = torch.nonzero_static(real, size=n_rows).unbind(1)
        queries = hidden[rows_b, rows_t]
        if self.loss == "ce":
            table = self.model.item_tower(torch.arange(self.n_items + 1, device=seq.device))
            total = ce_loss(queries, seq[rows_b, rows_t + 1], table)
            return total, _count(len(rows_b), seq)
        if self.loss == "ibce":
            slots = seq.shape[1]
            g_vecs = gather_padded(vecs, ctx, width, with_grad=True)
            g_seq = gather_padded(seq, ctx, width)
            users = offset + rows_b
            total = ibce_loss(queries, users, users * slots + rows_t + 1, g_vecs.reshape(-1, vecs.shape[-1]),
                              g_seq.reshape(-1), g_seq, self.log_pop)
            return total, _count(len(rows_b), seq)
        neg = sample_negatives(seq, self.n_items, tuple(seq.shape), generator)
        neg_vecs = self.model.item_tower(neg)
        pos = (queries * vecs[rows_b, rows_t + 1]).sum(-1)
        negs = (queries * neg_vecs[rows_b, rows_t + 1]).sum(-1)
        return bce_loss(pos, negs), _count(2.0 * len(rows_b), seq)


class DSSMObjective(_Objective):
    """Two-tower matching of (user, positive item) pairs."""

    def forward(self, users: torch.Tensor, items: torch.Tensor, windows: torch.Tensor, offset: int,
                width: int, ctx: DistContext, generator: torch.Generator,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.model.user_vectors(users)
        v = self.model.item_vectors(items)
        b = len(users)
        if self.loss == "ce":
            table = self.model.item_vectors(torch.arange(self.n_items + 1, device=users.device))
            return ce_loss(u, items, table), _count(b, users)
        if self.loss == "ibce":
            g_v = gather_padded(v, ctx, width, with_grad=True)
            g_items = gather_padded(items, ctx, width)
            g_windows = gather_padded(windows, ctx, width)
            rows = offset + torch.arange(b, device=users.device)
            total = ibce_loss(u, rows, rows, g_v, g_items, g_windows, self.log_pop)
            return total, _count(b, users)
        neg = sample_negatives(windows, self.n_items, (b, 1), generator)
        neg_v = self.model.item_vectors(neg[:, 0])
        pos = (u * v).sum(-1)
        negs = (u * neg_v).sum(-1)
        return bce_loss(pos, negs), _count(2.0 * b, users)
