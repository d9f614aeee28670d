"""A job's records: what a job process on a compute node would have written to experiments.db, kept in a file.

SQLite's locking does not work across machines on a network filesystem, so a Slurm job never opens
experiments.db. Its process installs a :class:`RecordWriter` (:func:`install`), and every place that records a
run, an epoch, metrics, an artifact or a progress event gets it from :func:`open_store` instead of a
:class:`~tcf.store.db.Store`: the same method calls, appended to ``records-<attempt>.jsonl`` in the job's folder.
The coordinator replays them through the same Store methods (:func:`apply`; tcf.jobs.records merges), so the
tables have one writer and one code path whichever machine ran the job.

One line per record, appended by one writer, fsynced::

    {"seq": 7, "time": "2025-01-01T12:00:00+00:00", "op": "log_epoch", "args": {"run_id": 3, "epoch": 2, ...}}

``seq`` counts from 1 in each file. A reader takes the complete lines in sequence and stops at the first that is
cut short (no newline yet: a write in flight, or a process killed mid-write) or out of sequence; it is read
again, whole, next time. A writer that reopens the file (a requeued job) drops such a tail and continues the count.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.store.db import Store, now_iso
from tcf.util.process import hostname, start_time

#: Store methods a job process calls, replayed by :func:`apply`; the job's own life is recorded by the rest.
STORE_OPS = ("claim_run", "set_status", "add_inputs", "log_epoch", "log_final", "register_artifact", "log_event")
JOB_OPS = ("start", "heartbeat", "end")


@dataclass(frozen=True)
class Record:
    seq: int
    time: str
    op: str
    args: dict[str, Any]


def record_file(folder: Path, attempt: int) -> Path:
    """The records of one attempt of a job (a retry is a new attempt, and a new file)."""
    return Path(folder) / f"records-{attempt}.jsonl"


def read_records(path: Path) -> tuple[list[Record], int]:
    """The complete records of ``path`` in order, and the byte length they span (a tail after it is unfinished).

    A missing file has none. Reading never changes the file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[Record] = []
    end = 0
    while True:
        newline = data.find(b"\n", end)
        if newline < 0:
            break
        try:
            raw = json.loads(data[end:newline])
            rec = Record(int(raw["seq"]), str(raw["time"]), str(raw["op"]), dict(raw["args"]))
        except (ValueError, KeyError, TypeError):
            break  # cut short and completed by another writer's bytes: never happens with one writer; stop here
        if rec.seq != len(records) + 1:
            break
        records.append(rec)
        end = newline + 1
    return records, end


