import math

import pytest
import torch
from torch import nn

from tcf.rec.dssm import DSSM
from tcf.rec.losses import ibce_loss, log_popularity
from tcf.rec.sasrec import SASRec
from tcf.rec.towers import MLP, IDTower, init_weights_

N_ITEMS, DIM, L = 50, 16, 8


def make_sasrec(seed: int = 0, **kw) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(IDTower(N_ITEMS, DIM), DIM, L, **kw)


def left_padded(b: int, width: int, seed: int, min_len: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (b, width), generator=g)
    n_real = torch.randint(min_len, width + 1, (b,), generator=g)
    seq[torch.arange(width)[None, :] < (width - n_real)[:, None]] = 0
    return seq


def test_id_tower_padding_row_zero_and_xavier():
    t = IDTower(N_ITEMS, DIM)
    out = t(torch.tensor([[0, 3], [7, 0]]))
    assert out.shape == (2, 2, DIM)
    assert (out[0, 0] == 0).all() and (out[1, 1] == 0).all() and out[0, 1].abs().sum() > 0
    std = math.sqrt(2.0 / (N_ITEMS + 1 + DIM))
    assert t.embedding.weight[1:].std().item() == pytest.approx(std, rel=0.15)


def test_mlp_shapes_and_structure():
    x = torch.randn(4, 6)
    assert torch.equal(MLP(6, 6, 0)(x), x)
    with pytest.raises(ValueError):
        MLP(6, 5, 0)
    one = MLP(6, 5, 1)
    assert [type(m) for m in one] == [nn.Linear, nn.GELU]
    three = MLP(6, 5, 3, dropout=0.2).eval()
    assert [type(m) for m in three] == [nn.Linear, nn.GELU] + [nn.Dropout, nn.Linear, nn.GELU] * 2
    assert three[2].p == 0.2
    y = three(x)
    assert y.shape == (4, 5) and (y > -0.2).all()   # GELU outputs
    assert all((m.bias == 0).all() for m in three if isinstance(m, nn.Linear))


def test_sasrec_init_does_not_touch_the_tower():
    tower = IDTower(N_ITEMS, DIM)
    with torch.no_grad():
        tower.embedding.weight.fill_(0.5)
    proj = nn.Linear(DIM, DIM)
    with torch.no_grad():
        proj.weight.fill_(0.25)
        proj.bias.fill_(1.0)
    model = SASRec(nn.Sequential(tower, proj), DIM, L)
    assert (tower.embedding.weight == 0.5).all()
    assert (proj.weight == 0.25).all() and (proj.bias == 1.0).all()
    blk = model.blocks[0]
    assert blk.q.bias is None and blk.o.bias is None
    assert (blk.ffn[0].bias == 0).all() and blk.ffn[0].out_features == 4 * DIM
    assert isinstance(blk.ffn[1], nn.ReLU)
    assert model.ln_in.eps == 1e-6 and blk.ln_attn.eps == 1e-6 and blk.ln_ffn.eps == 1e-6
    dssm_tower = IDTower(N_ITEMS, DIM)
    with torch.no_grad():
        dssm_tower.embedding.weight.fill_(0.5)
    DSSM(dssm_tower, 10, DIM, n_mlp_layers=1)
    assert (dssm_tower.embedding.weight == 0.5).all()


def test_sasrec_forward_shapes_and_consistency_with_query():
    model = make_sasrec().eval()
    seq = left_padded(6, L + 1, seed=1, min_len=2)
    hidden, vecs = model(seq)
    assert hidden.shape == (6, L, DIM) and vecs.shape == (6, L + 1, DIM)
    with torch.no_grad():
        table = model.item_table(N_ITEMS, batch=7)
        q = model.query(table, seq[:, :L])
    torch.testing.assert_close(q, hidden[:, -1].detach())


def test_sasrec_is_causal():
    model = make_sasrec().eval()
    seq = left_padded(5, L, seed=2, min_len=L)               # no padding: every position real
    vecs = model.item_tower(seq)
    mask = seq != 0
    with torch.no_grad():
        base = model.encode(vecs, mask)
        for t in (2, 5, L - 1):
            changed = vecs.clone()
            changed[:, t] = torch.randn(5, DIM)
            out = model.encode(changed, mask)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert (out[:, t:] - base[:, t:]).abs().amax() > 1e-3


def test_sasrec_left_padding_invariance():
    model = make_sasrec(n_blocks=2).eval()
    real = torch.randint(1, N_ITEMS + 1, (4, 3))
    with torch.no_grad():
        table = model.item_table(N_ITEMS)
        outs = [model.query(table, torch.cat([torch.zeros(4, pad, dtype=torch.long), real], 1))
                for pad in (0, 2, L - 3)]
        for o in outs[1:]:
            torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)
        # the content of padded positions does not leak into real positions
        inputs = torch.cat([torch.zeros(4, L - 3, dtype=torch.long), real], 1)
        vecs = table[inputs]
        noisy = vecs.clone()
        noisy[:, : L - 3] = torch.randn(4, L - 3, DIM) * 10
        torch.testing.assert_close(model.encode(noisy, inputs != 0)[:, -3:],
                                   model.encode(vecs, inputs != 0)[:, -3:], rtol=1e-5, atol=1e-5)


