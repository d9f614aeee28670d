"""Pre-inference on a CUDA GPU: bf16 close to fp32, pinned slots reused safely, the first-batch rehearsal."""

from __future__ import annotations

import pytest
import torch
from helpers import plan_of, pooled_reference, tiny_opt_with_reference

from tcf.lm import load_config
from tcf.lm.pooling import POOLINGS
from tcf.preinfer import runner as runner_mod
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.runner import length_batches, run_preinference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_opt_with_reference(tmp_path_factory.mktemp("opt"))


def test_bf16_on_cuda_stays_close_to_fp32(model, tmp_path):
    path, ids, lengths, keys, reference = model
    out = run_preinference(path, ids, lengths, keys, plan_of([(0, 2), (2, 4)], batch=5), tmp_path / "gpu",
                           device="cuda", dtype=torch.bfloat16, latent_dtype="bf16")
    store = LatentStore(out)
    expected = pooled_reference(model[2], model[4])
    for kind in POOLINGS:
        got = store.read(kind).float()
        rel = (got - expected[kind]).norm() / expected[kind].norm()
        assert rel < 0.03, (kind, rel)

def test_cuda_run_through_reused_pinned_slots_matches_cpu(model, tmp_path):
    """Batches of 2 make more batches than a range has pinned slots, for the token ids, for a boundary read
    back as input and for every output, so each slot is refilled while the GPU may still hold earlier ones."""
    path, ids, lengths, keys, _ = model
    plan = plan_of([(0, 2), (2, 4)], batch=2)
    cpu = LatentStore(run_preinference(path, ids, lengths, keys, plan, tmp_path / "cpu", keep_depths=[2, 4],
                                       device="cpu", dtype=torch.float32))
    gpu = LatentStore(run_preinference(path, ids, lengths, keys, plan, tmp_path / "gpu", keep_depths=[2, 4],
                                       device="cuda", dtype=torch.float32))
    for k in (2, 4, *POOLINGS):
        torch.testing.assert_close(gpu.read(k), cpu.read(k), atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize("spans", [[(0, 4)], [(0, 1), (1, 3), (3, 4)]])
def test_chunk_major_on_cuda_matches_range_major(model, tmp_path, spans):
    """Chunks of 20 tokens and batches of 2: the packed pinned buffer is read and written in place by every
    range while the next range's weights load on another thread; fp32 equal to range-major, bf16 close."""
    path, ids, lengths, keys, _ = model
    for dtype, latent, tol in ((torch.float32, "fp32", 1e-4), (torch.bfloat16, "bf16", 0.03)):
        by_range = LatentStore(run_preinference(path, ids, lengths, keys, plan_of(spans, batch=2),
                                                tmp_path / f"range-{latent}", keep_depths=[1, 4], device="cuda",
                                                dtype=dtype, latent_dtype=latent))
        by_chunk = LatentStore(run_preinference(path, ids, lengths, keys, plan_of(spans, batch=2, chunk_tokens=20),
                                                tmp_path / f"chunk-{latent}", keep_depths=[1, 4] if len(spans) > 1
                                                else [4], device="cuda", dtype=dtype, latent_dtype=latent))
        for k in (*POOLINGS, 4, *([1] if len(spans) > 1 else [])):
            a, b = by_chunk.read(k).float(), by_range.read(k).float()
            assert ((a - b).norm() / b.norm()).item() <= tol, (k, latent)


def test_rehearsal_runs_a_zero_block_and_steps_aside_when_memory_is_short(model, monkeypatch):
    path, ids, lengths, keys, _ = model
    rows = length_batches(lengths, 5)[0]
    config = load_config(path)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    assert runner_mod.rehearse(config, 1, rows, lengths, 32, torch.bfloat16, torch.device("cuda"))
    assert torch.cuda.memory_allocated() == before  # nothing it built outlives it
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the attention backends are restored

    def out_of_memory(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    with monkeypatch.context() as m:
        m.setattr(torch.nn.Module, "to_empty", out_of_memory)
        assert not runner_mod.rehearse(config, 1, rows, lengths, 32, torch.bfloat16, torch.device("cuda"))
    assert torch.cuda.memory_allocated() == before  # its zero block went with it
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 << 30, 80 << 30))
    assert not runner_mod.rehearse(config, 1, rows, lengths, 32, torch.bfloat16, torch.device("cuda"))
    assert not runner_mod.rehearse(config, 1, rows[:0], lengths, 32, torch.bfloat16, torch.device("cuda"))
