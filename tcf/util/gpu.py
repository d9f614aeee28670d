"""GPU memory and utilisation, from NVML when it is there and from a stated absence when it is not.

Three providers share one small interface (``available``, ``reason``, ``device_count()``, ``info(i)``,
``all()``): :class:`NvmlProvider` (real GPUs through ``pynvml``), :class:`NullProvider` (no GPU; says why)
and :class:`FakeProvider` (configurable GPUs for tests and UI previews)::

    provider = get_provider()
    if provider.available:
        for gpu in provider.all():
            print(gpu.index, gpu.name, gpu.free_bytes)
    else:
        print(provider.reason)          # e.g. "NVML unavailable: NVML Shared Library Not Found"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tcf.errors import TcfError


class GpuError(TcfError):
    """A GPU query failed (bad index, NVML error after initialisation, no provider)."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU at one moment. ``util_percent`` is None where the device does not report it (e.g. MIG)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    util_percent: int | None


class GpuProvider(Protocol):
    available: bool
    reason: str | None

    def device_count(self) -> int: ...

    def info(self, index: int) -> GpuInfo: ...

    def all(self) -> list[GpuInfo]: ...


class NullProvider:
    """No GPU information at all; ``reason`` says why, and every query answers 'no GPUs'."""

    available = False

    def __init__(self, reason: str):
        self.reason = reason

    def device_count(self) -> int:
        return 0

    def info(self, index: int) -> GpuInfo:
        raise GpuError(f"no GPU {index}: {self.reason}")

    def all(self) -> list[GpuInfo]:
        return []

    def __repr__(self) -> str:
        return f"NullProvider({self.reason!r})"


class FakeProvider:
    """Configurable GPUs for tests and previews; ``set(index, free_bytes=..., util_percent=...)`` moves them.

    ``FakeProvider([GpuInfo(0, "H200", 141 << 30, 100 << 30, 41 << 30, 7)])`` or
    ``FakeProvider.uniform(2, total_bytes=80 << 30)``.
    """

    available = True
    reason = None

    def __init__(self, gpus: list[GpuInfo]):
        for i, gpu in enumerate(gpus):
            if gpu.index != i:
                raise ValueError(f"FakeProvider: GPU at position {i} has index {gpu.index}")
        self._gpus = list(gpus)

    @classmethod
    def uniform(cls, count: int, *, name: str = "Fake GPU", total_bytes: int = 80 << 30,
                free_bytes: int | None = None, util_percent: int | None = 0) -> FakeProvider:
        free = total_bytes if free_bytes is None else free_bytes
        return cls([GpuInfo(i, name, total_bytes, free, total_bytes - free, util_percent) for i in range(count)])

    def set(self, index: int, *, free_bytes: int | None = None, util_percent: int | None = None) -> None:
        old = self.info(index)
        free = old.free_bytes if free_bytes is None else free_bytes
        util = old.util_percent if util_percent is None else util_percent
        self._gpus[index] = GpuInfo(index, old.name, old.total_bytes, free, old.total_bytes - free, util)

    def device_count(self) -> int:
        return len(self._gpus)

    def info(self, index: int) -> GpuInfo:
        if not 0 <= index < len(self._gpus):
            raise GpuError(f"no GPU {index}: {len(self._gpus)} fake GPU(s)")
        return self._gpus[index]

    def all(self) -> list[GpuInfo]:
        return list(self._gpus)


class NvmlProvider:
    """Real GPUs through NVML. Initialises on first use; a failed initialisation leaves
    ``available == False`` and ``reason == "NVML unavailable: <why>"`` rather than raising.
    Errors on a single device after that raise :class:`GpuError` naming the device and NVML's message.
    """

    def __init__(self) -> None:
        self._state: bool | None = None  # None: not tried yet
        self._reason: str | None = None
        self._nvml = None

    def _init(self) -> bool:
        if self._state is None:
            try:
                import pynvml
            except ImportError as exc:  # nvidia-ml-py is a dependency, but say so clearly if it is missing
                self._state, self._reason = False, f"NVML unavailable: cannot import pynvml ({exc})"
                return False
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                self._state, self._reason = False, f"NVML unavailable: {exc}"
                return False
            except OSError as exc:  # a broken driver install can surface as a loader error
                self._state, self._reason = False, f"NVML unavailable: {exc}"
                return False
            self._nvml, self._state = pynvml, True
        return self._state

    @property
    def available(self) -> bool:
        return self._init()

    @property
    def reason(self) -> str | None:
        self._init()
        return self._reason

    def device_count(self) -> int:
        if not self._init():
            return 0
        try:
            return int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            raise GpuError(f"NVML: cannot count GPUs: {exc}") from exc

    def info(self, index: int) -> GpuInfo:
        if not self._init():
            raise GpuError(f"no GPU {index}: {self._reason}")
        nv = self._nvml
        count = self.device_count()
        if not 0 <= index < count:
            raise GpuError(f"no GPU {index}: NVML sees {count} GPU(s)")
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            name = nv.nvmlDeviceGetName(handle)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        except nv.NVMLError as exc:
            raise GpuError(f"NVML: GPU {index}: {exc}") from exc
        try:
            util: int | None = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nv.NVMLError:  # not supported on MIG instances and some virtual GPUs
            util = None
        if isinstance(name, bytes):  # older bindings return bytes
            name = name.decode(errors="replace")
        return GpuInfo(index, str(name), int(mem.total), int(mem.free), int(mem.used), util)

    def all(self) -> list[GpuInfo]:
        return [self.info(i) for i in range(self.device_count())]

    def close(self) -> None:
        """Release NVML (optional; the process exit does it too)."""
        if self._state:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
        self._state, self._nvml = None, None


def get_provider() -> NvmlProvider | NullProvider:
    """NVML if it initialises here, else a :class:`NullProvider` whose ``reason`` says why."""
    provider = NvmlProvider()
    if provider.available:
        return provider
    return NullProvider(provider.reason or "NVML unavailable")


def free_memory(device_index: int = 0, provider: GpuProvider | None = None) -> int | None:
    """Free bytes on one GPU: NVML first, then ``torch.cuda.mem_get_info``; None when neither can tell.

    NVML counts memory held by every process; CUDA's figure is the same device-wide number, but asking
    it creates a CUDA context in this process, so it is only the fallback.
    """
    provider = provider if provider is not None else get_provider()
    if provider.available:
        return provider.info(device_index).free_bytes
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or device_index >= torch.cuda.device_count():
        return None
    free, _total = torch.cuda.mem_get_info(device_index)
    return int(free)


def process_gpu_memory() -> dict[str, int]:
    """This process's CUDA memory (torch's allocator: in use, peak allocated, peak reserved) for a progress
    event or a heartbeat; {} when the process has no CUDA context (asking would create one)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"gpu_mem_bytes": torch.cuda.memory_allocated(), "gpu_peak_bytes": torch.cuda.max_memory_allocated(),
            "gpu_reserved_peak_bytes": torch.cuda.max_memory_reserved()}
