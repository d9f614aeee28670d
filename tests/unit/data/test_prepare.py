"""tcf.data.prepare against a hand-computed example and a slow per-user reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tcf.data.prepare import prepare
from tcf.data.reader import RawDataset
from tcf.errors import ConfigError, DataError


def raw_of(items: list[str], users: dict[str, list[str]]) -> RawDataset:
    return RawDataset(
        path=Path("/data/x"),
        item_file="news.tsv",
        item_keys=items,
        item_texts=[f"text of {k}" for k in items],
        user_keys=list(users),
        sequences=list(users.values()),
        skipped={},
    )


# Items in file order A..H; min_seq_len 3, L = 2 -> windows of the last L+3 = 5 items.
HAND = raw_of(
    list("ABCDEFGH"),
    {
        "u1": list("ABCDEFG"),  # 7 items -> window C D E F G
        "u2": list("BA"),  # 2 < 3 -> dropped
        "u3": list("HCA"),
        "u4": list("GCDE"),
    },
)


def test_hand_computed_example():
    p = prepare(HAND, min_seq_len=3, max_seq_len=2)
    # B only occurs outside the kept windows -> no id; others in item-file order.
    assert p.item_keys == ["", "A", "C", "D", "E", "F", "G", "H"]
    assert (p.n_items, p.n_users, p.max_seq_len) == (7, 3, 2)
    assert p.user_keys == ["u1", "u3", "u4"]
    np.testing.assert_array_equal(p.seqs, [[2, 3, 4, 5, 6], [0, 0, 7, 2, 1], [0, 6, 2, 3, 4]])
    np.testing.assert_array_equal(p.lengths, [5, 3, 4])
    # train = s[:n-2]: u1 C D E, u3 H, u4 G C
    np.testing.assert_array_equal(p.train_sequences(), [[2, 3, 4], [0, 0, 7], [0, 6, 2]])
    np.testing.assert_array_equal(p.popularity, [0, 0, 2, 1, 1, 0, 1, 1])

    v = p.eval_split("valid")
    np.testing.assert_array_equal(v.inputs, [[3, 4], [0, 7], [6, 2]])
    np.testing.assert_array_equal(v.targets, [5, 2, 3])
    np.testing.assert_array_equal(v.history, [[0, 2, 3, 4], [0, 0, 0, 7], [0, 0, 6, 2]])

    t = p.eval_split("test")
    np.testing.assert_array_equal(t.inputs, [[4, 5], [7, 2], [2, 3]])
    np.testing.assert_array_equal(t.targets, [6, 1, 4])
    np.testing.assert_array_equal(t.history, [[2, 3, 4, 5], [0, 0, 7, 2], [0, 6, 2, 3]])

    for a in (p.seqs, p.lengths, p.popularity, p.train_sequences(), v.inputs, v.targets, t.history):
        assert a.dtype == np.int64
    for a in (v.inputs, v.targets, v.history, t.inputs, t.targets, t.history, p.train_sequences()):
        assert a.flags["C_CONTIGUOUS"]


def test_min_length_counts_the_full_list_not_the_window():
    raw = raw_of(list("ABCDEFGH"), {"long": list("ABCDEFGH"), "short": list("ABCD")})
    p = prepare(raw, min_seq_len=5, max_seq_len=2)  # window 5 < 8, but the full list decides
    assert p.user_keys == ["long"]
    p = prepare(raw, min_seq_len=4, max_seq_len=2)
    assert p.user_keys == ["long", "short"]
    np.testing.assert_array_equal(p.lengths, [5, 4])


def slow_reference(raw: RawDataset, m: int, L: int):
    """Direct transcription of method §1.4/§3.2, one user at a time."""
    kept = [(u, s[-(L + 3) :]) for u, s in zip(raw.user_keys, raw.sequences, strict=True) if len(s) >= m]
    used = {k for _, s in kept for k in s}
    keys = [""] + [k for k in raw.item_keys if k in used]
    idx = {k: i for i, k in enumerate(keys)}
    pad = lambda xs, w: [0] * (w - len(xs)) + xs  # noqa: E731
    out = {"users": [u for u, _ in kept], "keys": keys, "seqs": [], "train": [], "pop": [0] * len(keys)}
    for split in ("valid", "test"):
        out[split] = {"inputs": [], "targets": [], "history": []}
    for _, s in kept:
        s = [idx[k] for k in s]
        n = len(s)
        out["seqs"].append(pad(s, L + 3))
        out["train"].append(pad(s[: n - 2], L + 1))
        for i in s[: n - 2]:
            out["pop"][i] += 1
        out["valid"]["inputs"].append(pad(s[max(0, n - L - 2) : n - 2], L))
        out["valid"]["targets"].append(s[n - 2])
        out["valid"]["history"].append(pad(s[: n - 2], L + 2))
        out["test"]["inputs"].append(pad(s[max(0, n - L - 1) : n - 1], L))
        out["test"]["targets"].append(s[n - 1])
        out["test"]["history"].append(pad(s[: n - 1], L + 2))
    return out


@pytest.mark.parametrize(("m", "L"), [(3, 1), (5, 4), (5, 20), (7, 3)])
def test_matches_slow_reference_on_random_data(m, L):
    rng = np.random.default_rng(m * 100 + L)
    items = [f"i{j}" for j in rng.permutation(60)]
    users = {f"u{u}": [items[j] for j in rng.integers(0, 60, rng.integers(1, 30))] for u in range(200)}
    raw = raw_of(items, users)
    p, ref = prepare(raw, min_seq_len=m, max_seq_len=L), slow_reference(raw, m, L)
    assert p.user_keys == ref["users"]
    assert p.item_keys == ref["keys"]
    np.testing.assert_array_equal(p.seqs, ref["seqs"])
    np.testing.assert_array_equal(p.lengths, (np.asarray(ref["seqs"]) > 0).sum(1))
    np.testing.assert_array_equal(p.train_sequences(), ref["train"])
    np.testing.assert_array_equal(p.popularity, ref["pop"])
    for split in ("valid", "test"):
        e = p.eval_split(split)
        for field in ("inputs", "targets", "history"):
            np.testing.assert_array_equal(getattr(e, field), ref[split][field], err_msg=f"{split}.{field}")


def test_item_ids_do_not_depend_on_user_order():
    raw = raw_of(list("ABCDE"), {"x": list("EDC"), "y": list("ABE")})
    swapped = raw_of(list("ABCDE"), {"y": list("ABE"), "x": list("EDC")})
    assert prepare(raw, 3, 5).item_keys == prepare(swapped, 3, 5).item_keys == ["", "A", "B", "C", "D", "E"]


def test_bad_parameters_and_no_users():
    with pytest.raises(ConfigError, match="min_seq_len"):
        prepare(HAND, min_seq_len=2)
    with pytest.raises(ConfigError, match="max_seq_len"):
        prepare(HAND, min_seq_len=3, max_seq_len=0)
    with pytest.raises(DataError) as e:
        prepare(HAND, min_seq_len=8)
    assert str(e.value) == "/data/x: no user has at least 8 items"
    with pytest.raises(ValueError, match="split"):
        prepare(HAND, 3, 2).eval_split("train")  # type: ignore[arg-type]
