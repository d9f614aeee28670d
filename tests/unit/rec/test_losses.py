import math

import numpy as np
import pytest
import torch

from tcf.rec.losses import POP_FLOOR, bce_loss, ce_loss, ibce_loss, log_popularity, sample_negatives


def slow_ibce(queries, query_user, target_slot, cand_vecs, cand_ids, user_windows, log_pop) -> float:
    """Row-by-row reference of the contract's IBCE definition, in float64 python."""
    total = 0.0
    q, v = queries.double(), cand_vecs.double()
    for r in range(q.shape[0]):
        window = set(user_windows[int(query_user[r])].tolist())
        tgt = int(target_slot[r])
        tid = int(cand_ids[tgt])
        logits = []
        for m in range(v.shape[0]):
            cid = int(cand_ids[m])
            masked = cid == 0 or cid in window or cid == tid
            if masked and m != tgt:
                continue
            z = float(q[r] @ v[m]) - float(log_pop[cid])
            logits.append(z)
            if m == tgt:
                z_t = z
        mx = max(logits)
        total += mx + math.log(sum(math.exp(z - mx) for z in logits)) - z_t
    return total


def random_ibce(seed: int, n_items: int = 12, bg: int = 5, w: int = 6, d: int = 8, extra: int = 7):
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, n_items + 1, (bg, w), generator=g)      # small catalog: duplicates
    n_pad = torch.randint(0, w - 1, (bg,), generator=g)
    windows[torch.arange(w)[None, :] < n_pad[:, None]] = 0
    # candidates: every window slot (SASRec layout) plus some extra ids (incl. pads)
    cand_ids = torch.cat([windows.flatten(), torch.randint(0, n_items + 1, (extra,), generator=g)])
    real = (cand_ids != 0).nonzero()[:, 0]
    r = 17
    target_slot = real[torch.randint(0, real.numel(), (r,), generator=g)]
    query_user = torch.randint(0, bg, (r,), generator=g)
    queries = torch.randn(r, d, generator=g)
    cand_vecs = torch.randn(cand_ids.numel(), d, generator=g)
    counts = torch.randint(0, 9, (n_items + 1,), generator=g)
    counts[0] = 0
    log_pop = log_popularity(counts)
    return queries, query_user, target_slot, cand_vecs, cand_ids, windows, log_pop


@pytest.mark.parametrize("seed", range(5))
def test_ibce_matches_slow_reference(seed):
    args = random_ibce(seed)
    got = ibce_loss(*args)
    assert got.shape == ()
    assert float(got) == pytest.approx(slow_ibce(*args), rel=1e-5)


def test_ibce_masks_other_copies_of_target_but_not_other_negatives():
    q = torch.tensor([[1.0, 0.0]])
    cand_ids = torch.tensor([3, 4, 3, 5, 0])                 # slot 2 duplicates the target id 3
    windows = torch.tensor([[0, 3]])
    log_pop = torch.zeros(6)
    base = torch.tensor([[1.0, 0.0], [0.5, 0.0], [9.0, 0.0], [0.2, 0.0], [7.0, 0.0]])
    loss = ibce_loss(q, torch.tensor([0]), torch.tensor([0]), base, cand_ids, windows, log_pop)
    expected = -1.0 + math.log(math.exp(1.0) + math.exp(0.5) + math.exp(0.2))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    moved = base.clone()
    moved[3, 0] = 3.0                                        # an unmasked negative does count
    assert float(ibce_loss(q, torch.tensor([0]), torch.tensor([0]), moved, cand_ids, windows, log_pop)) > loss


def test_ibce_popularity_correction_direction():
    q = torch.tensor([[0.0, 0.0]])
    vecs = torch.zeros(2, 2)
    ids = torch.tensor([1, 2])
    win = torch.tensor([[1]])
    # equal dot products: the rarer negative (smaller log p) gets the larger logit
    rare_neg = ibce_loss(q, torch.tensor([0]), torch.tensor([0]), vecs, ids, win,
                         torch.tensor([0.0, math.log(0.5), math.log(0.01)]))
    common_neg = ibce_loss(q, torch.tensor([0]), torch.tensor([0]), vecs, ids, win,
                           torch.tensor([0.0, math.log(0.5), math.log(0.9)]))
    assert rare_neg > common_neg


