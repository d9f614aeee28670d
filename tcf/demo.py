"""The embedded demo: a synthetic MIND-like dataset, a tiny text encoder, and the paper's comparison.

Runs pop, ID-SASRec, ID-DSSM, frozen-text SASRec and top-1-fine-tuned SASRec. The text encoder is a
small random-weight OPT with a tokenizer trained on the demo's item texts, saved like any local model
(``tcf.lm.tiny``), so the whole text pipeline — tokenize, block-wise pre-inference, text towers —
runs on a laptop. ``configs/demo.yaml`` is the same experiment as a file (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

DEMO_DATASET = "data/demo"
DEMO_ENCODER = "data/demo-opt"
DEMO_SYNTH = {"users": 2000, "items": 1000, "seed": 0}
DEMO_ENCODER_SHAPE = {"hidden": 64, "n_blocks": 2, "vocab_size": 2000}  # whole words: titles fit 16 tokens

# text towers learn per step, and a step's in-batch softmax costs batch^2: the paper's batch of 64 with
# 16 epochs keeps the demo under 3 minutes on 2 CPU cores
_TEXT = {"model.architecture": "sasrec", "model.item_tower": "text", "train.batch_size": 64, "train.epochs": 16}

DEMO_CONFIG: dict = {
    "seed": 42,
    "dataset": {"path": DEMO_DATASET},
    "model": {"item_tower": "id", "embedding_dim": 64, "num_blocks": 2, "num_heads": 2, "dropout": 0.1},
    # windows and raw early stopping: a tour, so time comes first. The defaults (prefixes, a smoothed stop)
    # score higher but do ~L times the work per epoch, minutes on a laptop CPU (bench/RESULTS.md)
    "train": {"batch_size": 128, "epochs": 40, "lr": 0.001, "weight_decay": 0.1, "patience": 3,
              "examples": "windows", "stop_smoothing": 1, "text_lr": 0.003},
    "eval": {"ks": [10, 20]},
    "text_encoder": {"model": DEMO_ENCODER, "max_tokens": 16, "latent_dtype": "fp32"},
    "runs": [
        {"model.architecture": "pop"},
        # lr 0.003: the best epoch comes at 12 instead of 26, for 0.25 HR@10 points less
        {"model.architecture": "sasrec", "train.lr": 0.003},
        # DSSM trains on (user, item) pairs, ~12x more rows than users: a larger batch keeps epochs short
        {"model.architecture": "dssm", "train.batch_size": 1024, "train.lr": 0.003},
        {**_TEXT, "text_encoder.unfreeze": 0},
        {**_TEXT, "text_encoder.unfreeze": 1},
    ],
}


def demo_configs(overrides: list[str] | tuple[str, ...] = (), say: Callable[[str], None] = print) -> list:
    """The demo's configs (with ``-S`` overrides), its dataset and text encoder built if missing."""
    from tcf.config import load_config

    configs = load_config(None, overrides, base=dict(DEMO_CONFIG))
    data_path = configs[0].dataset.path
    if ensure_demo_dataset(data_path):
        say(f"synthesized the demo dataset in {data_path}")
    for model in sorted({c.text_encoder.model for c in configs if c.text_encoder and c.trains_text_tower}):
        if ensure_demo_encoder(model, data_path):
            say(f"built the demo text encoder (tiny random-weight OPT) in {model}")
    return configs


def ensure_demo_dataset(path: str | Path = DEMO_DATASET) -> bool:
    """Synthesize the demo dataset if it is missing; returns True when it was created."""
    from tcf.data.synth import synth_dataset

    p = Path(path)
    if (p / "behaviors.tsv").exists():
        return False
    synth_dataset(p, **DEMO_SYNTH)
    return True


def ensure_demo_encoder(path: str | Path = DEMO_ENCODER, dataset: str | Path = DEMO_DATASET) -> bool:
    """Build the demo's tiny OPT (tokenizer trained on the dataset's texts) if missing; True when built."""
    from tcf.data.reader import load_dataset
    from tcf.lm.tiny import build_tiny_opt

    p = Path(path)
    if (p / "config.json").exists():
        return False
    build_tiny_opt(p, load_dataset(dataset).item_texts, **DEMO_ENCODER_SHAPE)
    return True
