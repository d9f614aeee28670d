"""This machine's CPU and memory use, from /proc: what the dashboard shows where there is no GPU to show.

A CPU job's progress depends on the cores it gets and the memory left, so on a machine without NVML the GPU
panel draws these instead of an empty box::

    sampler = HostSampler()
    info = sampler.sample()      # HostInfo(cpu_percent=37.5, cores=2, mem_used_bytes=..., mem_total_bytes=...)
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class HostInfo:
    """One reading: the share of all cores busy since the previous reading (None at the first, or without
    /proc/stat) and memory in use (total minus available; None without /proc/meminfo)."""

    cpu_percent: float | None
    cores: int
    mem_used_bytes: int | None
    mem_total_bytes: int | None


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def memory() -> tuple[int, int] | None:
    """(used, total) bytes from /proc/meminfo (used = total - available); None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split()[1:2] != []}
    except (OSError, ValueError, IndexError):
        return None
    if "MemTotal" not in kib or "MemAvailable" not in kib:
        return None
    return (kib["MemTotal"] - kib["MemAvailable"]) << 10, kib["MemTotal"] << 10


class HostSampler:
    """Successive readings of this machine; the CPU share is over the time between two calls."""

    def __init__(self) -> None:
        self._last = cpu_times()

    def sample(self) -> HostInfo:
        now, before = cpu_times(), self._last
        self._last = now
        cpu = None
        if now is not None and before is not None and now[1] > before[1]:
            cpu = 100.0 * (now[0] - before[0]) / (now[1] - before[1])
        mem = memory()
        return HostInfo(cpu, os.cpu_count() or 1, *(mem if mem is not None else (None, None)))
