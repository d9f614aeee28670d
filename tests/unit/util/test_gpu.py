"""GPU providers: NVML absent on the test machine, fake GPUs, the free-memory helper."""

from __future__ import annotations

import pytest

from tcf.errors import TcfError
from tcf.util.gpu import FakeProvider, GpuInfo, NullProvider, NvmlProvider, free_memory, get_provider


def _has_nvml() -> bool:
    return NvmlProvider().available


@pytest.mark.skipif(_has_nvml(), reason="this machine has NVML")
def test_get_provider_without_nvml_is_null_with_reason():
    provider = get_provider()
    assert isinstance(provider, NullProvider)
    assert provider.available is False
    assert provider.reason.startswith("NVML unavailable")
    assert provider.device_count() == 0 and provider.all() == []
    with pytest.raises(TcfError, match="NVML unavailable"):
        provider.info(0)


@pytest.mark.skipif(_has_nvml(), reason="this machine has NVML")
def test_nvml_provider_failed_init_is_a_state_not_an_exception():
    p = NvmlProvider()
    assert p.available is False
    assert p.reason.startswith("NVML unavailable: ")
    assert p.device_count() == 0 and p.all() == []
    with pytest.raises(TcfError, match="no GPU 0"):
        p.info(0)


def test_fake_provider():
    p = FakeProvider.uniform(2, name="H200", total_bytes=141 << 30, free_bytes=100 << 30, util_percent=5)
    assert p.available and p.reason is None and p.device_count() == 2
    g = p.info(1)
    assert g == GpuInfo(1, "H200", 141 << 30, 100 << 30, 41 << 30, 5)
    p.set(1, free_bytes=10 << 30, util_percent=99)
    assert p.info(1).used_bytes == 131 << 30 and p.info(1).util_percent == 99
    assert p.info(0).free_bytes == 100 << 30
    assert free_memory(1, p) == 10 << 30
    with pytest.raises(TcfError, match="no GPU 2"):
        p.info(2)
    with pytest.raises(ValueError):
        FakeProvider([GpuInfo(1, "x", 1, 1, 0, 0)])


def test_free_memory_without_any_gpu_is_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert free_memory(0, NullProvider("NVML unavailable: test")) is None


def test_free_memory_falls_back_to_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (123, 456))
    assert free_memory(0, NullProvider("NVML unavailable: test")) == 123
    assert free_memory(3, NullProvider("NVML unavailable: test")) is None
