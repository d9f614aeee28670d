"""The embedded demo: a synthetic MIND-like dataset and pop / ID-SASRec / ID-DSSM on it.

``configs/demo.yaml`` is the same experiment as a file (a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path

DEMO_DATASET = "data/demo"
DEMO_SYNTH = {"users": 2000, "items": 1000, "seed": 0}

DEMO_CONFIG: dict = {
    "seed": 42,
    "dataset": {"path": DEMO_DATASET},
    "model": {"item_tower": "id", "embedding_dim": 64, "num_blocks": 2, "num_heads": 2, "dropout": 0.1},
    "train": {"batch_size": 128, "epochs": 40, "lr": 0.001, "weight_decay": 0.1, "patience": 3},
    "eval": {"ks": [10, 20]},
    "runs": [
        {"model.architecture": "pop"},
        {"model.architecture": "sasrec"},
        # DSSM trains on (user, item) pairs, ~12x more rows than users: a larger batch keeps epochs short
        {"model.architecture": "dssm", "train.batch_size": 1024, "train.lr": 0.003},
    ],
}


def ensure_demo_dataset(path: str | Path = DEMO_DATASET) -> bool:
    """Synthesize the demo dataset if it is missing; returns True when it was created."""
    from engine.data.synth import synth_dataset

    p = Path(path)
    if (p / "behaviors.tsv").exists():
        return False
    synth_dataset(p, **DEMO_SYNTH)
    return True
