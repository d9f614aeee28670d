"""Tokenization once: a real tokenizer (trained with `tokenizers`, saved with save_pretrained) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tcf.lm.tokenize as tk
from tcf.data.reader import load_dataset
from tcf.data.synth import synth_dataset
from tcf.errors import TcfError
from tcf.lm.tiny import train_tokenizer
from tcf.util.artifacts import read_meta


def make_tokenizer_dir(model_dir: Path, texts: list[str], vocab_size: int = 400, pad: bool = True,
                       bos: bool = True) -> Path:
    """A byte-level BPE tokenizer that prepends BOS, as OPT's does, saved the way a model ships it."""
    return train_tokenizer(model_dir, texts, vocab_size=vocab_size, pad=pad, bos=bos)


@pytest.fixture
def raw(tmp_path):
    synth_dataset(tmp_path / "d", users=50, items=40, seed=0)
    return load_dataset(tmp_path / "d")


@pytest.fixture
def model_dir(tmp_path, raw):
    return make_tokenizer_dir(tmp_path / "model", raw.item_texts)


def test_ids_match_the_tokenizer_per_text(raw, model_dir):
    tokenizer = tk.load_tokenizer(model_dir)
    texts = [*raw.item_texts[:5], "UPPER Case kept", "x"]
    keys = [f"k{i}" for i in range(len(texts))]
    table = tk.tokenize_items(tokenizer, keys, texts, max_tokens=6, batch=3)  # several batches
    assert table.ids.dtype == np.int32 and table.lengths.dtype == np.int32
    assert table.ids.shape == (len(texts), 6) and table.pad_id == tokenizer.pad_token_id == 0
    bos = tokenizer.bos_token_id
    for i, text in enumerate(texts):
        full = tokenizer(text)["input_ids"]
        expect = full[:6]
        assert full[0] == bos  # the tokenizer's own special tokens are kept
        n = table.lengths[i]
        assert n == len(expect) >= 1
        assert table.ids[i, :n].tolist() == expect
        assert (table.ids[i, n:] == table.pad_id).all()  # right padding
        assert table.mask()[i].tolist() == [True] * n + [False] * (6 - n)
    # case preserved: lower-casing would change the ids
    lower = tk.tokenize_items(tokenizer, ["a"], ["upper case kept"], max_tokens=6)
    assert lower.ids[0].tolist() != table.ids[5].tolist()
    assert (table.lengths == 6).any() and (table.lengths < 6).any()  # truncation and padding both exercised


def test_rows_by_key(raw, model_dir):
    table = tk.tokenize_items(tk.load_tokenizer(model_dir), raw.item_keys, raw.item_texts, max_tokens=8)
    rows = table.rows([raw.item_keys[7], raw.item_keys[0], raw.item_keys[7]])
    assert rows.tolist() == [7, 0, 7]
    with pytest.raises(TcfError, match="'nope'"):
        table.rows([raw.item_keys[0], "nope"])
    assert table.rows([]).tolist() == []


def test_missing_pad_falls_back_to_eos(tmp_path, raw):
    model_dir = make_tokenizer_dir(tmp_path / "m", raw.item_texts, pad=False)
    tokenizer = tk.load_tokenizer(model_dir)
    assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    table = tk.tokenize_items(tokenizer, ["a"], ["hi"], max_tokens=5)
    assert table.pad_id == tokenizer.eos_token_id


def test_text_without_tokens_gets_one_unk(tmp_path, raw):
    tokenizer = tk.load_tokenizer(make_tokenizer_dir(tmp_path / "m", raw.item_texts, bos=False))
    assert tokenizer("")["input_ids"] == []
    table = tk.tokenize_items(tokenizer, ["a", "b"], ["", "hi"], max_tokens=4)
    assert table.lengths.tolist() == [1, len(tokenizer("hi")["input_ids"])]
    assert table.ids[0].tolist() == [tokenizer.unk_token_id] + [table.pad_id] * 3


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "opt"}')
    for call in (tk.load_tokenizer, tk.tokenizer_fingerprint):
        with pytest.raises(TcfError, match="no tokenizer files") as err:
            call(tmp_path / "empty")
        assert str(tmp_path / "empty") in str(err.value)
    with pytest.raises(TcfError, match="not found"):
        tk.load_tokenizer(tmp_path / "missing")


def test_artifact_built_once_and_reused(tmp_path, raw, model_dir, monkeypatch):
    root = tmp_path / "artifacts"
    table, path, created = tk.token_table(raw, model_dir, 12, root)
    assert created and path.parent == root / "tokens"
    assert sorted(p.name for p in path.iterdir()) == ["ids.npy", "items.json", "lengths.npy", "meta.json"]
    assert json.loads((path / "items.json").read_text()) == raw.item_keys
    meta = read_meta(path)
    assert meta["n_items"] == 40 and meta["max_tokens"] == 12 and meta["pad_id"] == 0
    assert meta["max_length"] == int(table.lengths.max()) and meta["key"]["format"] == tk.FORMAT_VERSION
    assert isinstance(table.ids, np.memmap) and not table.ids.flags.writeable
    fresh = tk.tokenize_items(tk.load_tokenizer(model_dir), raw.item_keys, raw.item_texts, 12)
    assert np.array_equal(table.ids, fresh.ids) and np.array_equal(table.lengths, fresh.lengths)

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer must not be loaded or called for a stored table")

    monkeypatch.setattr(tk, "load_tokenizer", no_tokenizer)
    monkeypatch.setattr(tk, "tokenize_items", no_tokenizer)
    again, path2, created2 = tk.token_table(raw, model_dir, 12, root)
    assert not created2 and path2 == path
    assert again.item_keys == raw.item_keys and np.array_equal(again.ids, table.ids)
    assert again.rows([raw.item_keys[3]]).tolist() == [3]


