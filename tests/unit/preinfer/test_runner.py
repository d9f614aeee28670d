"""Block-wise pre-inference reproduces the whole model for any split and bucketing, commits per range, resumes."""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import N_BLOCKS, T, plan_of, pooled_reference, tiny_opt_with_reference

from tcf.errors import TcfError
from tcf.lm.pooling import POOLINGS, pool
from tcf.preinfer import latents as latents_mod
from tcf.preinfer import runner as runner_mod
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.runner import Reporter, length_batches, run_preinference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_opt_with_reference(tmp_path_factory.mktemp("opt"))


def assert_pooled(store: LatentStore, model, atol=1e-5):
    expected = pooled_reference(model[2], model[4])
    for kind in POOLINGS:
        got = store.read(kind)
        assert got.shape == expected[kind].shape
        assert (got.float() - expected[kind]).abs().max().item() <= atol, kind


def run(model, out, spans, **kw):
    path, ids, lengths, keys, _ = model
    return run_preinference(path, ids, lengths, keys, plan_of(spans, kw.pop("batch", 3)), out,
                            device="cpu", dtype=torch.float32, **kw)


def count_loads(monkeypatch) -> list[tuple[int, int]]:
    """The (start, stop) of every stage the runner loads from now on."""
    loads, real_load = [], runner_mod.load_stage

    def counting_load(model_dir, start, stop, **kw):
        loads.append((start, stop))
        return real_load(model_dir, start, stop, **kw)

    monkeypatch.setattr(runner_mod, "load_stage", counting_load)
    return loads


class Recorder(Reporter):
    def __init__(self, fail_in_range: int | None = None):
        self.starts, self.ends, self.progress_calls = [], [], []
        self.fail_in_range = fail_in_range
        self.current = None

    def range_start(self, i, start, stop, n_items):
        self.starts.append((i, start, stop, n_items))
        self.current = i

    def progress(self, items_done, n_items, items_per_s):
        self.progress_calls.append((self.current, items_done, n_items))
        if self.current == self.fail_in_range and items_done >= 6:
            raise RuntimeError("simulated crash")

    def range_end(self, i, seconds):
        self.ends.append(i)


SPLITS = {
    "one-range": [(0, 4)],
    "three-ranges": [(0, 1), (1, 3), (3, 4)],
    "per-block": [(0, 1), (1, 2), (2, 3), (3, 4)],
}


@pytest.mark.parametrize("batch", [3, 64])
@pytest.mark.parametrize("split", list(SPLITS))
def test_final_hidden_states_and_pooled_embeddings_equal_whole_model(model, tmp_path, split, batch):
    *_, keys, reference = model
    out = run(model, tmp_path / "lat", SPLITS[split], batch=batch, keep_depths=(N_BLOCKS,))
    store = LatentStore(out)
    final = store.read(N_BLOCKS)
    assert final.dtype == torch.float32 and final.shape == reference.shape
    assert (final - reference).abs().max().item() <= 1e-5
    assert_pooled(store, model)
    assert store.committed() == [N_BLOCKS] and store.has_pooled()  # consumed boundaries are deleted
    assert sorted(p.name for p in out.glob("*.npy") if p.name != "lengths.npy") == [
        f"boundary-{N_BLOCKS:03d}.npy", "pooled-first.npy", "pooled-last.npy", "pooled-mean.npy"]
    assert store.item_keys() == keys
    np.testing.assert_array_equal(store.lengths(), model[2])
    rows = [5, 0, 11]
    assert torch.equal(store.read(N_BLOCKS, rows), final[rows])
    assert torch.equal(store.read(N_BLOCKS, rows, length=4), final[rows, :4])


@pytest.mark.parametrize("batch", [3, 64])
def test_batches_tell_the_stage_whether_they_are_padded_and_cudnn_attention_is_off(model, tmp_path, monkeypatch, batch):
    """The stage is told, from the host's lengths, whether a batch is padded, and never has to read the
    mask itself (that read waits for the GPU on every batch)."""
    calls, real_load = [], runner_mod.load_stage

    def load(model_dir, start, stop, **kw):
        stage = real_load(model_dir, start, stop, **kw)
        stage.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((bool(args[1].all()), kwargs["padded"], m.inspect_masks,
                                                  torch.backends.cuda.cudnn_sdp_enabled())),
            with_kwargs=True)
        return stage

    monkeypatch.setattr(runner_mod, "load_stage", load)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    run(model, tmp_path / "lat", [(0, 4)], batch=batch)
    assert calls and all(padded == (not full) and not inspect for full, padded, inspect, _ in calls)
    assert {padded for _, padded, *_ in calls} == ({False} if batch == 3 else {True})
    # cuDNN attention (a graph built on the host for every new batch shape) is off while encoding, only then
    assert not any(cudnn for *_, cudnn in calls) and torch.backends.cuda.cudnn_sdp_enabled()


