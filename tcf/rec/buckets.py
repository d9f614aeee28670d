"""Test metrics by the target item's training popularity (``eval.popularity_buckets``).

A mean over all users hides whether a model wins on the head or on the long tail, where text should
help most. The rule (README, "Evaluation protocols"): each test user's count is its target's popularity in
training (``Prepared.popularity``); with B buckets and n users sorted by that count, the edges are the
counts at sorted positions ``ceil(b * n / B) - 1`` for b = 1..B-1, and a user is in bucket
``1 + #(edges below its count)``. So ``pop1`` holds the least popular targets and ``popB`` the most,
each about n / B users, and users with equal counts share a bucket (a bucket can be empty when ties
straddle an edge). Per bucket b the metrics are ``pop<b>_hr@K`` and ``pop<b>_ndcg@K`` (means over its
users; None when it has none) and ``pop<b>_share``, its fraction of the test users, so that
``sum_b share_b * metric_b`` is the overall metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tcf.rec.metrics import rank_metrics


def popularity_buckets(counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket 1..n_buckets of each user from its target's training count: equal-frequency, ties together."""
    n = len(counts)
    ordered = np.sort(counts)
    edges = ordered[[-(-b * n // n_buckets) - 1 for b in range(1, n_buckets)]]
    return 1 + (np.asarray(counts)[:, None] > edges[None, :]).sum(1)


def bucket_metrics(ranks: torch.Tensor, buckets: np.ndarray, n_buckets: int,
                   ks: Sequence[int]) -> dict[str, float | None]:
    """``pop<b>_share``, ``pop<b>_hr@K`` and ``pop<b>_ndcg@K`` for b = 1..n_buckets (``ranks`` and ``buckets``
    in the same user order)."""
    per_user = rank_metrics(ranks, ks)
    of_user = torch.as_tensor(buckets, device=ranks.device)
    out: dict[str, float | None] = {}
    for b in range(1, n_buckets + 1):
        members = of_user == b
        size = int(members.sum())
        out[f"pop{b}_share"] = size / len(buckets)
        for name, values in per_user.items():
            out[f"pop{b}_{name}"] = float(values[members].double().mean()) if size else None
    return out
