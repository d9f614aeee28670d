"""Tokenization once: item token ids and lengths, computed once per (items, tokenizer, max tokens) and reused.

Pre-inference and training read the same artifact (method §9 item 2), so the two stages can never
disagree on casing, special tokens or length. Rows are keyed by item key, never by file position,
and there is no "[PAD]" row 0 (method §2.2 step 2): padding is a property of the batch, not an item.

    table, path, created = token_table(raw, "models/opt-125m", max_tokens=30, artifacts_root="artifacts")
    rows = table.rows(["N12", "N7"])
    ids, mask = table.ids[rows], table.mask()[rows]

Artifact ``artifacts/tokens/<hash>/``: ``ids.npy`` int32 [N, T] right-padded with ``pad_id``,
``lengths.npy`` int32 [N] (real tokens, >= 1), ``items.json`` (item keys in row order), ``meta.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tcf.data.reader import RawDataset
from tcf.errors import TcfError
from tcf.util.artifacts import build_artifact, find_artifact, read_meta

KIND = "tokens"
# Bump when the packing, the tokenizer set-up in load_tokenizer or the file layout changes.
FORMAT_VERSION = 1

# Files that carry a vocabulary: a directory needs at least one of them to hold a tokenizer.
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "sentencepiece.model",
    "tokenizer.model",
)
# Files that change how the vocabulary is applied (special tokens, added tokens, normalisation flags).
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TOKENIZER_FILES = VOCAB_FILES + CONFIG_FILES


def _tokenizer_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        raise TcfError(f"model directory not found: {model_dir}")
    files = [model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not any(f.name in VOCAB_FILES for f in files):
        raise TcfError(f"{model_dir}: no tokenizer files (expected one of {', '.join(VOCAB_FILES)})")
    return files


def load_tokenizer(model_dir: str | Path):
    """The model's own tokenizer (``AutoTokenizer``, local files only), padding and truncating on the right.

    Right truncation keeps the start of an item's text (a title's first words), as the method does
    (§2.2 step 5); right padding is what ``TokenTable`` stores. A tokenizer without a pad token
    (GPT-2, Llama) gets its eos token as pad, else its unk token: deterministic, and harmless because
    padded positions are masked everywhere. A tokenizer with none of the three is an error.
    """
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is really needed

    model_dir = Path(model_dir)
    _tokenizer_files(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TcfError(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token_id is not None else tokenizer.unk_token
        if fallback is None or tokenizer.convert_tokens_to_ids(fallback) is None:
            raise TcfError(f"{model_dir}: the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """sha256 hex over the tokenizer files' bytes (each framed by name and size) and the model type.

    ``model_type`` from config.json is included because AutoTokenizer falls back on it to choose the
    tokenizer class; the rest of config.json (weights, dtype) does not change the token ids.
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for file in _tokenizer_files(model_dir):
        data = file.read_bytes()
        h.update(f"{file.name}\0{len(data)}\0".encode())
        h.update(data)
    config = model_dir / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise TcfError(f"{config}: not a JSON object ({exc})") from exc
        h.update(f"config.json:model_type\0{model_type}\0".encode())
    return h.hexdigest()