def test_without_keep_only_pooled_embeddings_remain(model, tmp_path):
    out = run(model, tmp_path / "lat", SPLITS["three-ranges"])
    store = LatentStore(out)
    assert store.committed() == [] and store.has_pooled()
    assert not list(out.glob("boundary-*"))
    assert_pooled(store, model)


def test_pooling_definitions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = pool(hidden, mask)
    assert torch.equal(got["mean"], torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    assert torch.equal(got["first"], torch.tensor([[1.0, 2.0], [5.0, 6.0]]))
    assert torch.equal(got["last"], torch.tensor([[3.0, 4.0], [5.0, 6.0]]))


def test_padding_is_zero_and_batches_are_length_sorted(model, tmp_path):
    _, _, lengths, _, _ = model
    out = run(model, tmp_path / "lat", SPLITS["three-ranges"], keep_depths=(N_BLOCKS,))
    final = LatentStore(out).read(N_BLOCKS)
    for row, n in enumerate(lengths):
        assert torch.all(final[row, n:] == 0) and torch.all(final[row, :n].abs().sum(-1) > 0)
    batches = length_batches(lengths, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima == sorted(maxima) and maxima[0] < T  # short batches really are trimmed


@pytest.mark.parametrize("batch_size", [1, 7, 64, 4096])
def test_length_batches_keep_to_one_length_unless_a_length_is_rare(batch_size):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 12, 3000), [20, 20, 30]])  # two rare lengths at the end
    rng.shuffle(lengths)
    batches = length_batches(lengths, batch_size)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # every row once
    assert all(0 < len(b) <= batch_size for b in batches)
    assert [int(lengths[b].min()) for b in batches] == sorted(int(lengths[b].min()) for b in batches)
    for b in batches:
        spans = sorted(set(lengths[b].tolist()))
        # a batch mixes lengths only where all but the longest are rare (fewer than batch_size / 8 rows)
        assert all(np.sum(lengths == n) * 8 < batch_size for n in spans[:-1]), (batch_size, spans)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    ordered = np.sort(lengths)
    cut_every = sum(int(ordered[i: i + batch_size].max()) * len(ordered[i: i + batch_size])
                    for i in range(0, len(ordered), batch_size))
    assert padded <= cut_every
    if batch_size <= 64:
        assert padded == lengths.sum() + (30 - 20) * (2 if batch_size > 8 else 0)  # only the rare 20s padded


def test_keep_depths_keeps_only_requested_boundaries(model, tmp_path):
    out = run(model, tmp_path / "lat", SPLITS["per-block"], keep_depths=(2,))
    store = LatentStore(out)
    assert store.committed() == [2] and store.has_pooled()
    # boundary 2 is a valid starting point: without the final output, a rerun finishes from it and keeps it
    for kind in POOLINGS:
        store.delete(kind)
    recorder = Recorder()
    run(model, out, SPLITS["per-block"], reporter=recorder)
    assert [s[1:3] for s in recorder.starts] == [(2, 3), (3, 4)]
    assert store.committed() == [2] and store.has_pooled()
    assert_pooled(store, model)


def test_bf16_latents_are_stored_as_bf16(model, tmp_path):
    reference = model[4]
    out = run(model, tmp_path / "lat", SPLITS["three-ranges"], latent_dtype="bf16", keep_depths=(N_BLOCKS,))
    final = LatentStore(out).read(N_BLOCKS)
    assert final.dtype == torch.bfloat16
    assert np.load(out / f"boundary-{N_BLOCKS:03d}.npy", mmap_mode="r").dtype == np.uint16
    assert (final.float() - reference).abs().max().item() < 0.1  # bf16 rounding at each boundary


