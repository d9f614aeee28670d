"""The static-shape losses a CUDA graph replays are the eager losses: same value, same gradients, padding
rows weigh nothing; and prefixes are the windows' next-item examples, right-aligned."""

import numpy as np
import pytest
import torch

from tcf.rec.batches import prefixes_of
from tcf.rec.dssm import DSSM
from tcf.rec.losses import log_popularity
from tcf.rec.objective import DSSMObjective, SASRecObjective
from tcf.rec.sasrec import SASRec
from tcf.rec.towers import IDTower
from tcf.util.dist import DistContext

N_ITEMS, DIM, L = 40, 16, 6
CPU = DistContext(0, 1, torch.device("cpu"))


def windows(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (b, L + 1), generator=g)
    n_real = torch.randint(2, L + 2, (b,), generator=g)
    seq[torch.arange(L + 1)[None, :] < (L + 1 - n_real)[:, None]] = 0
    return seq


def log_pop() -> torch.Tensor:
    return log_popularity(np.r_[0, np.arange(1, N_ITEMS + 1)])


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def both(objective: torch.nn.Module, eager, static) -> None:
    """Run both forms from the same RNG state (dropout 0 anyway) and compare loss, count and gradients."""
    objective.zero_grad()
    loss_a, n_a = eager()
    loss_a.backward()
    g_a = grads(objective)
    objective.zero_grad()
    loss_b, n_b = static()
    loss_b.backward()
    g_b = grads(objective)
    assert float(n_a) == float(n_b) > 0
    assert float(loss_b.detach()) == pytest.approx(float(loss_a.detach()), rel=1e-5)
    assert len(g_a) == len(g_b) > 0
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "ibce"])
def test_sasrec_windows_static_loss_is_the_eager_loss_and_ignores_empty_rows(loss):
    torch.manual_seed(0)
    model = SASRec(IDTower(N_ITEMS, DIM), DIM, L, dropout=0.0)
    objective = SASRecObjective(model, log_pop(), loss, N_ITEMS)
    seq = windows(5, 1)
    padded = torch.cat([seq, torch.zeros(2, L + 1, dtype=torch.long)])  # two padding rows, as a short batch
    gen = torch.Generator().manual_seed(0)
    both(objective, lambda: objective(seq, 0, len(seq), CPU, gen), lambda: objective.static_loss(padded))


@pytest.mark.parametrize("loss", ["ce", "ibce"])
def test_sasrec_prefix_static_loss_is_the_eager_loss(loss):
    torch.manual_seed(0)
    model = SASRec(IDTower(N_ITEMS, DIM), DIM, L, dropout=0.0)
    objective = SASRecObjective(model, log_pop(), loss, N_ITEMS)
    seq = windows(4, 2)
    users, ends = (seq[:, :-1] != 0).nonzero(as_tuple=True)
    win = seq[users]
    pre = prefixes_of(win, ends)
    pad_win = torch.cat([win, torch.zeros(1, L + 1, dtype=torch.long)])
    pad_pre = torch.cat([pre, torch.zeros(1, L + 1, dtype=torch.long)])
    gen = torch.Generator().manual_seed(0)
    both(objective, lambda: objective(pre, 0, len(pre), CPU, gen, windows=win),
         lambda: objective.static_loss(pad_pre, pad_win))


@pytest.mark.parametrize("loss", ["ce", "ibce"])
def test_dssm_static_loss_is_the_eager_loss(loss):
    torch.manual_seed(0)
    model = DSSM(IDTower(N_ITEMS, DIM), 6, DIM, n_mlp_layers=1, dropout=0.0)
    objective = DSSMObjective(model, log_pop(), loss, N_ITEMS)
    seq = windows(6, 3)
    users, pos = (seq != 0).nonzero(as_tuple=True)
    items = seq[users, pos]
    gen = torch.Generator().manual_seed(0)
    both(objective, lambda: objective(users, items, seq[users], 0, len(users), CPU, gen),
         lambda: objective.static_loss(torch.cat([users, users[:1]]), torch.cat([items, items.new_zeros(1)]),
                                       torch.cat([seq[users], seq[users[:1]]])))


def test_bce_has_no_static_form():
    objective = SASRecObjective(SASRec(IDTower(N_ITEMS, DIM), DIM, L), log_pop(), "bce", N_ITEMS)
    with pytest.raises(ValueError, match="no static form"):
        objective.static_loss(windows(2, 0))


def test_prefixes_are_each_next_item_example_right_aligned():
    seq = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    users, ends = (seq[:, :-1] != 0).nonzero(as_tuple=True)
    pre = prefixes_of(seq[users], ends)
    assert pre.tolist() == [
        [0, 0, 0, 5, 6], [0, 0, 5, 6, 7],
        [0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 9],
    ]
    # the last prefix of a window is the window itself, as an evaluation query sees it
    assert torch.equal(prefixes_of(seq, torch.tensor([3, 3])), seq)
