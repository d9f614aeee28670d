"""SASRec user encoder (as the TCF paper configures it): a post-LN causal transformer over left-padded item vectors.

Sequences are left-padded so the most recent item always sits at the last position; learned
positions are right-aligned, so a window of length L' < max_len behaves exactly like the same window
padded to max_len.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcf.rec.towers import encode_all_items, init_weights_
from tcf.util.dist import DistContext

LN_EPS = 1e-6


class _Block(nn.Module):
    """One post-LN transformer block: LN(h + Drop(MHA(h))), then LN(h + Drop(FFN(h)))."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.ln_attn = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.ln_ffn = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """h [B, L, d]; allowed [B, 1, L, L] bool (True = query may attend to key)."""
        b, n, d = h.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            heads(self.q(h)), heads(self.k(h)), heads(self.v(h)),
            attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0,
        )
        a = self.o(a.transpose(1, 2).reshape(b, n, d))
        h = self.ln_attn(h + self.drop(a))
        return self.ln_ffn(h + self.drop(self.ffn(h)))


class SASRec(nn.Module):
    """Sequential recommender: item tower + causal transformer; score = <query, item vector>."""

    def __init__(self, item_tower: nn.Module, dim: int, max_len: int, n_blocks: int = 2,
                 n_heads: int = 2, dropout: float = 0.1, init: str = "xavier"):
        super().__init__()
        self.item_tower = item_tower
        self.max_len = max_len
        self.positions = nn.Embedding(max_len, dim)
        self.ln_in = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, dropout) for _ in range(n_blocks))
        # Only the encoder's own layers: the tower (maybe a pretrained LM) initialised itself.
        init_weights_([self.positions, self.blocks], init)

    def encode(self, item_vecs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """item_vecs [B, L, d] (left-padded), mask [B, L] bool (True = real item) -> hidden [B, L, d].

        Output t predicts the item at t + 1. Position t attends to real positions <= t. A padded
        position also attends to itself, so rows with no real key stay finite (never NaN); real
        positions never attend to padding, so padding content cannot leak into them.
        """
        n = item_vecs.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.max_len}")
        pos = self.positions.weight[self.max_len - n:]
        h = self.drop(self.ln_in(item_vecs + pos))
        idx = torch.arange(n, device=item_vecs.device)
        causal = idx[None, :] <= idx[:, None]                      # [L(query), L(key)]
        allowed = (causal & mask[:, None, :]) | torch.eye(n, dtype=torch.bool, device=item_vecs.device)
        allowed = allowed[:, None]                                 # [B, 1, L, L], broadcast over heads
        for block in self.blocks:
            h = block(h, allowed)
        return h

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """seq [B, L+1] left-padded ids -> (hidden [B, L, d] for inputs seq[:, :L], vecs [B, L+1, d]).

        hidden[:, t] is scored against vecs[:, t + 1] (the next item); the caller builds the loss.
        """
        vecs = self.item_tower(seq)
        hidden = self.encode(vecs[:, :-1], seq[:, :-1] != 0)
        return hidden, vecs

    def item_table(self, n_items: int, batch: int = 4096, ctx: DistContext | None = None) -> torch.Tensor:
        """Vectors of item ids 0..I, [I+1, d], computed ``batch`` ids at a time (shared out over ``ctx``'s
        ranks, see :func:`encode_all_items`).

        Call under ``torch.no_grad()`` and ``eval()`` for evaluation.
        """
        return encode_all_items(self.item_tower, n_items, batch, self.positions.weight.device, ctx,
                                getattr(self.item_tower, "item_lengths", None))

    def query(self, item_table: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [B, L] left-padded ids -> user vectors [B, d] (encoder output at the last position)."""
        vecs = item_table[inputs]
        return self.encode(vecs, inputs != 0)[:, -1]
