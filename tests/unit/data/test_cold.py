"""The cold-start split (tcf.data.cold): which items are cold, and that they survive only as test targets."""

from __future__ import annotations

import numpy as np
import pytest

from tcf.data.cold import choose_cold, hold_out_cold
from tcf.data.prepare import prepare
from tcf.data.reader import load_dataset


@pytest.fixture(scope="module")
def full(small_dataset):
    return prepare(load_dataset(small_dataset), min_seq_len=5, max_seq_len=8)


def _keys(data, ids) -> set[str]:
    return {data.item_keys[i] for i in np.asarray(ids).ravel().tolist() if i}


def test_the_draw_is_a_seeded_share_of_the_test_targets(full):
    targets = np.unique(full.seqs[:, -1])
    cold = choose_cold(full, 0.2, seed=0)
    assert len(cold) == round(0.2 * len(targets)) and set(cold) <= set(targets)
    assert np.array_equal(cold, choose_cold(full, 0.2, seed=0))  # deterministic
    assert not np.array_equal(cold, choose_cold(full, 0.2, seed=1))  # and the seed matters
    assert len(choose_cold(full, 1e-6, seed=0)) == 1  # at least one


def test_cold_items_survive_only_as_their_users_test_targets(full):
    cold_keys = _keys(full, choose_cold(full, 0.2, seed=0))
    data = hold_out_cold(full, 0.2, seed=0)
    assert data.protocol == "cold" and data.n_cold == len(cold_keys)
    # renumbered: the warm items first in their old order, then the cold ones
    assert data.item_keys[data.n_train_items + 1:] == sorted(cold_keys, key=full.item_keys.index)
    assert [k for k in data.item_keys[1:data.n_train_items + 1]] == [k for k in full.item_keys[1:]
                                                                     if k not in cold_keys]
    cold_ids = np.arange(data.n_train_items + 1, data.n_items + 1)
    train, valid, test = data.train_sequences(), data.eval_split("valid"), data.eval_split("test")
    for where in (train, valid.inputs, valid.targets, valid.history, test.inputs, test.history):
        assert not np.isin(where, cold_ids).any()
    assert (data.popularity[cold_ids] == 0).all()
    counts = np.bincount(train.ravel(), minlength=data.n_items + 1)
    counts[0] = 0
    assert np.array_equal(data.popularity, counts)  # recounted over the training rows that remain
    # the test split is exactly the users whose test target is cold, and each is named by its row
    assert np.isin(test.targets, cold_ids).all()
    assert np.array_equal(test.users, np.flatnonzero(np.isin(data.seqs[:, -1], cold_ids)))
    assert np.array_equal(test.targets, data.seqs[test.users, -1])


def test_each_window_closes_up_around_its_cold_items(full):
    cold_keys = _keys(full, choose_cold(full, 0.2, seed=0))
    data = hold_out_cold(full, 0.2, seed=0)
    kept = {key: row for row, key in enumerate(data.user_keys)}
    closed_up = dropped = 0
    for row, user in enumerate(full.user_keys):
        window = [full.item_keys[i] for i in full.seqs[row] if i]
        expected = [k for k in window[:-1] if k not in cold_keys] + window[-1:]
        if len(expected) < 3:
            assert user not in kept
            dropped += 1
            continue
        got = [data.item_keys[i] for i in data.seqs[kept[user]] if i]
        assert got == expected
        assert data.lengths[kept[user]] == len(expected)
        closed_up += len(expected) < len(window)
    assert closed_up > 10  # the synthetic data has users with a cold item mid-window
    assert len(kept) == full.n_users - dropped


def test_full_data_is_untouched(full):
    before = full.seqs.copy()
    hold_out_cold(full, 0.3, seed=4)
    assert np.array_equal(full.seqs, before) and full.n_cold == 0 and full.test_rows is None
    assert full.eval_split("test").users is None and len(full.eval_split("test").targets) == full.n_users
