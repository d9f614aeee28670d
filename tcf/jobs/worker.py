"""``tcf worker``: take queued jobs and run each as its own OS process on free GPUs (or the CPU).

A worker owns a set of devices (``--gpus 0,1``; ``all``: every GPU NVML sees; none: the CPU, one
job at a time). For each ready job it picks free devices whose free memory (NVML) covers the job's
planned need, waiting while it does not, and starts ``python -m tcf.jobs.job_main`` — through
``torchrun`` when the job asks for several devices — with ``CUDA_VISIBLE_DEVICES`` set (PCI bus
order, as NVML counts), in its own process group, stdout and stderr to ``artifacts/logs/job-N.log``.

Jobs outlive their worker: a SIGKILLed worker leaves its jobs running, and they record their own
end; the next worker counts their devices as busy. Dead jobs (process gone, PID reused, heartbeat
silent) are recorded as ``lost`` when a worker starts and every few seconds after. Ctrl-C (or
SIGTERM) once: take no new jobs and wait for the running ones; twice: cancel them (SIGTERM) and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tcf.errors import ConfigError
from tcf.jobs import queue as q
from tcf.store.db import JOB_ENV, Store
from tcf.util.gpu import GpuProvider, get_provider
from tcf.util.process import hostname, start_time
from tcf.util.units import format_bytes

CPU = "cpu"
DEFAULT_NEED = 1 << 30  # free memory a GPU must have for a job that states no need
KILL_AFTER_S = 30.0  # after a SIGTERM, a job that has not stopped gets SIGKILL
REAP_EVERY_S = 5.0


def parse_gpus(text: str | None, provider: GpuProvider) -> list[str]:
    """``None`` or ``all``: every GPU NVML sees (the CPU when there is none); ``0,2``: those GPUs."""
    if text is None or text.strip() == "all":
        count = provider.device_count() if provider.available else 0
        return [str(i) for i in range(count)] or [CPU]
    if text.strip() == CPU:
        return [CPU]
    try:
        gpus = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ConfigError(None, "gpus", f"expected 'all', 'cpu' or GPU indices like 0,1; got {text!r}") from None
    if not gpus:
        raise ConfigError(None, "gpus", "no GPU given")
    if not provider.available:
        raise ConfigError(None, "gpus", f"{text}: {provider.reason}")
    count = provider.device_count()
    bad = [g for g in gpus if g >= count]
    if bad:
        raise ConfigError(None, "gpus", f"no GPU {bad[0]} (NVML sees {count})")
    return [str(g) for g in gpus]


@dataclass
class Running:
    job: q.Job
    proc: subprocess.Popen
    devices: list[str]
    log: TextIO
    term_sent: float | None = None


@dataclass
class Worker:
    """Runs queued jobs from ``db`` on ``devices`` until stopped, ``max_jobs`` are done, or (with
    ``exit_when_idle``) nothing is left that it could run."""

    db: Path
    devices: list[str]
    max_jobs: int | None = None
    exit_when_idle: bool = False
    provider: GpuProvider | None = None
    poll_s: float = 0.5
    say: Callable[[str], None] = print
    running: dict[int, Running] = field(default_factory=dict)
    started: int = 0
    draining: bool = False
    cancelling: bool = False

    def __post_init__(self) -> None:
        self.db = Path(self.db).resolve()
        self.store = Store(self.db)
        self.provider = self.provider or get_provider()
        self.logs = self.db.parent / "artifacts" / "logs"
        self.status = ""
        self.on_cpu = self.devices == [CPU]

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """The worker loop; returns the number of jobs it started."""
        self.id = q.register_worker(self.store, os.getpid(), start_time(os.getpid()), ",".join(self.devices))
        self.say(f"worker {self.id} on {hostname()}: devices {', '.join(self.devices)}")
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last_reap = 0.0
        try:
            while True:
                self._reap_children()
                self._forward_cancels()
                if time.monotonic() - last_reap >= REAP_EVERY_S:
                    last_reap = time.monotonic()
                    for job_id in q.reap_lost(self.store, skip=self.running.keys()):
                        self.say(f"job {job_id} lost: its process died without reporting")
                    q.worker_heartbeat(self.store, self.id, self.status)
                if not (self.draining or self.cancelling) and not self._at_max():
                    while self._start_next():
                        pass
                if not self.running and (self.draining or self.cancelling or self._at_max() or
                                         (self.exit_when_idle and self._idle())):
                    break
                time.sleep(self.poll_s)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            q.worker_heartbeat(self.store, self.id, "stopped", stopped=True)
        self.say(f"worker {self.id} stopped after starting {self.started} job(s)")
        return self.started

    def _at_max(self) -> bool:
        return self.max_jobs is not None and self.started >= self.max_jobs

    def _signal(self, signum: int, frame: Any) -> None:
        if not self.draining:
            self.draining = True
            self.say("stopping: no new jobs; waiting for the running ones (Ctrl-C again cancels them)")
        else:
            self.cancelling = True
            self.say("cancelling the running jobs")
            for r in self.running.values():
                self._terminate(r)

    def _capacity(self, job: q.Job) -> bool:
        """Whether this worker can ever run ``job``: on the CPU any number of (gloo) ranks, else enough GPUs."""
        return self.on_cpu or job.gpus <= len(self.devices)

    def _idle(self) -> bool:
        """Nothing queued that this worker could ever run (blocked jobs wait for a retry, not for us)."""
        return not any(self._capacity(j) for j in q.list_jobs(self.store, states=("queued",)))

    def _free_devices(self) -> list[str]:
        """The CPU is one slot per worker; a GPU is free when no live job of this host holds it."""
        if self.on_cpu:
            return [] if self.running else [CPU]
        busy = q.busy_devices(self.store)
        return [d for d in self.devices if d not in busy]

    def _free_memory(self, device: str) -> int | None:
        if device == CPU or not self.provider.available:
            return None
        return self.provider.info(int(device)).free_bytes

    def _start_next(self) -> bool:
        free = self._free_devices()
        if not free:
            return False
        slots = 1_000_000 if self.on_cpu else len(free)  # a CPU job with N ranks runs N gloo ranks
        job = q.next_ready(self.store, slots)
        if job is None:
            self.status = "idle" if not self.running else self.status
            return False
        if self.on_cpu:
            chosen = [CPU]
        else:
            need = job.mem_bytes or DEFAULT_NEED
            fits = [d for d in free if (self._free_memory(d) or 0) >= need]
            if len(fits) < job.gpus:
                self.status = (f"job {job.id} waits for {format_bytes(need)} free on {job.gpus} GPU(s); free: "
                               + ", ".join(f"GPU {d} {format_bytes(self._free_memory(d) or 0)}" for d in free))
                return False
            chosen = fits[:job.gpus]
        claimed = q.claim(self.store, self.id, ",".join(chosen), slots, job_id=job.id)
        if claimed is None:  # another worker took the job or a GPU first: look again next round
            return False
        self._launch(claimed, chosen)
        return True

    def _launch(self, job: q.Job, devices: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"job-{job.id}.log"
        # a retry appends to its job's log; a first attempt starts it afresh (a store made anew in this folder
        # numbers its jobs from 1 again)
        log = open(log_path, "a" if job.attempts > 1 else "w", buffering=1)  # noqa: SIM115 - closed at the end
        log.write(f"=== attempt {job.attempts} on {hostname()} devices {','.join(devices)} "
                  f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        env = {**os.environ, JOB_ENV: str(job.id), "TCF_JOB_DEVICES": ",".join(devices),
               "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1",
               "CUDA_VISIBLE_DEVICES": "" if devices == [CPU] else ",".join(devices)}
        target = ["-m", "tcf.jobs.job_main", "--db", str(self.db), str(job.id)]
        ranks = job.gpus
        argv = ([sys.executable, *target] if ranks == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *target])
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as e:
            log.close()
            q.finish_job(self.store, job.id, "failed", error=f"cannot start the job process: {e}")
            return
        q.set_process(self.store, job.id, proc.pid, start_time(proc.pid), str(log_path))
        self.running[job.id] = Running(job, proc, devices, log)
        self.started += 1
        where = "the CPU" if devices == [CPU] else "GPU " + ",".join(devices)
        self.say(f"job {job.id} ({job.kind}) {job.name}: started on {where}, pid {proc.pid}, log {log_path}")
        self.status = f"running {len(self.running)} job(s)"

    # -- supervising ---------------------------------------------------------------------------------

    def _reap_children(self) -> None:
        for job_id, r in list(self.running.items()):
            code = r.proc.poll()
            if code is None:
                continue
            r.log.close()
            del self.running[job_id]
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if r.term_sent is not None or q.get_job(self.store, job_id).cancel_requested:
                # stopped as asked (a SIGTERM before its handlers were set ends a starting job at once)
                state, error = "cancelled", f"cancelled ({how})"
            else:
                state, error = "lost", f"lost: the job process ended ({how}) without recording its end"
            if q.finish_job(self.store, job_id, state, error=error, exit_code=code, attempt=r.job.attempts):
                self.say(f"job {job_id} {state} ({how})")
            else:
                self.say(f"job {job_id} {q.get_job(self.store, job_id).state} ({how})")

    def _forward_cancels(self) -> None:
        for r in self.running.values():
            if r.term_sent is None and q.get_job(self.store, r.job.id).cancel_requested:
                self._terminate(r)
            elif r.term_sent is not None and time.monotonic() - r.term_sent > KILL_AFTER_S:
                self._killpg(r, signal.SIGKILL)

    def _terminate(self, r: Running) -> None:
        if r.term_sent is None:
            r.term_sent = time.monotonic()
            self._killpg(r, signal.SIGTERM)

    def _killpg(self, r: Running, sig: int) -> None:
        try:
            os.killpg(r.proc.pid, sig)
        except ProcessLookupError:
            pass
