"""Text item towers: frozen and top-N fine-tuned, built from a pre-inference artifact of a tiny OPT."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEXT_BLOCKS, gather_top1, text_source, text_tower_setup
from safetensors.torch import load_file

from tcf.errors import TcfError
from tcf.experiment import prepared_data
from tcf.preinfer.latents import LatentStore
from tcf.rec.losses import log_popularity
from tcf.rec.objective import SASRecObjective
from tcf.rec.text_towers import FineTunedTextTower, FrozenTextTower
from tcf.rec.trainer import build_model, param_groups
from tcf.util.dist import DistContext


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    return text_tower_setup(tmp_path_factory.mktemp("text"), small_dataset)


def _checkpoint_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _digest(model_dir: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(model_dir.glob("*.safetensors")))).hexdigest()


def _one_step(cfg, model, data) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    objective = SASRecObjective(model, log_popularity(data.popularity), cfg.train.loss, data.n_items)
    seqs = torch.as_tensor(data.train_sequences()[:16])
    model.train()
    loss, n = objective(seqs, 0, len(seqs), DistContext(0, 1, torch.device("cpu")), torch.Generator())
    (loss / n).backward()
    optimizer.step()
    return before


def test_fine_tuned_tower_starts_from_the_checkpoint_and_trains_only_its_parameters(setup):
    root, config, model_dir = setup
    cfg, source = text_source(root, config, unfreeze=1)
    data = prepared_data(cfg)
    digest = _digest(model_dir)
    model = build_model(cfg, data, source)
    tower = model.item_tower
    assert isinstance(tower, FineTunedTextTower)
    stored = _checkpoint_tensors(model_dir)
    block_params = dict(tower.blocks.named_parameters())
    assert sorted(block_params) == sorted(k.removeprefix("decoder.") for k in stored
                                          if k.startswith(f"decoder.layers.{TEXT_BLOCKS - 1}.")
                                          or k.startswith("decoder.final_layer_norm."))
    for name, p in block_params.items():  # the recommender's init never touched them
        assert torch.equal(p.detach(), stored[f"decoder.{name}"].float()), name

    groups = param_groups(model, cfg)
    text_ids = {id(p) for p in tower.parameters()}
    assert [g["lr"] for g in groups] == [cfg.train.lr, cfg.train.text_lr]
    assert {id(p) for p in groups[1]["params"]} == text_ids
    assert not text_ids & {id(p) for p in groups[0]["params"]}

    boundary = source.latents / f"boundary-{TEXT_BLOCKS - 1:03d}.npy"
    latents_before = hashlib.sha256(boundary.read_bytes()).hexdigest()
    before = _one_step(cfg, model, data)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert {n for n in changed if n.startswith("item_tower.blocks.")}  # the LM block trains
    assert any(n.startswith("item_tower.mlp.") for n in changed) and any(n.startswith("blocks.") for n in changed)
    assert "positions.weight" in changed
    assert hashlib.sha256(boundary.read_bytes()).hexdigest() == latents_before  # inputs, never trained
    assert _digest(model_dir) == digest  # nor is the checkpoint on disk (its pages are mapped privately)


def test_frozen_tower_is_the_pooled_embedding_through_the_projection(setup):
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=0)
    data = prepared_data(cfg)
    model = build_model(cfg, data, source)
    tower = model.item_tower
    assert isinstance(tower, FrozenTextTower)
    assert torch.all(tower.table[0] == 0) and tower.table.shape == (data.n_items + 1, 32)
    table = tower.table.clone()
    names = {n for n, _ in model.named_parameters()}
    assert not any("table" in n for n in names)  # a buffer: not trained, not checkpointed
    before = _one_step(cfg, model, data)
    assert torch.equal(tower.table, table)
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in ("item_tower.mlp.0.weight", "positions.weight"))


def test_fine_tuned_tower_on_parts_of_a_batch_equals_the_whole_batch(setup):
    """Two ranks each encode only their shard's unique items, padded to that shard's longest item: the
    vectors and the summed block gradients must be those of one rank encoding the whole batch."""
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=1, max_tokens=30)  # titles of several lengths
    data = prepared_data(cfg)
    tower = build_model(cfg, data, source).item_tower
    assert isinstance(tower, FineTunedTextTower)
    tower.train()
    ids = torch.arange(1, data.n_items + 1)
    lengths = torch.as_tensor(tower.gather.lengths[tower.rows[ids.numpy()]])
    short = lengths < lengths.max()
    assert 0 < int(short.sum()) < len(ids)  # the short part is padded to fewer positions than the whole
    weights = torch.randn(len(ids), cfg.model.embedding_dim, generator=torch.Generator().manual_seed(0))
    params = [p for p in tower.parameters() if p.requires_grad]

    def run(parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for p in params:
            p.grad = None
        vecs = torch.zeros(len(ids), cfg.model.embedding_dim)
        for part in parts:
            v = tower(ids[part])
            (v * weights[part]).sum().backward()
            vecs[part] = v.detach()
        return vecs, [p.grad.clone() for p in params]

    whole_v, whole_g = run([torch.ones_like(short)])
    split_v, split_g = run([short, ~short])
    torch.testing.assert_close(split_v, whole_v, rtol=1e-5, atol=1e-6)
    scale = torch.cat([g.flatten() for g in whole_g]).norm()  # some gradients are zero up to rounding (k bias)
    for a, b in zip(whole_g, split_g, strict=True):  # fp32 sums in another order
        assert float((b - a).norm()) <= 1e-5 * float(scale)


def test_fine_tuned_tower_gradients_repeat_exactly(setup):
    """The same step gives the same gradients, bit for bit, on several CPU threads: a batch repeats items,
    and summing their gradients in a thread-dependent order (advanced-index backward) made the demo's
    fine-tuned run land on a different HR@10 each time."""
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=1)
    data = prepared_data(cfg)
    tower = build_model(cfg, data, source).item_tower
    tower.train()
    ids = torch.randint(1, data.n_items + 1, (256, 50), generator=torch.Generator().manual_seed(0))
    weights = torch.randn(*ids.shape, cfg.model.embedding_dim, generator=torch.Generator().manual_seed(1))
    params = [p for p in tower.parameters() if p.requires_grad]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 4))
    try:
        grads = []
        for _ in range(4):
            for p in params:
                p.grad = None
            (tower(ids) * weights).sum().backward()
            grads.append([p.grad.clone() for p in params])
    finally:
        torch.set_num_threads(threads)
    for again in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], again, strict=True))


def test_item_table_encodes_in_length_order_and_returns_rows_in_id_order(setup, monkeypatch):
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=1, max_tokens=30)  # titles of several lengths
    data = prepared_data(cfg)
    model = build_model(cfg, data, source).eval()
    tower = model.item_tower
    lengths = tower.item_lengths
    assert lengths[0] == 0 and (lengths[1:] > 0).all() and len(set(lengths[1:].tolist())) > 2
    with torch.no_grad():
        by_id = torch.cat([tower(chunk) for chunk in torch.arange(data.n_items + 1).split(5)])  # id order
        seen: list[torch.Tensor] = []
        real_forward = tower.forward
        monkeypatch.setattr(tower, "forward", lambda ids: seen.append(ids) or real_forward(ids))
        table = model.item_table(data.n_items, batch=5)
    torch.testing.assert_close(table, by_id, rtol=1e-5, atol=1e-6)
    flat = torch.cat(seen).numpy()
    assert sorted(flat.tolist()) == list(range(data.n_items + 1))  # every id once
    assert (np.diff(lengths[flat]) >= 0).all()  # chunk by chunk, shortest first
    padded = sum(int(lengths[c.numpy()].max()) * len(c) for c in seen)
    assert padded < sum(int(lengths[c].max()) * len(c) for c in np.array_split(np.arange(data.n_items + 1),
                                                                               len(seen)))


def test_latent_gather_returns_the_stored_rows_prefetched_or_not(setup):
    gather, full, lengths = gather_top1(setup)
    cpu = torch.device("cpu")
    try:
        for prefetched, wanted in [([5, 1, 7], [2, 3, 9, 4]), ([6, 0], [6, 0]), ([8], [8]), ([3, 11], [3, 11])]:
            gather.prefetch(np.array(prefetched))  # a stale prefetch must never leak into another batch
            x, mask = gather.take(np.array(wanted), cpu)
            longest = int(lengths[wanted].max())
            assert x.shape == (len(wanted), longest, full.shape[2])
            assert torch.equal(x, full[wanted, :longest])
            assert mask.sum(1).tolist() == lengths[wanted].tolist()
    finally:
        gather.close()


def test_fine_tuned_tower_uses_announced_ids_and_catches_a_wrong_announcement(setup):
    """prefetch() announces the next forward's ids from the host so the forward need not copy its ids
    back from the GPU; a forward given other ids than announced is caught at the next check."""
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=1)
    data = prepared_data(cfg)
    tower = build_model(cfg, data, source).item_tower
    tower.eval()
    ids = torch.tensor([[0, 3, 5, 3], [7, 0, 1, 5]])
    with torch.no_grad():
        plain = tower(ids)
        tower.prefetch(ids.numpy())
        announced = tower(ids)
        tower.check_announced()
        torch.testing.assert_close(announced, plain)
        tower.prefetch(ids.numpy())
        tower(ids + 1)  # ids 2, 4, 6, 8 were never announced
        with pytest.raises(TcfError, match="announced"):
            tower.check_announced()
        tower.check_announced()  # the count starts again after a report
        assert tower(ids).shape == plain.shape  # nothing announced: the forward reads its own ids


@pytest.mark.parametrize("n_items", [1, 2, 7, 10])
def test_deal_gives_every_item_to_one_rank_and_finds_it_after_the_gather(n_items):
    from tcf.rec.text_towers import _deal

    lengths = np.random.default_rng(n_items).integers(1, 30, n_items)
    world = 3
    parts = [_deal(lengths, DistContext(rank, world, torch.device("cpu")))[0] for rank in range(world)]
    width = len(parts[0])
    assert all(len(p) == width for p in parts) and width == -(-n_items // world)
    gathered = np.concatenate(parts)  # what all_gather hands every rank: item indices in rank order
    source = _deal(lengths, DistContext(0, world, torch.device("cpu")))[1]
    assert np.array_equal(gathered[source], np.arange(n_items))  # each item's row holds that item
    real = [p[: len(range(r, n_items, world))] for r, p in enumerate(parts)]
    assert sorted(np.concatenate(real).tolist()) == list(range(n_items))  # each item encoded by one rank


def test_both_towers_pool_and_normalise_by_one_rule(setup):
    """text_encoder.normalize: the frozen table and the fine-tuned top block give the same unit vectors (the
    pre-inference stores them unnormalised; the rule is applied where they are read)."""
    root, config, _ = setup
    _, source = text_source(root, config, unfreeze=1)
    source = dataclasses.replace(source, pooling="last", normalize=True)
    vectors = source.item_vectors()
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(vectors)))
    keys = LatentStore(source.latents).item_keys()
    tower = FineTunedTextTower.from_source(source, ["<pad>", *keys], dim=8)
    with torch.no_grad():
        encoded = tower._encode(np.arange(len(keys)), torch.device("cpu"))
    torch.testing.assert_close(encoded, vectors, rtol=1e-5, atol=1e-5)
    plain = dataclasses.replace(source, normalize=False).item_vectors()
    torch.testing.assert_close(vectors, torch.nn.functional.normalize(plain, dim=-1))
