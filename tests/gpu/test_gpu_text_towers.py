"""The fine-tuned text tower on a CUDA GPU: no cuDNN attention, boundary rows served from the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import gather_top1, text_source, text_tower_setup

from tcf.experiment import prepared_data
from tcf.rec.trainer import build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    return text_tower_setup(tmp_path_factory.mktemp("text"), small_dataset)


def test_fine_tuned_tower_keeps_off_cudnn_attention_on_cuda(setup):
    """cuDNN's attention builds a plan for every new batch shape; the tower's shape changes every batch."""
    root, config, _ = setup
    cfg, source = text_source(root, config, unfreeze=1)
    data = prepared_data(cfg)
    tower = build_model(cfg, data, source).item_tower.cuda()
    tower.train()
    ids = torch.arange(1, data.n_items + 1, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            tower(ids).float().sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert not any("cudnn_attention" in op for op in ops), sorted(op for op in ops if "attention" in op)
    assert any("scaled_dot_product" in op for op in ops)  # the blocks do run SDPA


def test_latent_gather_serves_rows_from_its_gpu_copy(setup):
    gather, full, lengths = gather_top1(setup)
    try:
        gather.prefetch(np.array([1, 2]))
        x, mask = gather.take(np.array([4, 0, 9]), torch.device("cuda"))
        assert gather._cache is not None and gather._pending is None
        longest = int(lengths[[4, 0, 9]].max())
        assert torch.equal(x.cpu(), full[[4, 0, 9], :longest])
        assert mask.sum(1).tolist() == lengths[[4, 0, 9]].tolist()
    finally:
        gather.close()
