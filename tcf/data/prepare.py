"""Turn a RawDataset into dense-id windows and leave-one-out splits (the TCF paper's preprocessing).

Per user with full list length N >= min_seq_len, keep the last L+3 items s (n = len(s)):
train = s[:n-2], validation target s[n-2] with inputs s[:n-2] (last L), test target s[n-1] with
inputs s[:n-1] (last L). Items get dense ids 1..I in item-file order among the items that occur in
some kept window, so ids are a deterministic function of the files and the two lengths.

Everything is stored once as a left-padded [U, L+3] matrix; every split is a column slice of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np

from tcf.data.reader import RawDataset
from tcf.errors import ConfigError, DataError


@dataclass
class EvalSplit:
    """One leave-one-out evaluation split: what the model sees, what it must rank, what to mask."""

    inputs: np.ndarray  # int64 [U, L], left-padded
    targets: np.ndarray  # int64 [U]
    history: np.ndarray  # int64 [U, L+2], left-padded; items masked out of the ranking
    users: np.ndarray | None = None  # int64 [U]: the rows of Prepared these are (a two-tower's user ids); None: all


@dataclass
class Prepared:
    """Dense-id user windows of one dataset for one (min_seq_len, max_seq_len)."""

    item_keys: list[str]  # dense id i (1..I) -> item key; index 0 is "" (padding)
    user_keys: list[str]  # row u -> user key
    seqs: np.ndarray  # int64 [U, L+3], left-padded with 0, most recent last
    lengths: np.ndarray  # int64 [U], real items per row
    max_seq_len: int  # L
    popularity: np.ndarray  # int64 [I+1], counts over the train sequences; [0] = 0
    protocol: str = "full"  # the evaluation protocol these splits are for (tcf.data.cold makes "cold" ones)
    n_cold: int = 0  # the last n_cold ids are cold items: in no training row, only test targets
    test_rows: np.ndarray | None = None  # int64: the rows tested (cold: those with a cold target); None: every row

    @property
    def n_items(self) -> int:
        return len(self.item_keys) - 1

    @property
    def n_train_items(self) -> int:
        """Training's items are 1..n_train_items (full losses and sampled negatives stop there): all but the cold."""
        return self.n_items - self.n_cold

    @property
    def n_users(self) -> int:
        return len(self.user_keys)

    def train_sequences(self) -> np.ndarray:
        """int64 [U, L+1]: s[:n-2] left-padded (dropping the two held-out columns keeps the padding left)."""
        return np.ascontiguousarray(self.seqs[:, :-2])

    def eval_split(self, split: Literal["valid", "test"]) -> EvalSplit:
        """Validation (target s[n-2], history s[:n-2]) or test (target s[n-1], history s[:n-1]; only the rows of
        ``test_rows`` when set)."""
        s = self.seqs
        if split == "valid":
            history = np.concatenate([np.zeros((s.shape[0], 1), dtype=s.dtype), s[:, :-2]], axis=1)
            return EvalSplit(
                inputs=np.ascontiguousarray(s[:, 1:-2]),
                targets=np.ascontiguousarray(s[:, -2]),
                history=history,
            )
        if split == "test":
            rows = self.test_rows
            if rows is not None:
                s = s[rows]
            return EvalSplit(
                inputs=np.ascontiguousarray(s[:, 2:-1]),
                targets=np.ascontiguousarray(s[:, -1]),
                history=np.ascontiguousarray(s[:, :-1]),
                users=rows,
            )
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def prepare(raw: RawDataset, min_seq_len: int = 5, max_seq_len: int = 20) -> Prepared:
    """Filter users, truncate to the last L+3 items, re-index items densely, count train popularity.

    >>> p = prepare(load_dataset("data/mind_small"), min_seq_len=5, max_seq_len=20)   # doctest: +SKIP
    >>> p.seqs.shape, p.n_items                                                       # doctest: +SKIP
    ((50000, 23), 31000)
    """
    if max_seq_len < 1:
        raise ConfigError(None, "max_seq_len", f"must be at least 1, got {max_seq_len}")
    if min_seq_len < 3:
        raise ConfigError(
            None,
            "min_seq_len",
            f"must be at least 3 (a train, a validation and a test item), got {min_seq_len}",
        )
    width = max_seq_len + 3

    full_len = np.fromiter(map(len, raw.sequences), dtype=np.int64, count=len(raw.sequences))
    keep_users = np.flatnonzero(full_len >= min_seq_len)
    if keep_users.size == 0:
        raise DataError(raw.path, None, f"no user has at least {min_seq_len} items")
    windows = [raw.sequences[u][-width:] for u in keep_users.tolist()]
    lengths = np.minimum(full_len[keep_users], width)

    file_index = {key: i for i, key in enumerate(raw.item_keys)}
    total = int(lengths.sum())
    flat = np.fromiter(map(file_index.__getitem__, chain.from_iterable(windows)), dtype=np.int64, count=total)

    # Dense ids 1..I for items present in some kept window, in item-file order.
    present = np.bincount(flat, minlength=len(raw.item_keys)) > 0
    dense_of_file = np.cumsum(present) * present
    item_keys = [""] + [raw.item_keys[i] for i in np.flatnonzero(present).tolist()]
    dense = dense_of_file[flat]

    n_users = keep_users.size
    row = np.repeat(np.arange(n_users), lengths)
    starts = np.cumsum(lengths) - lengths
    offset = np.arange(total) - np.repeat(starts, lengths)  # position within the user's window
    seqs = np.zeros((n_users, width), dtype=np.int64)
    seqs[row, width - lengths[row] + offset] = dense

    is_train = offset < lengths[row] - 2
    popularity = np.bincount(dense[is_train], minlength=len(item_keys)).astype(np.int64)
    popularity[0] = 0

    return Prepared(
        item_keys=item_keys,
        user_keys=[raw.user_keys[u] for u in keep_users.tolist()],
        seqs=seqs,
        lengths=lengths.astype(np.int64),
        max_seq_len=max_seq_len,
        popularity=popularity,
    )
