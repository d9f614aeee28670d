import math

import numpy as np
import pytest
import torch

from tcf.rec.metrics import full_ranking_ranks, rank_metrics
from tcf.rec.pop import Popularity


def brute_force_rank(scores: list[float], target: int, history: list[int]) -> int:
    """Reference by argsort: drop item 0 and the history, sort descending with the target first
    among equal scores (the rule: ties favour the target); a target in the history is a miss."""
    n_cols = len(scores)
    masked = set(history) | {0}
    if target in masked:
        return n_cols
    cand = np.array([i for i in range(n_cols) if i not in masked])
    vals = np.array([scores[i] for i in cand])
    order = np.lexsort((cand != target, -vals))  # primary: score desc; secondary: target first
    return int(np.nonzero(cand[order] == target)[0][0]) + 1


def random_case(seed: int, b: int = 64, n_items: int = 40, h: int = 12):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (b, n_items + 1), generator=g).float()   # many ties
    targets = torch.randint(1, n_items + 1, (b,), generator=g)
    history = torch.randint(0, n_items + 1, (b, h), generator=g)
    n_pad = torch.randint(0, h + 1, (b,), generator=g)
    history[torch.arange(h)[None, :] < n_pad[:, None]] = 0                 # left padding
    in_hist = torch.rand(b, generator=g) < 0.3                            # repeat consumption
    history[in_hist, -1] = targets[in_hist]
    return scores, targets, history


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_brute_force_with_ties_and_history(seed):
    scores, targets, history = random_case(seed)
    before = scores.clone()
    ranks = full_ranking_ranks(scores, targets, history)
    assert ranks.dtype == torch.long
    expected = [brute_force_rank(scores[i].tolist(), int(targets[i]), history[i].tolist())
                for i in range(len(targets))]
    assert ranks.tolist() == expected
    assert torch.equal(scores, before)  # input left untouched
    in_hist = (history == targets[:, None]).any(1)
    assert in_hist.any() and (ranks[in_hist] == scores.shape[1]).all()
    assert (ranks[~in_hist] <= scores.shape[1] - 1).all()


def test_ranks_bf16_scores_are_compared_in_fp32():
    scores, targets, history = random_case(3)
    ranks = full_ranking_ranks(scores.to(torch.bfloat16), targets, history)
    assert torch.equal(ranks, full_ranking_ranks(scores, targets, history))


def test_item_zero_never_outranks_and_ties_favour_target():
    scores = torch.tensor([[9.0, 1.0, 2.0, 2.0, 3.0]])
    hist = torch.tensor([[0, 4]])
    # item 0 (9.0) and item 4 (history) masked; item 3 ties with target 2 -> rank 1
    assert full_ranking_ranks(scores, torch.tensor([2]), hist).tolist() == [1]
    assert full_ranking_ranks(scores, torch.tensor([1]), hist).tolist() == [3]


def test_nan_target_is_a_miss():
    scores = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])
    ranks = full_ranking_ranks(scores, torch.tensor([1]), torch.zeros(1, 1, dtype=torch.long))
    assert ranks.tolist() == [4]


def test_rank_metrics_values():
    ranks = torch.tensor([1, 2, 10, 11, 51])
    m = rank_metrics(ranks, [1, 10])
    assert set(m) == {"hr@1", "ndcg@1", "hr@10", "ndcg@10"}
    assert m["hr@1"].tolist() == [1, 0, 0, 0, 0]
    assert m["hr@10"].tolist() == [1, 1, 1, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0]
    assert m["ndcg@10"].tolist() == pytest.approx(expected, rel=1e-6)
    assert m["ndcg@1"].tolist() == [1, 0, 0, 0, 0]


def test_popularity_order_and_tie_break():
    counts = np.array([0, 5, 2, 5, 0, 7])
    s = Popularity(counts).item_scores()
    assert s.dtype == torch.float32 and s.shape == (6,)
    # best first: 5 (7), then 1 and 3 (5, id ascending), 2, 4; padding last
    assert torch.argsort(s, descending=True).tolist() == [5, 1, 3, 2, 4, 0]


def test_popularity_scores_distinct_and_rank_consistently():
    rng = np.random.default_rng(0)
    counts = np.concatenate([[0], rng.integers(0, 4, size=300)])
    s = Popularity(counts).item_scores()
    assert len(set(s.tolist())) == 301
    order = torch.argsort(s[1:], descending=True) + 1
    pairs = list(zip(counts[order.numpy()].tolist(), order.tolist(), strict=True))
    assert pairs == sorted(pairs, key=lambda p: (-p[0], p[1]))
    # the most popular item not in the history is ranked first
    top = int(order[0])
    ranks = full_ranking_ranks(s[None], torch.tensor([top]), torch.zeros(1, 1, dtype=torch.long))
    assert ranks.tolist() == [1]


def test_nan_of_another_item_counts_as_higher_and_duplicate_history_is_taken_out_once():
    scores = torch.tensor([[5.0, 1.0, float("nan"), 0.5, 3.0, 2.0]])
    history = torch.tensor([[0, 4, 4, 0]])  # item 4 twice: it must not be subtracted twice
    # competing: items 2 (NaN: higher), 3, 5 (2.0 > 1.0); item 0 (5.0) and item 4 (history) do not
    assert full_ranking_ranks(scores, torch.tensor([1]), history).tolist() == [3]
