"""How many CPU threads torch computes with: the cores that are actually free, waiting passively.

torch's default is one intra-op thread per core, and OpenMP threads spin while they wait for each other.
On a shared 2-core machine that is a disaster: a SASRec epoch of the demo took 21-26 s with 2 threads
against 3.3 s with 1 under the same load, because each spinning thread fights the other processes for
the core the slowest thread needs. So:

- OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, read by libgomp when torch is first loaded:
  :func:`wait_passively` runs when ``tcf`` is imported, before anything imports torch);
- the count is, in order: ``OMP_NUM_THREADS`` as the user set it (it always wins), ``train.threads``,
  else the cores this process may use (``sched_getaffinity``) minus those busy now (the larger of the
  1-minute load average and a 0.2 s sample of ``/proc/stat``), shared among the ranks of this machine;
- the count is chosen once per process (the demo's five runs use one count, not one that our own
  first run's load lowered) and recorded with every run (``runs.threads``): CPU results depend on it,
  and at a fixed count they repeat exactly.

Usage::

    choice = choose_threads(pinned=cfg.train.threads)   # ThreadChoice(threads=1, source="free cores", ...)
    apply_threads(choice)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

from tcf.util.host import cpu_times

#: OMP_NUM_THREADS as the user's environment had it when tcf was imported (before anything set it).
USER_OMP = os.environ.get("OMP_NUM_THREADS")
SAMPLE_S = 0.2  # how long /proc/stat is watched for the cores busy right now


def wait_passively() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the user chose a policy): called before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count and why: ``OMP_NUM_THREADS``, ``train.threads`` or ``free cores``."""

    threads: int
    source: str
    cores: int  # the cores this process may run on
    busy: float | None = None  # cores busy when chosen (free cores only)

    def describe(self) -> str:
        """One line for the user: ``1 CPU thread (1 of 2 cores free)``."""
        unit = "thread" if self.threads == 1 else "threads"
        if self.source == "free cores":
            free = max(0.0, self.cores - (self.busy or 0.0))
            why = f"{free:.1f} of {self.cores} cores free; train.threads or OMP_NUM_THREADS pins it"
        else:
            why = f"set by {self.source}"
        return f"{self.threads} CPU {unit} ({why})"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores busy with other work: the larger of the 1-minute load average (slow to see a new load) and
    a short sample of /proc/stat (sees a process that started a second ago)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    before = cpu_times()
    if before is None:
        return load
    time.sleep(sample_s)
    after = cpu_times()
    if after is None or after[1] <= before[1]:
        return load
    share = (after[0] - before[0]) / (after[1] - before[1])
    return max(load, share * (os.cpu_count() or 1))


def threads_for(cores: int, busy: float, ranks: int = 1) -> int:
    """The threads each of ``ranks`` processes should use on ``cores`` when ``busy`` of them are taken:
    the free cores rounded to the nearest whole one, shared among the ranks, at least 1."""
    free = int(cores - busy + 0.5)
    return max(1, min(cores, free) // max(1, ranks))


def _positive(text: str) -> int | None:
    return int(text) if text.strip().isdigit() and int(text) > 0 else None


@lru_cache(maxsize=1)
def _free_core_choice(ranks: int) -> ThreadChoice:
    cores, busy = usable_cores(), busy_cores()
    return ThreadChoice(threads_for(cores, busy, ranks), "free cores", cores, round(busy, 2))


def choose_threads(pinned: int | None = None) -> ThreadChoice:
    """The thread count of this process: the user's ``OMP_NUM_THREADS``, else ``pinned`` (``train.threads``),
    else the free cores (measured once per process, shared among the local ranks of a torchrun job)."""
    user = _positive(USER_OMP) if USER_OMP is not None else None
    if user is not None:
        return ThreadChoice(user, "OMP_NUM_THREADS", usable_cores())
    if pinned is not None:
        return ThreadChoice(pinned, "train.threads", usable_cores())
    return _free_core_choice(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def apply_threads(choice: ThreadChoice) -> None:
    """Make torch compute with ``choice.threads`` intra-op threads (from now on, in this process)."""
    import torch

    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
