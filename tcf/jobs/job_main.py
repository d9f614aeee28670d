"""The job process: ``python -m tcf.jobs.job_main --db experiments.db JOB_ID`` (a worker starts it).

On Slurm (``--job-dir FOLDER``, from the batch script tcf.jobs.slurm writes) it never opens experiments.db:
it reads its job from ``FOLDER/job.json`` and records everything (run, epochs, metrics, events, artifacts, its
start, heartbeats and end) in ``FOLDER/records-<attempt>.jsonl`` (tcf.store.records), which the coordinator
merges. ``--db`` then only says where the artifacts and checkpoints live (beside it).

It runs one queued job (pre-inference or a training run) and records how it ended, so a job never
stays "running" after it stops: finished, failed (an error, with its message), or cancelled (SIGTERM
or SIGINT, e.g. ``tcf queue cancel``). A heartbeat thread proves it is alive every few seconds and
records its peak GPU memory. Under torchrun (a multi-GPU job) every rank runs this; rank 0 records.
A second attempt of a job continues where the first stopped: pre-inference from its last committed
block range, training from the run's last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.store.db import JOB_ENV
from tcf.util.gpu import process_gpu_memory
from tcf.util.progress import Reporter, stage_label


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


class LogReporter(Reporter):
    """Progress as plain log lines (the job's log file is the worker's view of its output): a line per stage,
    epoch and block range, and one every 10 s within a range."""

    def __init__(self) -> None:
        self.last = 0.0

    def stage(self, name: str, total: int | None = None, epoch: int | None = None) -> None:
        _say(stage_label(name, epoch) + (f" ({total} steps)" if total else ""))

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items())
        _say(f"epoch {epoch}: loss {loss:.4f}  {seconds:.1f} s  {shown}")

    def range_start(self, i: int, start: int, stop: int, n_items: int) -> None:
        _say(f"range {i}: blocks {start}:{stop}, {n_items} items")

    def progress(self, items_done: int, n_items: int, items_per_s: float) -> None:
        if time.monotonic() - self.last >= 10:
            self.last = time.monotonic()
            _say(f"  {items_done}/{n_items} items, {items_per_s:,.0f} items/s")

    def range_end(self, i: int, seconds: float) -> None:
        _say(f"range {i} committed in {seconds:.1f} s")


RECORD_BEAT_S = 30.0  # a Slurm job's heartbeat record (its liveness is Slurm's to tell; this carries its peak)


def _heartbeats(db: Path, job_id: int, attempt: int, stop: threading.Event, writer: Any = None) -> None:
    from tcf.jobs.queue import HEARTBEAT_S, heartbeat
    from tcf.store.db import Store

    store = Store(db) if writer is None else None  # this thread's own connection
    try:
        while not stop.wait(HEARTBEAT_S if writer is None else RECORD_BEAT_S):
            try:
                peak = process_gpu_memory().get("gpu_reserved_peak_bytes")
                writer.heartbeat(peak) if writer is not None else heartbeat(store, job_id, peak, attempt)
            except Exception as e:  # noqa: BLE001 - a missed beat must not kill the job; the next one retries
                _say(f"heartbeat failed: {e}")
    finally:
        if store is not None:
            store.close()


def _interrupt(signum: int, frame: Any) -> None:
    """The first SIGTERM/SIGINT stops the job; later ones (a cancel and the worker forwarding it both send
    one) are ignored, so this raises at most once per process and the job records its end in peace: its
    worker SIGKILLs it if that takes too long."""
    _ignore_signals()
    raise KeyboardInterrupt(signal.Signals(signum).name)


_early: list[int] = []  # SIGTERM/SIGINT that came before run_job set its handlers


def _remember(signum: int, frame: Any) -> None:
    _early.append(signum)


def _ignore_signals() -> None:
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def _physical_gpu() -> int:
    """The NVML index of this rank's GPU (CUDA_VISIBLE_DEVICES renumbers them from 0 for torch)."""
    devices = [d for d in os.environ.get("TCF_JOB_DEVICES", "").split(",") if d.isdigit()]
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return int(devices[local]) if local < len(devices) else 0


def _open_job(db: Path, job_id: int, job_dir: Path | None, main_rank: bool) -> tuple[Any, Any, Any]:
    """(job, store, record writer): from experiments.db for a local worker's job; from the job's folder for a
    Slurm job, whose main rank records through its one RecordWriter (the other ranks record nothing)."""
    from tcf.store.records import RecordWriter, install, record_file

    if job_dir is None:
        from tcf.jobs.queue import get_job
        from tcf.store.db import Store

        store = Store(db)
        return get_job(store, job_id), store, None
    from tcf.jobs.records import read_spec

    job = read_spec(job_dir)
    if job.id != job_id:
        raise TcfError(f"{job_dir}: describes job {job.id}, not job {job_id}")
    writer = RecordWriter(record_file(job_dir, job.attempts), job_id, job.run) if main_rank else None
    install(writer)
    if writer is not None:
        writer.start(slurm_job=os.environ.get("SLURM_JOB_ID"), restarts=os.environ.get("SLURM_RESTART_COUNT"),
                     node=os.environ.get("SLURMD_NODENAME"))
    return job, writer, writer


