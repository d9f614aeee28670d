"""Full-ranking evaluation (as the TCF paper evaluates): rank of the target among all items, then HR@K / NDCG@K."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def full_ranking_ranks(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among items 1..I, excluding the user's history.

    scores [B, I+1] (any float dtype; compared exactly as fp32 would); targets [B]; history [B, H] ids
    (0 = pad). Item 0 and history items do not compete; rank = 1 + #competing items scoring strictly
    higher than the target (ties favour the target, independent of any sort order). A target that is
    itself in the history (repeat consumption), or whose score is NaN or -inf, is a miss: its rank is
    I+1, beyond every real rank. NaN scores of other items count as higher. ``scores`` is not modified.

    One pass over ``scores`` (a compare, then a count), with the history and item 0 taken back out from
    the [B, H] entries: at 50k items the count costs about what the scoring matmul does, not several
    copies of the score matrix.
    """
    t = scores.gather(1, targets[:, None])
    above = torch.le(scores, t).logical_not_()              # s > t, or s is NaN
    count = above.sum(1) - above[:, 0].long()                # item 0 never competes
    ordered = history.sort(1).values                         # each history item counted back once
    distinct = ordered != 0
    distinct[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    count -= (above.gather(1, ordered) & distinct).sum(1)
    miss = ~(t[:, 0] > float("-inf")) | (history == targets[:, None]).any(1) | (targets == 0)
    return (1 + count).masked_fill(miss, scores.shape[1])


def metric_names(ks: Sequence[int]) -> list[str]:
    """The names :func:`rank_metrics` gives, in its order: hr@K, ndcg@K for each K."""
    return [name for k in ks for name in (f"hr@{k}", f"ndcg@{k}")]


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user {"hr@K": 1[r <= K], "ndcg@K": 1[r <= K] / log2(r + 1)} float tensors, for each K."""
    r = ranks.to(torch.float32)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = (r <= k).to(torch.float32)
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(r + 1)
    return out
