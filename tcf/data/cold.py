"""The cold-start protocol: a seeded share of the test-target items held out of training entirely.

Text towers claim to recommend items nobody has interacted with yet; testing that claim needs items the
recommender never saw in training, not just rare ones. The rule (README, "Evaluation protocols"):

1. Candidates are the items that are some user's test target (the last item of a kept window). A
   ``share`` of them, ``max(1, round(share * candidates))``, drawn with ``numpy.random.default_rng(seed)``,
   become cold.
2. Every occurrence of a cold item is removed from every user's window, except where it is the user's own
   test target (the last item). The windows close up (left-padded again); leave-one-out then splits them
   as always: training ``s[:n-2]``, validation ``s[n-2]``, test ``s[n-1]``. So no training row, validation
   target, in-batch negative or popularity count holds a cold item, and cold test users' inputs are warm.
3. Users left with fewer than 3 items are dropped. The test split is the users whose test target is cold.
4. Ids: the warm items keep their order and come first (1..W), the cold ones follow (W+1..I), so
   training's losses and sampled negatives, which range over 1..W, never meet one; ranking still covers
   all I items.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tcf.data.prepare import Prepared
from tcf.errors import ConfigError

MIN_ITEMS = 3  # a training item, a validation target, a test target


def choose_cold(data: Prepared, share: float, seed: int) -> np.ndarray:
    """Sorted ids (in ``data``'s numbering) of the cold items: a seeded share of the test targets."""
    candidates = np.unique(data.seqs[:, -1])
    count = max(1, round(share * len(candidates)))
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))


def hold_out_cold(data: Prepared, share: float, seed: int) -> Prepared:
    """``data`` under the cold protocol (module docstring): cold items out of every training row, renumbered
    last, popularity recounted, and the test split narrowed to the users whose target is cold."""
    cold = choose_cold(data, share, seed)
    is_cold = np.zeros(data.n_items + 1, dtype=bool)
    is_cold[cold] = True
    s = data.seqs
    keep = (s != 0) & ~is_cold[s]
    keep[:, -1] |= is_cold[s[:, -1]]  # a cold item stays only as its user's test target
    lengths = keep.sum(1)
    rows = np.flatnonzero(lengths >= MIN_ITEMS)
    s, keep, lengths = s[rows], keep[rows], lengths[rows]
    # close up each window to the right: dropped positions (stable-sorted first) become left padding
    order = np.argsort(keep, axis=1, kind="stable")
    packed = np.take_along_axis(np.where(keep, s, 0), order, axis=1)

    warm = np.flatnonzero(~is_cold[1:]) + 1
    new_ids = np.concatenate([[0], warm, cold])  # new id -> old id
    renumber = np.empty_like(new_ids)
    renumber[new_ids] = np.arange(len(new_ids))
    seqs = renumber[packed]
    n_warm = len(warm)
    test_rows = np.flatnonzero(seqs[:, -1] > n_warm)
    if test_rows.size == 0:
        raise ConfigError(None, "eval.cold_items", "no user whose test target is cold keeps 3 items once the cold "
                                                   "items are removed; raise eval.cold_items or change eval.cold_seed")
    popularity = np.bincount(seqs[:, :-2].ravel(), minlength=len(new_ids)).astype(np.int64)
    popularity[0] = 0
    return replace(data, item_keys=[data.item_keys[i] for i in new_ids.tolist()],
                   user_keys=[data.user_keys[u] for u in rows.tolist()], seqs=seqs, lengths=lengths.astype(np.int64),
                   popularity=popularity, protocol="cold", n_cold=len(cold), test_rows=test_rows)