def run_job(db: Path, job_id: int, job_dir: Path | None = None) -> int:
    """Run job ``job_id`` of ``db`` in this process (a Slurm job: described in, and recording to, ``job_dir``);
    returns the exit code."""
    from tcf.util.dist import shutdown

    os.environ[JOB_ENV] = str(job_id)  # every Store opened below tags its events with the job
    main_rank = int(os.environ.get("RANK", "0")) == 0
    job, store, writer = _open_job(db, job_id, job_dir, main_rank)
    stop = threading.Event()
    state, error, code, artifact = "finished", None, 0, None
    # Every KeyboardInterrupt that _interrupt raises (at most one) lands inside this try: the handlers are set
    # inside it, and from the end of the work on signals are ignored, so the end is recorded whatever comes.
    try:
        try:
            signal.signal(signal.SIGTERM, _interrupt)
            signal.signal(signal.SIGINT, _interrupt)
            if main_rank:
                threading.Thread(target=_heartbeats, args=(db, job_id, job.attempts, stop, writer), daemon=True,
                                 name="heartbeat").start()
            _say(f"job {job_id} ({job.kind}) {job.name}: attempt {job.attempts}, devices {job.devices}")
            # cancelled while its process started: a signal remembered, or (a local job) a cancel requested
            if _early or (writer is None and job_dir is None and _cancel_requested(store, job_id)):
                _ignore_signals()
                raise KeyboardInterrupt(f"{signal.Signals(_early[0]).name if _early else 'cancel'} before it started")
            artifact = _work(job, db, store, main_rank)
        finally:
            _ignore_signals()  # the work is over: a cancel that comes now stops nothing
    except KeyboardInterrupt as e:
        state, error, code = "cancelled", f"cancelled ({e or 'SIGINT'})", 130
    except TcfError as e:
        state, error, code = "failed", str(e), 2
    except BaseException as e:  # noqa: BLE001 - recorded, with the traceback in the log
        traceback.print_exc()
        state, error, code = "failed", f"{type(e).__name__}: {e}", 1
    stop.set()
    shutdown()
    if writer is not None:
        writer.end(state, error, code, artifact)
        writer.close()
    elif main_rank and job_dir is None:
        from tcf.jobs.queue import finish_job

        finish_job(store, job_id, state, error=error, exit_code=code, artifact=artifact, attempt=job.attempts)
    _say(f"job {job_id} {state}" + (f": {error}" if error else ""))
    return code


def _cancel_requested(store: Any, job_id: int) -> bool:
    from tcf.jobs.queue import get_job

    return get_job(store, job_id).cancel_requested


def _work(job: Any, db: Path, store: Any, main_rank: bool) -> str | None:
    """The job's work: a pre-inference (returns its artifact) or a training run (resumed on a retry)."""
    import torch

    from tcf.config import Config
    from tcf.experiment import run_experiment
    from tcf.preinfer.encode import run_infer_job
    from tcf.util.dist import init_distributed
    from tcf.util.threads import apply_threads, choose_threads

    cfg = Config.model_validate(job.config)
    keep = tuple(job.spec.get("keep_depths", ()))
    threads = choose_threads(cfg.train.threads)  # the cores free as the job starts (recorded with its run)
    apply_threads(threads)
    _say(f"computing with {threads.describe()}")
    if job.kind == "infer":
        ctx = init_distributed("auto")
        device = ctx.device if ctx.distributed else (
            torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
        path, reused = run_infer_job(cfg, db, device=device, gpu=_physical_gpu(), keep_depths=keep,
                                     ui=LogReporter() if main_rank else None)
        _say(("reused " if reused else "wrote ") + str(path))
        return str(path)
    resume = None
    if job.run_id is not None:
        run = store.get_run(job.run_id) if store is not None else job.run  # a Slurm job's other ranks: as submitted
        if run["status"] == "finished":
            _say(f"run {job.run_id} already finished")
            return None
        resume = job.run_id
        _say(f"resuming run {resume} from its last checkpoint")
    result = run_experiment(cfg, db, reporter=LogReporter(), resume_run_id=resume,
                            ctx=init_distributed(cfg.train.device), keep_depths=keep)
    _say(f"run {result.run_id} finished ({result.protocol} protocol): " + "  ".join(  # None: not applicable
        f"{k} {'n/a' if v is None else f'{100 * v:.2f}'}" for k, v in result.metrics.items() if k.startswith("test_")))
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tcf.jobs.job_main", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--job-dir", type=Path, help="a Slurm job's folder: job.json in, records out; "
                                                        "experiments.db is never opened")
    parser.add_argument("job_id", type=int)
    for s in (signal.SIGTERM, signal.SIGINT):  # a cancel while the job opens its store is acted on, not lost
        signal.signal(s, _remember)
    args = parser.parse_args(argv)
    try:
        code = run_job(args.db.resolve(), args.job_id, args.job_dir.resolve() if args.job_dir else None)
    except TcfError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
