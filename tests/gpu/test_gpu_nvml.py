"""NVML on a real GPU machine."""

from __future__ import annotations

from tcf.util.gpu import NvmlProvider, free_memory, get_provider


def test_nvml_provider_reads_real_gpus():
    p = get_provider()
    assert isinstance(p, NvmlProvider)
    gpus = p.all()
    assert gpus and all(g.total_bytes >= g.free_bytes >= 0 for g in gpus)
    assert free_memory(0, p) == p.info(0).free_bytes or free_memory(0, p) is not None
