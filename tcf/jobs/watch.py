"""Following a job from outside its process: waiting for its end and reading its log as it grows.

What task-spooler users expect of ``ts -w`` and ``ts -t``: ``tcf queue wait ID`` blocks until the job ends and
exits with the job's outcome, ``tcf logs ID --follow`` prints the log as the job writes it and stops when the
job has ended and its log is read to the end. Both only read experiments.db and the log file::

    job = wait_for(store, 7)               # polls until finished, failed, cancelled or lost
    sys.exit(exit_status(job))             # 0 only when it finished
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tcf.errors import TcfError
from tcf.jobs.queue import TERMINAL, Job, get_job
from tcf.store.db import Store
from tcf.util.process import hostname

POLL_S = 0.5


def ended(job: Job) -> bool:
    """Whether the job is over as a person sees it: finished, failed, cancelled, or lost (its process gone,
    recorded or not)."""
    return job.display in TERMINAL


def exit_status(job: Job) -> int:
    """A shell's exit status for how the job ended: 0 finished; a failure its process's exit code (1 when it had
    none); cancelled 130; killed by a signal 128 + its number."""
    if job.display == "finished":
        return 0
    code = job.exit_code
    if job.display == "cancelled":
        return 130
    if code is None or code == 0:
        return 1
    return 128 - code if code < 0 else code


def wait_for(store: Store, job_id: int, poll_s: float = POLL_S, on_change: Callable[[Job], None] | None = None,
             sleep: Callable[[float], None] = time.sleep, refresh: Callable[[], None] | None = None) -> Job:
    """Poll the job until it has ended; ``on_change`` hears every state it passes through (queued, running,
    blocked, ...); ``refresh`` runs before each look (merging a Slurm job's records). A job id that does not
    exist is an error at once."""
    shown = None
    while True:
        if refresh is not None:
            refresh()
        job = get_job(store, job_id)
        if job.display != shown and on_change is not None:
            on_change(job)
        shown = job.display
        if ended(job):
            return job
        sleep(poll_s)


def log_file(job: Job) -> Path | None:
    """The job's log on this machine; None while it has none (queued, never started). A log of another host
    is an error naming it."""
    if not job.log_path:
        return None
    path = Path(job.log_path)
    if not path.exists():
        where = f" on {job.host}" if job.host and job.host != hostname() else ""
        raise TcfError(f"job {job.id}: its log {path}{where} cannot be read here")
    return path


def stream_log(store: Store, job_id: int, write: Callable[[str], None], follow: bool = False,
               poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep,
               refresh: Callable[[], None] | None = None) -> Job:
    """Write the job's log; with ``follow``, keep writing what the job appends (waiting for a queued job to
    start) until it has ended and the log is read to its end. A log that shrinks (a new attempt started it
    afresh) is read again from its start; ``refresh`` runs before each look, as for :func:`wait_for`."""
    offset = 0
    while True:
        if refresh is not None:
            refresh()
        job = get_job(store, job_id)
        done = ended(job)  # read before the file: what the job wrote before it ended is in it
        path = log_file(job)
        if path is None and not follow:
            raise TcfError(f"job {job_id} has no log yet: it is {job.display}")
        if path is not None:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                offset = 0 if size < offset else offset
                f.seek(offset)
                data = f.read()
            offset += len(data)
            if data:
                write(data.decode("utf-8", errors="replace"))
        if not follow or done:
            return job
        sleep(poll_s)
