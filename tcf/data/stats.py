"""Summary numbers of a dataset: what a user checks before spending GPU hours on it."""

from __future__ import annotations

from itertools import chain

import numpy as np

from tcf.data.reader import RawDataset

WARM_THRESHOLDS = (20, 50, 200)


def _summary(prefix: str, values: np.ndarray) -> dict[str, float | int]:
    if values.size == 0:
        return {f"{prefix}_{k}": 0 for k in ("min", "median", "mean", "p90", "max")}
    return {
        f"{prefix}_min": int(values.min()),
        f"{prefix}_median": float(np.median(values)),
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_p90": float(np.percentile(values, 90)),
        f"{prefix}_max": int(values.max()),
    }


def dataset_stats(raw: RawDataset) -> dict:
    """Flat dict of counts and distributions (JSON-ready Python numbers).

    Keys: users, items, interactions, items_without_interactions, seq_len_{min,median,mean,p90,max},
    item_pop_{min,median,mean,p90,max} (over every item of the item file, counted over all behaviors),
    items_lt_{20,50,200} (how many items the paper's warm-item filters would remove).
    """
    lengths = np.fromiter(map(len, raw.sequences), dtype=np.int64, count=len(raw.sequences))
    index = {key: i for i, key in enumerate(raw.item_keys)}
    flat = np.fromiter(
        map(index.__getitem__, chain.from_iterable(raw.sequences)), dtype=np.int64, count=int(lengths.sum())
    )
    pop = np.bincount(flat, minlength=len(raw.item_keys))
    out: dict = {
        "users": len(raw.user_keys),
        "items": len(raw.item_keys),
        "interactions": int(lengths.sum()),
        "items_without_interactions": int((pop == 0).sum()),
    }
    out.update(_summary("seq_len", lengths))
    out.update(_summary("item_pop", pop))
    for t in WARM_THRESHOLDS:
        out[f"items_lt_{t}"] = int((pop < t).sum())
    return out
