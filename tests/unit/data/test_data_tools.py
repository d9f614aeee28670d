"""tcf.data tools: synthetic data, warm-item filter, stats, dataset folders written whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tcf.data.filter import filter_warm_items
from tcf.data.output import dataset_folder
from tcf.data.prepare import Prepared, prepare
from tcf.data.reader import load_dataset
from tcf.data.stats import dataset_stats
from tcf.data.synth import synth_dataset
from tcf.errors import DataError, TcfError


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "default"
    info = synth_dataset(out)  # the demo's default size
    assert info["users"] == 2000 and info["items"] == 1000 and info["seed"] == 0
    return out


# ---------------------------------------------------------------- synth


def test_synth_layout_and_ranges(synth):
    raw = load_dataset(synth)  # strict: the generated files are valid
    assert raw.item_file == "news.tsv"
    assert raw.item_keys == [f"N{j}" for j in range(1, 1001)]
    assert raw.user_keys == [f"U{u}" for u in range(1, 2001)]
    lengths = [len(s) for s in raw.sequences]
    assert min(lengths) >= 5 and max(lengths) <= 40
    assert all(6 <= len(t.split()) <= 15 for t in raw.item_texts)
    assert (synth / "news.tsv").read_text().startswith("news_id\ttitle\n")
    assert (synth / "behaviors.tsv").read_text().startswith("user_id\titems\n")
    # Popularity is skewed (Zipf), and users rarely click an item twice.
    pop = np.asarray(sorted(dataset_stats(raw)[k] for k in ("item_pop_max", "item_pop_median")))
    assert pop[1] > 5 * pop[0]
    repeats = sum(len(s) - len(set(s)) for s in raw.sequences) / sum(lengths)
    assert repeats < 0.02


def test_synth_is_deterministic_by_seed(tmp_path):
    a = synth_dataset(tmp_path / "a", users=300, items=200, seed=7)
    b = synth_dataset(tmp_path / "b", users=300, items=200, seed=7)
    c = synth_dataset(tmp_path / "c", users=300, items=200, seed=8)
    assert a == b
    assert files(tmp_path / "a") == files(tmp_path / "b")
    fa, fc = files(tmp_path / "a"), files(tmp_path / "c")
    assert fa["news.tsv"] != fc["news.tsv"] and fa["behaviors.tsv"] != fc["behaviors.tsv"]
    assert c["seed"] == 8


def hr_at_10(p: Prepared, scores: np.ndarray) -> float:
    """Test-split HR@10 with full ranking and history masking; scores [U, I+1]."""
    e = p.eval_split("test")
    s = scores.astype(np.float64).copy()
    s[:, 0] = -np.inf
    np.put_along_axis(s, e.history, -np.inf, axis=1)
    target = np.take_along_axis(s, e.targets[:, None], axis=1)
    rank = 1 + (s > target).sum(axis=1)
    return float(((rank <= 10) & np.isfinite(target[:, 0])).mean())


def test_synth_has_sequential_and_textual_signal(synth):
    """A first-order Markov model and a title-overlap model both beat popularity by a wide margin.

    (A stand-in for "SASRec beats popularity" that needs no training: if next items were not
    predictable from the previous one, neither model could beat popularity.)
    """
    raw = load_dataset(synth)
    p = prepare(raw)
    tie = -np.arange(p.n_items + 1) * 1e-9  # deterministic tie-break by id
    pop_scores = np.broadcast_to(p.popularity + tie, (p.n_users, p.n_items + 1))
    hr_pop = hr_at_10(p, pop_scores)

    trans = np.zeros((p.n_items + 1, p.n_items + 1))
    train = p.train_sequences()
    prev, nxt = train[:, :-1].ravel(), train[:, 1:].ravel()
    real = prev > 0
    np.add.at(trans, (prev[real], nxt[real]), 1.0)
    last = p.eval_split("test").inputs[:, -1]
    hr_markov = hr_at_10(p, trans[last] + 1e-3 * pop_scores)

    text = raw.text_of()
    vocab = {w: i for i, w in enumerate(sorted({w for t in raw.item_texts for w in t.lower().split()}))}
    bow = np.zeros((p.n_items + 1, len(vocab)))
    for i, key in enumerate(p.item_keys[1:], start=1):
        bow[i, [vocab[w] for w in text[key].lower().split()]] = 1.0
    hr_text = hr_at_10(p, bow[last] @ bow.T + 1e-3 * pop_scores)

    assert hr_pop < 0.15
    assert hr_markov > 0.3 and hr_markov > 3 * hr_pop
    assert hr_text > 2 * hr_pop


def test_synth_refuses_bad_sizes_and_existing_output(tmp_path):
    with pytest.raises(TcfError, match="items"):
        synth_dataset(tmp_path / "x", items=5)
    with pytest.raises(TcfError, match="users"):
        synth_dataset(tmp_path / "x", users=0)
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError) as e:
        synth_dataset(out, users=10, items=50)
    assert str(e.value) == f"{out}: output folder already exists and is not empty"
    assert files(out) == {"keep.txt": b"precious"}
    empty = tmp_path / "empty"
    empty.mkdir()
    synth_dataset(empty, users=10, items=50)  # an empty folder is fine
    assert sorted(files(empty)) == ["behaviors.tsv", "news.tsv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no temp leftovers


# ---------------------------------------------------------------- atomic writes


def test_dataset_folder_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with dataset_folder(out) as tmp:
            (tmp / "behaviors.tsv").write_text("half")
            assert not out.exists()
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with dataset_folder(out) as tmp:
        (tmp / "a.txt").write_text("done")
    assert files(out) == {"a.txt": b"done"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------- filter

ITEMS = "itemid\tdescription\nA\tred shirt\nB\tblue\tshirt\nC\tgreen hat\nD\tnever clicked\n"
BEHAVIORS = "userid\tbehaviors\nu1\tA B A\nu2\tC\nu3\tB  A\n"


def small(folder: Path, items: str = ITEMS, behaviors: str = BEHAVIORS, item_file: str = "items.tsv") -> Path:
    folder.mkdir(parents=True)
    (folder / item_file).write_text(items)
    (folder / "behaviors.tsv").write_text(behaviors)
    return folder


def test_filter_warm_items(tmp_path):
    src = small(tmp_path / "src")
    counts = filter_warm_items(src, tmp_path / "out", 2)  # A: 3, B: 2, C: 1, D: 0
    assert counts == {
        "items_kept": 2,
        "items_dropped": 2,
        "users_kept": 2,
        "users_dropped": 1,
        "interactions_kept": 5,
        "interactions_dropped": 1,
    }
    out = files(tmp_path / "out")
    assert out == {
        "behaviors.tsv": b"userid\tbehaviors\nu1\tA B A\nu3\tB A\n",
        "items.tsv": b"itemid\tdescription\nA\tred shirt\nB\tblue\tshirt\n",
    }
    raw = load_dataset(tmp_path / "out")
    assert raw.item_file == "items.tsv" and raw.user_keys == ["u1", "u3"]


def test_filter_threshold_one_keeps_interacted_items_and_explicit_item_file(tmp_path):
    src = small(tmp_path / "src", item_file="catalog.tsv")
    counts = filter_warm_items(src, tmp_path / "out", 1, item_file="catalog.tsv")
    assert (counts["items_kept"], counts["items_dropped"], counts["users_dropped"]) == (3, 1, 0)
    assert sorted(files(tmp_path / "out")) == ["behaviors.tsv", "catalog.tsv"]


def test_filter_copies_every_column_of_a_multi_column_item_file(tmp_path):
    wide = "id\ttitle\tbrand\nA\tred shirt\t\nB\tblue\tAcme\nC\that\tX\nD\tnever\tY\n"
    filter_warm_items(small(tmp_path / "src", items=wide), tmp_path / "out", 2)
    assert files(tmp_path / "out")["items.tsv"] == b"id\ttitle\tbrand\nA\tred shirt\t\nB\tblue\tAcme\n"
    raw = load_dataset(tmp_path / "out", text_template="{title} by {brand}")
    assert raw.item_texts == ["red shirt", "blue by Acme"]


def test_filter_errors(tmp_path):
    src = small(tmp_path / "src")
    with pytest.raises(DataError) as e:
        filter_warm_items(src, tmp_path / "out", 4)
    assert str(e.value) == f"{src.resolve()}: no item has at least 4 interactions"
    with pytest.raises(DataError) as e:
        filter_warm_items(src, src, 2)
    assert str(e.value) == f"{src}: output folder already exists and is not empty"
    bad = small(tmp_path / "bad", behaviors="u\ti\nu1\tA Z\n")
    with pytest.raises(DataError) as e:
        filter_warm_items(bad, tmp_path / "out", 1)
    assert str(e.value) == f"{bad.resolve() / 'behaviors.tsv'}:2: unknown item key 'Z'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "src"]


# ---------------------------------------------------------------- stats


def test_dataset_stats(tmp_path):
    raw = load_dataset(small(tmp_path / "s"))
    s = dataset_stats(raw)
    # lengths 3, 1, 2; popularity A 3, B 2, C 1, D 0
    assert s == {
        "users": 3,
        "items": 4,
        "interactions": 6,
        "items_without_interactions": 1,
        "seq_len_min": 1,
        "seq_len_median": 2.0,
        "seq_len_mean": 2.0,
        "seq_len_p90": pytest.approx(2.8),
        "seq_len_max": 3,
        "item_pop_min": 0,
        "item_pop_median": 1.5,
        "item_pop_mean": 1.5,
        "item_pop_p90": pytest.approx(2.7),
        "item_pop_max": 3,
        "items_lt_20": 4,
        "items_lt_50": 4,
        "items_lt_200": 4,
    }
    assert all(type(v) in (int, float) for k, v in s.items() if "p90" not in k)
