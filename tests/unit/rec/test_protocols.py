"""Evaluation protocols through the real trainer: cold items never reach training, a text tower ranks them, an
ID tower's cold metrics are n/a, and metrics by popularity bucket add up to the overall ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import text_source, text_tower_setup

from tcf.config import Config, load_config
from tcf.data.cold import hold_out_cold
from tcf.data.prepare import prepare
from tcf.data.reader import load_dataset
from tcf.experiment import prepared_data
from tcf.rec.buckets import bucket_metrics, popularity_buckets
from tcf.rec.evaluate import evaluate_ranks, mean_metrics
from tcf.rec.trainer import Trainer
from tcf.util.dist import DistContext

CPU = DistContext(0, 1, torch.device("cpu"))


def _config(dataset, **sections) -> Config:
    data = {"dataset": {"path": str(dataset), "max_seq_len": 8},
            "model": {"embedding_dim": 16, "num_heads": 2},
            "train": {"epochs": 1, "batch_size": 64, "patience": 100}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def cold_data(small_dataset):
    return hold_out_cold(prepare(load_dataset(small_dataset), 5, 8), 0.2, seed=0)


class _Seen:
    """Every item id the item tower is asked for, apart for training and for evaluation."""

    def __init__(self, tower: torch.nn.Module):
        self.train: set[int] = set()
        self.eval: set[int] = set()
        forward = tower.forward

        def spy(ids: torch.Tensor) -> torch.Tensor:
            (self.train if tower.training else self.eval).update(ids.unique().tolist())
            return forward(ids)

        tower.forward = spy


@pytest.mark.parametrize("arch,loss,examples", [
    ("sasrec", "ibce", "prefixes"), ("sasrec", "ibce", "windows"), ("sasrec", "ce", "prefixes"),
    ("sasrec", "bce", "windows"), ("dssm", "ibce", "prefixes"), ("dssm", "ce", "prefixes"), ("dssm", "bce", "prefixes"),
])
def test_no_training_batch_holds_a_cold_item(tmp_path, small_dataset, cold_data, arch, loss, examples):
    """Positives, inputs, in-batch candidates, the full softmax's items and sampled negatives all pass through the
    item tower: in training it never sees a cold id, while ranking covers every item, the cold ones too."""
    cfg = _config(small_dataset, model={"architecture": arch}, train={"loss": loss, "examples": examples},
                  eval={"protocol": "cold", "cold_items": 0.2})
    trainer = Trainer(cfg, cold_data, CPU, tmp_path)
    seen = _Seen(trainer.model.item_tower)
    result = trainer.fit()
    warm_in_training = set(np.unique(cold_data.train_sequences()).tolist()) - {0}
    assert warm_in_training <= seen.train  # the spy saw the batches
    assert max(seen.train) <= cold_data.n_train_items < cold_data.n_items
    if loss == "ce":  # the full softmax spans exactly the warm items
        assert seen.train == set(range(cold_data.n_train_items + 1))
    assert seen.eval == set(range(cold_data.n_items + 1))  # validation ranked against every item
    assert result.valid["hr@10"] > 0
    assert result.test == {"hr@10": None, "ndcg@10": None}  # an ID tower's cold metrics: not applicable


def test_a_text_tower_ranks_cold_items_and_pop_puts_them_last(tmp_path, small_dataset):
    root, config, _ = text_tower_setup(tmp_path, small_dataset)
    _, source = text_source(root, config, unfreeze=0)
    cold = ["eval.protocol=cold", "eval.cold_items=0.2"]
    cfg = load_config(config, [*cold, "text_encoder.unfreeze=0"])[0]
    data = prepared_data(cfg)
    assert data.protocol == "cold" and data.n_cold > 0
    trainer = Trainer(cfg, data, CPU, tmp_path / "text", text=source)
    result = trainer.fit()
    assert set(result.test) == {"hr@10", "ndcg@10"}
    assert all(math.isfinite(v) for v in result.test.values())
    assert 0 < result.test["ndcg@10"] < result.test["hr@10"] <= 1
    ranks = evaluate_ranks(trainer.model, data.eval_split("test"), data.n_items, CPU)
    assert len(ranks) == len(data.test_rows) and int(ranks.max()) <= data.n_items  # real ranks, no misses

    pop = Trainer(load_config(config, [*cold, "model.architecture=pop"])[0], data, CPU, tmp_path / "pop").fit()
    assert pop.test == {"hr@10": 0.0, "ndcg@10": 0.0}  # never seen, so never recommended


def test_bucket_edges_follow_the_sorted_counts_and_keep_ties_together():
    assert popularity_buckets(np.array([9, 0, 1, 5, 0, 3, 1, 2]), 4).tolist() == [4, 1, 2, 4, 1, 3, 2, 3]
    # six users share count 0: one bucket holds them all, the two middle ones stay empty
    assert popularity_buckets(np.array([0, 0, 0, 2, 0, 0, 1, 0]), 4).tolist() == [1, 1, 1, 4, 1, 1, 4, 1]
    assert popularity_buckets(np.array([4, 4, 4]), 3).tolist() == [1, 1, 1]


def test_bucket_metrics_recombine_to_the_overall_metric():
    gen = np.random.default_rng(0)
    ranks = torch.as_tensor(gen.integers(1, 40, size=200))
    counts = gen.integers(0, 6, size=200) * (gen.random(200) < 0.7)  # many zeros: ties across an edge
    buckets = popularity_buckets(counts, 5)
    metrics = bucket_metrics(ranks, buckets, 5, [5, 10])
    assert sum(metrics[f"pop{b}_share"] for b in range(1, 6)) == pytest.approx(1.0)
    assert any(metrics[f"pop{b}_share"] == 0 and metrics[f"pop{b}_hr@10"] is None for b in range(1, 6))
    overall = mean_metrics(ranks, [5, 10])
    assert overall["hr@5"] == pytest.approx(float((ranks <= 5).double().mean()), abs=1e-15)
    for name in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
        combined = sum(metrics[f"pop{b}_share"] * metrics[f"pop{b}_{name}"]
                       for b in range(1, 6) if metrics[f"pop{b}_share"])
        assert combined == pytest.approx(overall[name], abs=1e-12)


@pytest.mark.parametrize("arch", ["pop", "sasrec"])
def test_buckets_of_a_run_add_up_and_leave_its_metrics_alone(tmp_path, small_dataset, arch):
    data = prepare(load_dataset(small_dataset), 5, 8)
    plain = Trainer(_config(small_dataset, model={"architecture": arch}), data, CPU, tmp_path / "a").fit()
    cfg = _config(small_dataset, model={"architecture": arch}, eval={"popularity_buckets": 4, "ks": [5, 10]})
    split = Trainer(cfg, data, CPU, tmp_path / "b").fit()
    assert {k: split.test[k] for k in plain.test} == plain.test  # the overall numbers are the same run's
    shares = [split.test[f"pop{b}_share"] for b in range(1, 5)]
    assert sum(shares) == pytest.approx(1.0) and all(0.15 < s < 0.35 for s in shares)  # equal-frequency
    for name in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
        combined = sum(s * split.test[f"pop{b}_{name}"] for b, s in enumerate(shares, start=1))
        assert combined == pytest.approx(split.test[name], abs=1e-12)
    if arch == "pop":  # popularity recommends the head: the least popular targets are never hit
        assert split.test["pop1_hr@10"] == 0.0 < split.test["pop4_hr@10"]
