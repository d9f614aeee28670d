"""Training steps replayed from CUDA graphs train the model the eager steps train, and resume alike."""

from pathlib import Path

import pytest
import torch

from tcf.config import Config
from tcf.experiment import prepared_data
from tcf.rec.trainer import Trainer
from tcf.util.dist import DistContext

CUDA = DistContext(0, 1, torch.device("cuda"))


def config(dataset: Path, **train) -> Config:
    arch = train.pop("architecture", "sasrec")
    return Config.model_validate({
        "seed": 5, "dataset": {"path": str(dataset), "max_seq_len": 10},
        "model": {"architecture": arch, "embedding_dim": 32, "dropout": train.pop("dropout", 0.0)},
        "train": {"epochs": 3, "batch_size": 24, "amp": "off", "patience": 100, **train},
    })


def fit(cfg: Config, folder: Path, resume: bool = False) -> tuple[Trainer, object]:
    trainer = Trainer(cfg, prepared_data(cfg), CUDA, folder, identity={"run": "gpu-test"})
    folder.mkdir(parents=True, exist_ok=True)
    return trainer, trainer.fit(resume=resume)


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().float().cpu() for p in trainer.model.parameters()]


@pytest.mark.parametrize(("architecture", "loss", "examples"), [
    ("sasrec", "ibce", "windows"), ("sasrec", "ce", "windows"), ("sasrec", "ibce", "prefixes"),
    ("dssm", "ibce", "windows"),
])
def test_graphed_steps_train_what_eager_steps_train(small_dataset, tmp_path, architecture, loss, examples):
    graphed_cfg = config(small_dataset, architecture=architecture, loss=loss, examples=examples)
    eager_cfg = config(small_dataset, architecture=architecture, loss=loss, examples=examples, cuda_graph=False)
    g, g_result = fit(graphed_cfg, tmp_path / "graphed")
    e, e_result = fit(eager_cfg, tmp_path / "eager")
    assert g.graphed is not None and g.graphed.graph is not None  # it did replay a graph
    assert e.graphed is None
    for a, b in zip(params(g), params(e), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)  # scatter-add order differs between runs
    assert g_result.test["hr@10"] == pytest.approx(e_result.test["hr@10"], abs=0.02)


def test_graphed_run_resumed_after_an_epoch_matches_an_uninterrupted_one(small_dataset, tmp_path):
    cfg = config(small_dataset, dropout=0.2, amp="bf16")  # dropout: the graph's RNG offsets must line up
    whole, whole_result = fit(cfg, tmp_path / "whole")
    short = cfg.model_copy(deep=True)
    short.train.epochs = 1
    fit(short, tmp_path / "parts")
    # the same run continued (its identity and config hash ignore epochs here: only the trainer reads them)
    resumed, resumed_result = fit(cfg, tmp_path / "parts", resume=True)
    for a, b in zip(params(whole), params(resumed), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
    assert resumed_result.best_epoch is not None