def test_sasrec_padded_rows_stay_finite_in_train_mode_and_bf16():
    model = make_sasrec()
    seq = left_padded(8, L + 1, seed=3)
    seq[0] = 0                                                 # a fully padded row
    hidden, vecs = model(seq)
    assert torch.isfinite(hidden).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, _ = model(seq)
    assert torch.isfinite(hidden.float()).all()
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, L + 1, DIM), torch.ones(1, L + 1, dtype=torch.bool))


def test_item_table_shape_and_row_zero():
    model = make_sasrec()
    with torch.no_grad():
        table = model.item_table(N_ITEMS, batch=16)
    assert table.shape == (N_ITEMS + 1, DIM)
    assert (table[0] == 0).all()
    torch.testing.assert_close(table, model.item_tower.embedding.weight)


def test_gradients_flow_through_sasrec_and_ibce():
    model = make_sasrec()
    seq = left_padded(6, L + 1, seed=4, min_len=3)
    hidden, vecs = model(seq)
    valid = seq[:, 1:] != 0                                    # inputs whose next item is real
    b_idx, t_idx = valid.nonzero(as_tuple=True)
    loss = ibce_loss(hidden[b_idx, t_idx], b_idx, b_idx * (L + 1) + t_idx + 1,
                     vecs.reshape(-1, DIM), seq.flatten(), seq, log_popularity(torch.ones(N_ITEMS + 1)))
    loss.backward()
    assert torch.isfinite(loss)
    emb_grad = model.item_tower.embedding.weight.grad
    assert emb_grad[0].abs().sum() == 0 and emb_grad[seq[seq != 0]].abs().sum() > 0
    for name in ("positions.weight", "blocks.0.q.weight", "blocks.1.ffn.2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("n_mlp", [0, 2])
def test_dssm_shapes(n_mlp):
    torch.manual_seed(0)
    model = DSSM(IDTower(N_ITEMS, DIM), n_users=12, dim=DIM, n_mlp_layers=n_mlp).eval()
    users = torch.tensor([0, 5, 11])
    u = model.user_vectors(users)
    assert u.shape == (3, DIM)
    torch.testing.assert_close(model.query(users), u)
    assert model.item_vectors(torch.randint(0, N_ITEMS + 1, (3, 4))).shape == (3, 4, DIM)
    with torch.no_grad():
        table = model.item_table(N_ITEMS, batch=9)
    assert table.shape == (N_ITEMS + 1, DIM)
    ids = torch.tensor([1, 17, N_ITEMS])
    torch.testing.assert_close(table[ids], model.item_vectors(ids).detach())
    assert model.user_embedding.num_embeddings == 12


def test_init_schemes_apply_to_own_layers_only():
    tower = IDTower(500, 64, init="normal")
    assert abs(float(tower.embedding.weight[1:].detach().std()) - 0.02) < 0.002
    assert float(tower.embedding.weight[0].detach().abs().sum()) == 0.0
    model = SASRec(tower, 64, max_len=10, init="xavier")
    q = model.blocks[0].q.weight.detach()
    assert abs(float(q.std()) - (2 / 128) ** 0.5) < 0.02  # xavier-normal for a 64x64 layer
    assert abs(float(tower.embedding.weight[1:].detach().std()) - 0.02) < 0.002  # the tower kept its own init
    with pytest.raises(ValueError, match="init must be one of"):
        init_weights_([tower], "uniform")


@pytest.mark.parametrize("loss", ["ibce", "ce", "bce"])
def test_sasrec_objective_with_a_known_row_count_is_the_same(loss):
    """The trainer passes the count of real positions from its host copy (no GPU wait to find them)."""
    from tcf.rec.objective import SASRecObjective
    from tcf.util.dist import DistContext

    seq = left_padded(6, L + 1, seed=3)
    objective = SASRecObjective(make_sasrec(), log_popularity(torch.arange(N_ITEMS + 1.0)), loss, N_ITEMS).eval()
    ctx = DistContext(0, 1, torch.device("cpu"))
    n_rows = int((seq[:, :-1] != 0).sum())
    plain = objective(seq, 0, len(seq), ctx, torch.Generator().manual_seed(0))
    counted = objective(seq, 0, len(seq), ctx, torch.Generator().manual_seed(0), n_rows=n_rows)
    assert float(plain[1]) == float(counted[1]) > 0
    torch.testing.assert_close(counted[0], plain[0], rtol=0, atol=0)
