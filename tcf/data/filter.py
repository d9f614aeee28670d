"""Warm-item variants (the paper's ``X_20 / X_50 / X_200``), which the reference code never built."""

from __future__ import annotations

from collections import Counter
from itertools import chain
from pathlib import Path

from tcf.data.output import check_output_folder, dataset_folder, write_tsv
from tcf.data.reader import BEHAVIORS_FILE, load_dataset, read_header
from tcf.errors import DataError


def filter_warm_items(src: Path, out: Path, min_item_interactions: int, item_file: str | None = None) -> dict:
    """Copy the dataset at ``src`` to ``out`` without items that have < N interactions.

    Interactions are counted once over all behaviors (one pass, as the published variants describe);
    those items leave the item file and every sequence, and users left with no item are dropped.
    Headers, item rows (every column) and the item-file name are kept, so the output is a dataset of the same
    layout.

    >>> filter_warm_items(Path("data/mind"), Path("data/mind_20"), 20)   # doctest: +SKIP
    {'items_kept': 1200, 'items_dropped': 31000, 'users_kept': ..., ...}
    """
    src, out = Path(src), Path(out)
    check_output_folder(out)  # fail before reading a big dataset
    raw = load_dataset(src, item_file=item_file, raw_rows=True)  # item rows copied whole, all their columns
    counts = Counter(chain.from_iterable(raw.sequences))
    warm = {key for key in raw.item_keys if counts[key] >= min_item_interactions}

    if not warm:
        raise DataError(raw.path, None, f"no item has at least {min_item_interactions} interactions")

    users: list[tuple[str, str]] = []
    kept_interactions = 0
    for user, seq in zip(raw.user_keys, raw.sequences, strict=True):
        kept = [key for key in seq if key in warm]
        if kept:
            users.append((user, " ".join(kept)))
            kept_interactions += len(kept)
    items = [(k, t) for k, t in zip(raw.item_keys, raw.item_texts, strict=True) if k in warm]

    with dataset_folder(out) as tmp:
        write_tsv(tmp / raw.item_file, read_header(raw.path / raw.item_file), items)
        write_tsv(tmp / BEHAVIORS_FILE, read_header(raw.path / BEHAVIORS_FILE), users)
    total = sum(counts.values())
    return {
        "items_kept": len(items),
        "items_dropped": len(raw.item_keys) - len(items),
        "users_kept": len(users),
        "users_dropped": len(raw.user_keys) - len(users),
        "interactions_kept": kept_interactions,
        "interactions_dropped": total - kept_interactions,
    }
