"""Training objectives as modules, so DDP sees one forward per step and syncs every gradient.

Each objective returns ``(loss_sum, n_terms)`` for this rank's shard; the trainer divides by the
global number of terms. In-batch candidates are gathered from all ranks with gradients, so the loss
over N ranks equals the loss a single process computes on the same global batch.

``static_loss`` is the same loss for one process with shapes that do not depend on the data: every
position is a row and padding rows weigh 0, so a CUDA graph can replay it (BCE has no static form: its
negatives are redrawn until none is in the user's window).
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
    """Next-item prediction: at every real position of each user's training window, or (``windows`` given)
    at the last position of each prefix."""

    def forward(self, seq: torch.Tensor, offset: int, width: int, ctx: DistContext,
                generator: torch.Generator, n_rows: int | None = None,
                windows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """seq [b, L+1] left-padded ids. ``n_rows``: the number of real input positions in ``seq`` when the
        caller knows it (from a host copy): finding them then needs no wait for the GPU. ``windows`` [b, L+1]:
        ``seq`` holds prefixes (the target last) and these are their users' whole windows, the items an
        in-batch or sampled negative must not be."""
        hidden, vecs = self.model(seq)  # [b, L, d], [b, L+1, d]
        if windows is not None:
            return self._prefix_loss(hidden[:, -1], seq[:, -1], vecs[:, -1], windows, offset, width, ctx,
                                     generator)
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

    def static_loss(self, seq: torch.Tensor, windows: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on one process (CE and IBCE) with data-independent shapes; rows of all-zero ``seq``
        (and, with ``windows``, prefixes whose target is 0) weigh nothing."""
        hidden, vecs = self.model(seq)
        if windows is not None:
            targets = seq[:, -1]
            return self._prefix_loss(hidden[:, -1], targets, vecs[:, -1], windows, 0, len(seq),
                                     DistContext(0, 1, seq.device), None, weights=(targets != 0).float())
        b, n = seq.shape[0], seq.shape[1] - 1
        weights = (seq[:, :-1] != 0).reshape(-1).float()
        queries = hidden.reshape(b * n, -1)
        if self.loss == "ce":
            table = self.model.item_tower(torch.arange(self.n_items + 1, device=seq.device))
            return ce_loss(queries, seq[:, 1:].reshape(-1), table, weights), weights.sum()
        if self.loss != "ibce":
            raise ValueError(f"loss {self.loss!r} has no static form")
        rows_b = torch.arange(b, device=seq.device)[:, None].expand(b, n).reshape(-1)
        rows_t = torch.arange(n, device=seq.device).repeat(b)
        total = ibce_loss(queries, rows_b, rows_b * (n + 1) + rows_t + 1, vecs.reshape(b * (n + 1), -1),
                          seq.reshape(-1), seq, self.log_pop, weights)
        return total, weights.sum()

    def _prefix_loss(self, queries: torch.Tensor, targets: torch.Tensor, target_vecs: torch.Tensor,
                     windows: torch.Tensor, offset: int, width: int, ctx: DistContext,
                     generator: torch.Generator | None, weights: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One query per prefix: the losses of DSSM's pairs. Without ``weights`` every prefix has a real last
        input; with them (static shapes) a prefix of weight 0 is padding."""
        b = len(targets)
        count = _count(b, targets) if weights is None else weights.sum()
        if self.loss == "ce":
            table = self.model.item_tower(torch.arange(self.n_items + 1, device=targets.device))
            return ce_loss(queries, targets, table, weights), count
        if self.loss == "ibce":
            g_v = gather_padded(target_vecs, ctx, width, with_grad=True)
            g_ids = gather_padded(targets, ctx, width)
            g_windows = gather_padded(windows, ctx, width)
            rows = offset + torch.arange(b, device=targets.device)
            return ibce_loss(queries, rows, rows, g_v, g_ids, g_windows, self.log_pop, weights), count
        if generator is None or weights is not None:
            raise ValueError("BCE has no static form")
        neg = sample_negatives(windows, self.n_items, (b, 1), generator)
        pos = (queries * target_vecs).sum(-1)
        negs = (queries * self.model.item_tower(neg[:, 0])).sum(-1)
        return bce_loss(pos, negs), _count(2.0 * b, targets)


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

    def static_loss(self, users: torch.Tensor, items: torch.Tensor, windows: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on one process (CE and IBCE) with data-independent shapes; pairs of item 0 weigh nothing."""
        weights = (items != 0).float()
        u = self.model.user_vectors(users)
        if self.loss == "ce":
            table = self.model.item_vectors(torch.arange(self.n_items + 1, device=users.device))
            return ce_loss(u, items, table, weights), weights.sum()
        if self.loss != "ibce":
            raise ValueError(f"loss {self.loss!r} has no static form")
        rows = torch.arange(len(users), device=users.device)
        total = ibce_loss(u, rows, rows, self.model.item_vectors(items), items, windows, self.log_pop, weights)
        return total, weights.sum()
