"""Popularity baseline: every user gets the same ranking, by training popularity."""

from __future__ import annotations

import numpy as np
import torch


class Popularity:
    """Scores items by their count over the training sequences (the floor any recommender must beat)."""

    def __init__(self, popularity: np.ndarray):
        self.popularity = np.asarray(popularity, dtype=np.int64)

    def item_scores(self) -> torch.Tensor:
        """[I+1] float32 scores, all distinct: count descending, ties broken by id ascending.

        Scores are the integers I..1 (item 0, padding, gets 0), exact in fp32, so full-ranking
        ranks are deterministic and never tied.
        """
        n_items = self.popularity.shape[0] - 1
        ids = np.arange(1, n_items + 1)
        order = ids[np.lexsort((ids, -self.popularity[1:]))]   # best first
        scores = np.zeros(n_items + 1, dtype=np.float32)
        scores[order] = np.arange(n_items, 0, -1, dtype=np.float32)
        return torch.from_numpy(scores)