def test_resume_after_crash_does_not_recompute_committed_ranges(model, tmp_path, monkeypatch):
    spans = SPLITS["three-ranges"]
    clean = LatentStore(run(model, tmp_path / "clean", spans))

    loads = count_loads(monkeypatch)
    out = tmp_path / "crashy"
    crash = Recorder(fail_in_range=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(model, out, spans, reporter=crash, progress_every=0)
    store = LatentStore(out)
    assert crash.ends == [0] and store.committed() == [1]
    assert not (out / "boundary-003.npy.tmp").exists()  # an exception cleans its temporary file
    # a process killed outright leaves its .tmp (and maybe an unlisted file): neither counts as committed
    (out / "boundary-003.npy.tmp").write_bytes(b"half written")
    np.save(out / "pooled-mean.npy", np.ones((3, 3), dtype=np.float32))
    assert store.committed() == [1] and not store.has_pooled()

    loads.clear()
    again = Recorder()
    run(model, out, spans, reporter=again)
    assert loads == [(1, 3), (3, 4)]
    assert [s[:3] for s in again.starts] == [(1, 1, 3), (2, 3, 4)]
    assert again.progress_calls[-1] == (2, 17, 17)
    for kind in POOLINGS:  # bitwise identical to the uninterrupted run
        assert torch.equal(store.read(kind), clean.read(kind))
    assert store.committed() == [] and store.has_pooled()
    assert not list(out.glob("*.tmp"))

    loads.clear()
    run(model, out, spans)  # everything committed: nothing is loaded
    assert loads == []


def test_resume_under_a_different_split_reuses_committed_boundaries(model, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    with pytest.raises(RuntimeError):
        run(model, out, [(0, 2), (2, 4)], reporter=Recorder(fail_in_range=1), progress_every=0)
    assert LatentStore(out).committed() == [2]
    loads = count_loads(monkeypatch)
    run(model, out, SPLITS["per-block"])
    assert loads == [(2, 3), (3, 4)]  # starts at boundary 2, which the new split can start from
    assert_pooled(LatentStore(out), model)
    assert json.loads((out / "state.json").read_text())["plan"] == [[0, 1], [1, 2], [2, 3], [3, 4]]


def test_folder_of_other_inputs_is_refused(model, tmp_path):
    path, ids, lengths, keys, _ = model
    out = run(model, tmp_path / "lat", [(0, 4)])
    other = ids.copy()
    other[0, 1] = 7
    with pytest.raises(TcfError, match="another job.*inputs"):
        run_preinference(path, other, lengths, keys, plan_of([(0, 4)]), out, device="cpu", dtype=torch.float32)


def test_disk_full_is_a_tcf_error_and_nothing_is_committed(model, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(latents_mod.os, "posix_fallocate", full, raising=False)
    out = tmp_path / "lat"
    with pytest.raises(TcfError, match=r"boundary-001\.npy\.tmp.*No space left"):
        run(model, out, SPLITS["three-ranges"])
    assert LatentStore(out).committed() == []
    assert not list(out.glob("boundary-*"))


def test_error_while_finishing_a_boundary_removes_it(tmp_path, monkeypatch):
    store = LatentStore(tmp_path / "lat")
    monkeypatch.setattr(latents_mod.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(TcfError, match=r"boundary-002\.npy\.tmp.*I/O"):
        with store.writer(2, (2, 3, 4), "fp32") as w:
            w.write([1, 0], torch.ones(2, 3, 4))
    assert store.committed() == [] and not list((tmp_path / "lat").glob("boundary-*"))


def test_store_round_trip_and_delete(tmp_path):
    store = LatentStore(tmp_path)
    data = torch.randn(4, 5, 3).to(torch.bfloat16)
    with store.writer(7, (4, 5, 3), torch.bfloat16) as w:
        w.write([2, 0], data[[2, 0], :2])
        w.write([1, 3], data[[1, 3]])
    got = store.read(7)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got[[1, 3]], data[[1, 3]]) and torch.equal(got[[0, 2], :2], data[[0, 2], :2])
    assert torch.all(got[[0, 2], 2:] == 0)
    store.delete(7)
    assert store.committed() == [] and not store.path(7).exists()
    with pytest.raises(TcfError, match="not committed"):
        store.read(7)


def test_shares_cover_every_item_once():
    lengths = np.random.default_rng(0).integers(1, 30, size=101)
    for world in (1, 2, 3, 8):
        shares = [runner_mod.share(lengths, r, world) for r in range(world)]
        joined = np.concatenate(shares)
        assert sorted(joined.tolist()) == list(range(101))  # none lost, none twice
        assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_two_gloo_ranks_fill_one_boundary(model, tmp_path):
    path, ids, lengths, keys, reference = model
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "lengths.npy", lengths)
    script = tmp_path / "job.py"
    script.write_text(f"""
import json, numpy as np, torch
from tcf.util.dist import init_distributed, shutdown
from tcf.preinfer.planner import Plan, RangePlan
from tcf.preinfer.runner import run_preinference
ctx = init_distributed("cpu")
ranges = [RangePlan(s, e, 0, 0, 3, s == 0, e == {N_BLOCKS}) for s, e in [(0, 1), (1, 3), (3, {N_BLOCKS})]]
plan = Plan(ranges, 1 << 30, 0, {len(keys)}, {T}, "fp32", "fp32", 0, 0, 1.0, 0.0)
run_preinference({str(path)!r}, np.load({str(tmp_path / 'ids.npy')!r}), np.load({str(tmp_path / 'lengths.npy')!r}),
                 {keys!r}, plan, {str(tmp_path / 'out')!r}, device="cpu", dtype=torch.float32, ctx=ctx)
shutdown()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29700 + os.getpid() % 200), str(script)], env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    store = LatentStore(tmp_path / "out")
    assert store.has_pooled() and not list((tmp_path / "out").glob("*.tmp"))
    assert_pooled(store, model)  # every row written, by one rank or the other
    timings = store.state()["timings"]  # each range with both ranks' own seconds, as rank 0 recorded it
    assert [t["range"] for t in timings] == [[0, 1], [1, 3], [3, N_BLOCKS]]
    for t in timings:
        assert len(t["ranks"]) == 2
        assert all(set(rank) == {"load_s", "wait_s", "encode_s"} and min(rank.values()) >= 0 for rank in t["ranks"])
        assert t["ranks"][0]["load_s"] == t["load_s"]
        assert t["run_s"] == pytest.approx(t["ranks"][0]["wait_s"] + t["ranks"][0]["encode_s"], abs=0.002)


def test_volatile_boundaries_survive_a_crash_but_not_a_reboot(model, tmp_path, monkeypatch):
    spans = SPLITS["three-ranges"]
    synced = []
    real_fsync = latents_mod.os.fsync
    monkeypatch.setattr(latents_mod.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    monkeypatch.setattr(latents_mod, "boot_id", lambda: "boot-A")
    out = tmp_path / "lat"
    with pytest.raises(RuntimeError):
        run(model, out, spans, reporter=Recorder(fail_in_range=1), progress_every=0, keep_depths=(3,))
    store = LatentStore(out)
    assert store.committed() == [1]  # committed without an fsync of its data, for this boot
    assert not any(p.endswith("boundary-001.npy.tmp") for p in synced)
    monkeypatch.setattr(latents_mod, "boot_id", lambda: "boot-B")  # the machine rebooted: it may be gone
    assert store.committed() == []
    recorder = Recorder()
    run(model, out, spans, reporter=recorder, keep_depths=(3,))
    assert [s[1:3] for s in recorder.starts] == [(0, 1), (1, 3), (3, 4)]
    assert store.committed() == [3] and store.has_pooled()
    assert any(p.endswith("boundary-003.npy.tmp") for p in synced)  # kept depths and outputs are durable
    assert any(p.endswith("pooled-mean.npy.tmp") for p in synced)
    assert_pooled(store, model)


def test_pinned_ring_carves_disjoint_aligned_slots_in_turn():
    from tcf.preinfer.pinned import PinnedRing, slot_bytes

    specs = [((3, 5), torch.int64), ((3, 5), torch.bool), ((2, 7), torch.bfloat16)]
    ring = PinnedRing(slot_bytes(specs), 2, pin=False)
    i, (a, b, c) = ring.carve(specs)
    assert i == 0 and a.shape == (3, 5) and b.dtype == torch.bool and c.shape == (2, 7) and c.is_contiguous()
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in (a, b, c))
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))  # side by side, not overlapping
    assert all(t.data_ptr() % 256 == spans[0][0] % 256 for t in (a, b, c))
    a.fill_(7), b.fill_(True), c.fill_(1.5)
    assert a.sum() == 105 and b.all() and c.sum() == 21  # each write stayed in its own tensor
    j, (a2, *_) = ring.carve(specs)
    k, (a3, *_) = ring.carve(specs)
    assert (j, k) == (1, 0) and a3.data_ptr() == a.data_ptr() != a2.data_ptr()  # round robin
    with pytest.raises(ValueError, match="do not fit"):
        ring.carve([((100, 100), torch.float32)])