class RecordWriter:
    """The store of a job process that may not open experiments.db: the Store methods a job calls, each
    appended as one record (thread-safe: the heartbeat thread writes too). Reads (``get_run``) answer from the
    run as the coordinator wrote it into the job's folder at submit, with this file's own records applied."""

    def __init__(self, path: Path, job_id: int, run: dict[str, Any] | None = None):
        self.path = Path(path)
        self.job_id = job_id
        self._run = copy.deepcopy(run) if run else None
        self._lock = threading.Lock()
        records, end = read_records(self.path)
        for rec in records:
            self._fold(rec.op, rec.args)
        self._seq = len(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(self._fd).st_size > end:
            os.ftruncate(self._fd, end)  # an earlier process of this attempt died mid-write: drop its half line

    def _append(self, op: str, **args: Any) -> None:
        with self._lock:
            self._fold(op, args)
            line = json.dumps({"seq": self._seq + 1, "time": now_iso(), "op": op, "args": args},
                              sort_keys=True, default=str) + "\n"
            os.write(self._fd, line.encode())
            os.fsync(self._fd)
            self._seq += 1

    def _fold(self, op: str, args: dict[str, Any]) -> None:
        run = self._run
        if run is None or args.get("run_id") != run.get("id"):
            return
        if op == "claim_run":
            run.update(status="running", error=None, finished_at=None)
            run["owner_host"], run["owner_pid"], run["owner_pid_start"] = args["owner"]
        elif op == "set_status":
            run.update(status=args["status"], error=args.get("error"))
        elif op == "add_inputs":
            run["inputs"] = {**run.get("inputs", {}), **args["inputs"]}

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- what Store offers a job ------------------------------------------------------------------
    def create_run(self, **_: Any) -> int:
        raise TcfError(f"job {self.job_id}: a Slurm job trains the run reserved for it at submit; it creates none")

    def get_run(self, run_id: int) -> dict[str, Any]:
        with self._lock:
            if self._run is None or self._run.get("id") != run_id:
                raise TcfError(f"job {self.job_id}: run {run_id} is not this job's run")
            return copy.deepcopy(self._run)

    def add_inputs(self, run_id: int, inputs: dict[str, Any]) -> None:
        self._append("add_inputs", run_id=run_id, inputs=inputs)

    def claim_run(self, run_id: int, threads: int | None = None) -> None:
        self._append("claim_run", run_id=run_id, owner=[hostname(), os.getpid(), start_time(os.getpid())],
                     threads=threads)

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        self._append("set_status", run_id=run_id, status=status, error=error)

    def log_epoch(self, run_id: int, epoch: int, train_loss: float, seconds: float,
                  metrics: dict[str, float]) -> None:
        self._append("log_epoch", run_id=run_id, epoch=epoch, train_loss=train_loss, seconds=seconds,
                     metrics=metrics)

    def log_final(self, run_id: int, split: str, metrics: dict[str, float | None], best_epoch: int | None,
                  stopped_epoch: int | None) -> None:
        self._append("log_final", run_id=run_id, split=split, metrics=metrics, best_epoch=best_epoch,
                     stopped_epoch=stopped_epoch)

    def register_artifact(self, kind: str, hash: str, path: str | Path, meta: dict[str, Any],
                          run_id: int | None = None) -> None:
        self._append("register_artifact", kind=kind, hash=hash, path=str(path), meta=meta, run_id=run_id)

    def log_event(self, source: str, kind: str, payload: dict[str, Any], run_id: int | None = None) -> None:
        self._append("log_event", source=source, kind=kind, payload=payload, run_id=run_id)

    # -- the job's own life (merged into its `jobs` row) -----------------------------------------
    def start(self, **info: Any) -> None:
        """The process started (host, pid, its Slurm job and restart count)."""
        self._append("start", host=hostname(), pid=os.getpid(), pid_start=start_time(os.getpid()), **info)

    def heartbeat(self, peak_mem_bytes: int | None) -> None:
        self._append("heartbeat", peak_mem_bytes=peak_mem_bytes)

    def end(self, state: str, error: str | None, exit_code: int, artifact: str | None) -> None:
        """How the job ended, as the job process saw it (Slurm's view is merged beside it)."""
        self._append("end", state=state, error=error, exit_code=exit_code, artifact=artifact)


#: What job code records through: experiments.db itself, or (on a compute node) this job's record file.
Recorder = Store | RecordWriter

_installed: RecordWriter | None = None


def install(writer: RecordWriter | None) -> None:
    """Make :func:`open_store` answer ``writer`` in this process (the job process of a Slurm job)."""
    global _installed
    _installed = writer


def open_store(db_path: Path) -> Recorder:
    """Where this process records: the installed RecordWriter of a Slurm job, else experiments.db."""
    return _installed if _installed is not None else Store(db_path)


def apply(store: Store, rec: Record, job_id: int) -> None:
    """Replay one store record through the Store method that wrote it in a local job (its time kept)."""
    a = rec.args
    if rec.op == "claim_run":
        host, pid, pid_start = a["owner"]
        store.claim_run(a["run_id"], a.get("threads"), owner=(host, pid, pid_start), at=rec.time)
    elif rec.op == "set_status":
        store.set_status(a["run_id"], a["status"], a.get("error"), at=rec.time)
    elif rec.op == "add_inputs":
        store.add_inputs(a["run_id"], a["inputs"])
    elif rec.op == "log_epoch":
        store.log_epoch(a["run_id"], a["epoch"], a["train_loss"], a["seconds"], a["metrics"])
    elif rec.op == "log_final":
        store.log_final(a["run_id"], a["split"], a["metrics"], a["best_epoch"], a["stopped_epoch"])
    elif rec.op == "register_artifact":
        store.register_artifact(a["kind"], a["hash"], a["path"], a["meta"], a.get("run_id"), at=rec.time)
    elif rec.op == "log_event":
        store.log_event(a["source"], a["kind"], a["payload"], a.get("run_id"), job_id=job_id, at=rec.time)
    else:
        raise ValueError(f"not a store record: {rec.op!r}")
