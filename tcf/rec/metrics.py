"""Full-ranking evaluation (as the TCF paper evaluates): rank of the target among all items, then HR@K / NDCG@K."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def full_ranking_ranks(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among items 1..I, excluding the user's history.

    scores [B, I+1] (any float dtype; compared in fp32); targets [B]; history [B, H] ids (0 = pad).
    Item 0 and history items get -inf; rank = 1 + #items scoring strictly higher than the target
    (ties favour the target, independent of any sort order). A target that is itself in the history
    (repeat consumption) or has a NaN score is a miss: its rank is I+1, beyond every real rank. NaN
    scores of other items count as higher than the target. The input tensor is not modified.
    """
    s = scores.to(torch.float32, copy=True)
    s[:, 0] = float("-inf")
    s.scatter_(1, history, float("-inf"))
    t = s.gather(1, targets[:, None])
    miss = ~(t[:, 0] > float("-inf"))                      # -inf (masked) or NaN
    s.masked_fill_(s.isnan(), float("inf"))
    ranks = 1 + (s > t).sum(1)
    return ranks.masked_fill(miss, s.shape[1])


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user {"hr@K": 1[r <= K], "ndcg@K": 1[r <= K] / log2(r + 1)} float tensors, for each K."""
    r = ranks.to(torch.float32)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (r <= k).to(torch.float32)
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(r + 1)
    return out