def test_ibce_gradients_flow_and_skip_masked_slots():
    queries, query_user, target_slot, cand_vecs, cand_ids, windows, log_pop = random_ibce(7)
    queries.requires_grad_(True)
    cand_vecs.requires_grad_(True)
    loss = ibce_loss(queries, query_user, target_slot, cand_vecs, cand_ids, windows, log_pop)
    loss.backward()
    assert torch.isfinite(queries.grad).all() and queries.grad.abs().sum() > 0
    assert torch.isfinite(cand_vecs.grad).all()
    pad_slots = cand_ids == 0
    assert pad_slots.any() and (cand_vecs.grad[pad_slots] == 0).all()


def test_log_popularity():
    lp = log_popularity(np.array([0, 1, 3, 0]))
    assert lp.dtype == torch.float32
    assert lp.tolist() == pytest.approx([0.0, math.log(0.25), math.log(0.75), math.log(POP_FLOOR)], rel=1e-6)
    assert torch.isfinite(lp).all()


def random_windows(seed: int, b: int = 32, w: int = 10, n_items: int = 30):
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, n_items + 1, (b, w), generator=g)
    windows[:, : w // 3] = 0
    return windows


def test_sample_negatives_avoid_window_and_padding():
    windows = random_windows(0)
    neg = sample_negatives(windows, 30, (32, 7), torch.Generator().manual_seed(1))
    assert neg.shape == (32, 7) and neg.dtype == torch.long
    assert ((neg >= 1) & (neg <= 30)).all()
    assert not (neg[:, :, None] == windows[:, None, :]).any()
    neg3 = sample_negatives(windows, 30, (32, 4, 2), torch.Generator().manual_seed(1))
    assert neg3.shape == (32, 4, 2)
    assert not (neg3.reshape(32, -1, 1) == windows[:, None, :]).any()


def test_sample_negatives_deterministic_for_seeded_generator():
    windows = random_windows(1)
    a = sample_negatives(windows, 30, (32, 5), torch.Generator().manual_seed(3))
    b = sample_negatives(windows, 30, (32, 5), torch.Generator().manual_seed(3))
    c = sample_negatives(windows, 30, (32, 5), torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_negatives_nearly_full_and_full_windows():
    n_items = 6
    windows = torch.tensor([[1, 2, 3, 4, 6], [0, 0, 0, 0, 1]])   # row 0 leaves only item 5
    neg = sample_negatives(windows, n_items, (2, 50), torch.Generator().manual_seed(0), max_rounds=1)
    assert (neg[0] == 5).all()
    assert not (neg[1] == 1).any() and (neg[1] >= 2).all()
    full = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(full, n_items, (1, 3), torch.Generator().manual_seed(0))


def test_bce_loss_is_a_sum():
    pos = torch.tensor([0.5, -1.0, 2.0])
    neg = torch.tensor([[0.3], [-2.0], [1.5]])
    expected = (sum(-math.log(1 / (1 + math.exp(-x))) for x in pos.tolist())
                + sum(-math.log(1 - 1 / (1 + math.exp(-x))) for x in neg.flatten().tolist()))
    assert float(bce_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)
    assert float(bce_loss(pos.bfloat16(), neg.bfloat16())) == pytest.approx(expected, rel=1e-2)


def test_ce_loss_is_full_softmax_without_padding():
    g = torch.Generator().manual_seed(0)
    q, table = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    targets = torch.tensor([1, 8, 3, 3, 5, 2])
    logits = q @ table[1:].T  # items 1..8 only
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(6), targets - 1].sum()
    assert torch.allclose(ce_loss(q, targets, table), expected, atol=1e-5)


def test_unique_padded_matches_torch_unique():
    from tcf.rec.losses import _unique_padded

    ids = torch.tensor([5, 0, 3, 5, 9, 0, 3, 3, 12])
    uniq, inverse = _unique_padded(ids)
    want, want_inverse = torch.unique(ids, return_inverse=True)
    k = len(want)
    assert torch.equal(uniq[:k], want) and torch.equal(inverse, want_inverse)
    assert (uniq[k:] == torch.iinfo(torch.int64).max).all() and len(uniq) == len(ids)