def test_key_changes_with_max_tokens_and_tokenizer_files(tmp_path, raw, model_dir):
    root = tmp_path / "artifacts"
    _, base, _ = tk.token_table(raw, model_dir, 12, root)
    _, other_len, created = tk.token_table(raw, model_dir, 13, root)
    assert created and other_len != base

    fp = tk.tokenizer_fingerprint(model_dir)
    config = model_dir / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["model_max_length"] = 512
    config.write_text(json.dumps(data))
    assert tk.tokenizer_fingerprint(model_dir) != fp
    _, other_tok, created = tk.token_table(raw, model_dir, 12, root)
    assert created and other_tok != base

    retrained = make_tokenizer_dir(tmp_path / "model2", raw.item_texts, vocab_size=300)
    assert tk.tokenizer_fingerprint(retrained) not in (fp, tk.tokenizer_fingerprint(model_dir))


def test_key_follows_items_not_behaviors(tmp_path, raw, model_dir):
    root = tmp_path / "artifacts"
    _, base, _ = tk.token_table(raw, model_dir, 12, root)
    behaviors = raw.path / "behaviors.tsv"
    lines = behaviors.read_text().splitlines(keepends=True)
    behaviors.write_text("".join(lines[:-1]))  # a new split of the same items
    _, same, created = tk.token_table(load_dataset(raw.path), model_dir, 12, root)
    assert not created and same == base
    items = raw.path / raw.item_file
    items.write_text(items.read_text().replace(raw.item_texts[0], raw.item_texts[0] + " more", 1))
    _, other, created = tk.token_table(load_dataset(raw.path), model_dir, 12, root)
    assert created and other != base


def items_beside(folder: Path, raw, header: str, rows: list[str]) -> Path:
    """A dataset with ``raw``'s behaviors and the given item file."""
    folder.mkdir()
    (folder / "items.tsv").write_text(header + "\n" + "".join(f"{row}\n" for row in rows))
    (folder / "behaviors.tsv").write_bytes((raw.path / "behaviors.tsv").read_bytes())
    return folder


def test_another_template_never_reuses_tokens(tmp_path, raw, model_dir):
    """The key is over the texts a template made: two templates, two artifacts with other ids; the same texts
    however they were made (a template, or the two-column file that holds them) share one."""
    split = [(k, t.split()) for k, t in zip(raw.item_keys, raw.item_texts, strict=True)]
    folder = items_beside(tmp_path / "wide", raw, "item_id\ttitle\trest",  # title: the first three words
                          [f"{k}\t{' '.join(w[:3])}\t{' '.join(w[3:])}" for k, w in split])
    root = tmp_path / "artifacts"
    a = load_dataset(folder, text_template="{title}: {rest}")
    b = load_dataset(folder, text_template="{rest} ({title})")
    table_a, path_a, created_a = tk.token_table(a, model_dir, 12, root)
    table_b, path_b, created_b = tk.token_table(b, model_dir, 12, root)
    assert created_a and created_b and path_a != path_b
    assert not np.array_equal(np.asarray(table_a.ids), np.asarray(table_b.ids))
    fresh = tk.tokenize_items(tk.load_tokenizer(model_dir), b.item_keys, b.item_texts, 12)
    assert np.array_equal(np.asarray(table_b.ids), fresh.ids)  # b's artifact holds b's texts, not a's
    assert read_meta(path_b)["built_from"]["text_template"] == "{rest} ({title})"
    _, again, created = tk.token_table(load_dataset(folder, text_template="{title}: {rest}"), model_dir, 12, root)
    assert not created and again == path_a

    two = items_beside(tmp_path / "two", raw, "id\ttext",
                       [f"{k}\t{t}" for k, t in zip(a.item_keys, a.item_texts, strict=True)])
    _, same, created = tk.token_table(load_dataset(two), model_dir, 12, root)
    assert not created and same == path_a


def test_crash_during_build_leaves_no_artifact(tmp_path, raw, model_dir, monkeypatch):
    root = tmp_path / "artifacts"
    real_save = np.save
    calls = []

    def save_then_crash(file, arr, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed half-way through writing the artifact
        real_save(file, arr, **kwargs)

    monkeypatch.setattr(tk.np, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tk.token_table(raw, model_dir, 12, root)
    assert list((root / "tokens").iterdir()) == []  # no folder, complete or temporary
    monkeypatch.setattr(tk.np, "save", real_save)
    _, _, created = tk.token_table(raw, model_dir, 12, root)
    assert created


def test_bad_max_tokens(raw, model_dir, tmp_path):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TcfError, match="max_tokens"):
            tk.token_table(raw, model_dir, bad, tmp_path / "a")