def items_fingerprint(item_keys: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 hex over the (key, text) pairs in row order: exactly what a token table is computed from."""
    h = hashlib.sha256()
    for key, text in zip(item_keys, texts, strict=True):
        k, t = key.encode(), text.encode()
        h.update(f"{len(k)}:{len(t)}\0".encode())
        h.update(k)
        h.update(t)
    return h.hexdigest()


@dataclass
class TokenTable:
    """Token ids of every item, one row per item key, right-padded to ``max_tokens`` columns.

    ``ids`` may be a read-only memory map (a table loaded from an artifact); index it with ``rows``.
    """

    item_keys: list[str]
    ids: np.ndarray  # int32 [N, T], pad_id after the real tokens
    lengths: np.ndarray  # int32 [N], real tokens per row, >= 1
    pad_id: int
    max_tokens: int
    _row_of: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.item_keys)

    def mask(self) -> np.ndarray:
        """bool [N, T]: True on real tokens."""
        return np.arange(self.ids.shape[1])[None, :] < self.lengths[:, None]

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Row indices (int64) of the given item keys; TcfError naming the first unknown key."""
        if self._row_of is None:
            self._row_of = {k: i for i, k in enumerate(self.item_keys)}
        row_of = self._row_of
        try:
            return np.fromiter((row_of[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as exc:
            raise TcfError(f"item key {exc.args[0]!r} is not in the token table ({len(self)} items)") from None


def tokenize_items(
    tokenizer, item_keys: Sequence[str], texts: Sequence[str], max_tokens: int, batch: int = 10_000
) -> TokenTable:
    """Tokenize item texts exactly as given (no lower-casing: method ODD-10) into a ``TokenTable``.

    The tokenizer adds its own special tokens (OPT's BOS, BERT's [CLS]/[SEP], T5's </s>) and truncates
    to ``max_tokens``. Texts go through the (fast, batched) tokenizer ``batch`` at a time and are packed
    into the arrays without a Python loop per token. A text that yields no token at all (possible only
    with a tokenizer that adds no special tokens) becomes one unk token (pad when there is no unk), so
    every row has at least one real token to pool.
    """
    if len(item_keys) != len(texts):
        raise TcfError(f"{len(item_keys)} item keys but {len(texts)} texts")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TcfError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if batch < 1:
        raise TcfError(f"batch must be positive, got {batch}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise TcfError("the tokenizer has no pad token (load it with load_tokenizer)")
    empty_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad_id

    n = len(texts)
    ids = np.full((n, max_tokens), pad_id, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    for start in range(0, n, batch):
        chunk = list(texts[start:start + batch])
        encoded = tokenizer(
            chunk, add_special_tokens=True, truncation=True, max_length=max_tokens, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        lens = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        if lens.max(initial=0) > max_tokens:  # a tokenizer that ignored truncation must not go unnoticed
            raise TcfError(f"the tokenizer returned {int(lens.max())} tokens with max_length={max_tokens}")
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lens.sum()))
        row = np.repeat(np.arange(start, start + len(encoded)), lens)
        col = np.arange(flat.size) - np.repeat(np.cumsum(lens) - lens, lens)
        ids[row, col] = flat
        lengths[start:start + len(encoded)] = lens
    empty = lengths == 0
    ids[empty, 0] = empty_id
    lengths[empty] = 1
    return TokenTable(list(item_keys), ids, lengths, int(pad_id), max_tokens)


def token_key(raw: RawDataset, model_dir: str | Path, max_tokens: int) -> dict[str, Any]:
    """Everything that determines a token table; its hash names the artifact. A tokenizer from the Hugging Face
    cache adds its repo and commit: a new revision never reuses an old revision's tokens."""
    from tcf.lm.hub import hub_origin  # (hub.py reads this module's file names)

    origin = hub_origin(model_dir)
    return {
        "items": items_fingerprint(raw.item_keys, raw.item_texts),
        "tokenizer": tokenizer_fingerprint(model_dir),
        "max_tokens": max_tokens,
        "format": FORMAT_VERSION,
        **(origin.record() if origin else {}),
    }


def load_token_table(path: str | Path) -> TokenTable:
    """A token table from its artifact folder; ``ids`` is memory-mapped read-only."""
    path = Path(path)
    try:
        meta = read_meta(path)
        item_keys = json.loads((path / "items.json").read_text())
        ids = np.load(path / "ids.npy", mmap_mode="r", allow_pickle=False)
        lengths = np.load(path / "lengths.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TcfError(f"{path}: unreadable token artifact ({exc})") from exc
    n = len(item_keys)
    if ids.shape != (n, meta["max_tokens"]) or lengths.shape != (n,):
        raise TcfError(f"{path}: token artifact shapes disagree (ids {ids.shape}, lengths {lengths.shape}, {n} items)")
    return TokenTable(item_keys, ids, lengths, int(meta["pad_id"]), int(meta["max_tokens"]))


def token_table(
    raw: RawDataset, model_dir: str | Path, max_tokens: int, artifacts_root: str | Path
) -> tuple[TokenTable, Path, bool]:
    """The dataset's token table for this tokenizer and length: found, or built once and stored.

    Returns ``(table, artifact path, created)``. The key holds a hash of the item keys and texts
    actually read (not the behaviors file, so a new split of the same items reuses the tokens, and a
    lenient read that skipped items gets its own table; the texts are those ``dataset.text_template``
    made, so a template that makes other texts never reuses these tokens, nor the latents keyed by
    them), the tokenizer files' hash, max_tokens and the format version. The tokenizer is loaded only
    when the table has to be built.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TcfError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    key = token_key(raw, model_dir, max_tokens)
    path = find_artifact(artifacts_root, KIND, key)
    created = path is None
    if path is None:
        table = tokenize_items(load_tokenizer(model_dir), raw.item_keys, raw.item_texts, max_tokens)
        lengths = table.lengths
        extra = {
            "n_items": len(table),
            "max_tokens": max_tokens,
            "pad_id": table.pad_id,
            "mean_length": round(float(lengths.mean()), 4) if len(table) else 0.0,
            "max_length": int(lengths.max(initial=0)),
            "items_at_max_tokens": int((lengths == max_tokens).sum()),  # truncated, or exactly at the limit
            "built_from": {"dataset": str(raw.path), "item_file": raw.item_file, "model_dir": str(model_dir),
                           "text_template": raw.text_template},
        }
        with build_artifact(artifacts_root, KIND, key, extra=extra) as tmp:
            np.save(tmp / "ids.npy", table.ids, allow_pickle=False)
            np.save(tmp / "lengths.npy", table.lengths, allow_pickle=False)
            (tmp / "items.json").write_text(json.dumps(table.item_keys, ensure_ascii=False))
        path = find_artifact(artifacts_root, KIND, key)
        if path is None:  # build_artifact returned normally, so this is a bug, not user input
            raise RuntimeError(f"token artifact missing after build under {artifacts_root}")
    return load_token_table(path), path, created
