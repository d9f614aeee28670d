"""A job's folder on the shared filesystem: what the coordinator hands a job on another machine, and what it
hands back.

The coordinator (the machine that holds experiments.db) writes ``job.json`` (the job, and the run it will train)
before it submits; the job process reads it and appends its records (tcf.store.records) beside it, never
opening experiments.db. :func:`merge` brings the records into experiments.db exactly once: each batch of records
and the mark of the last one merged (``merged_records``: job, attempt, sequence number) commit in one
transaction, so merging twice, or from two coordinators at once (the TUI and ``tcf queue sync``), changes
nothing more::

    write_spec(folder, job, run=store.get_run(job.run_id))     # coordinator, at submit
    spec = read_spec(folder)                                    # job process
    merge(store, job)                                           # coordinator: `tcf queue sync`, refreshes
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.jobs import queue as q
from tcf.store.db import Store
from tcf.store.records import JOB_OPS, STORE_OPS, Record, apply, read_records
from tcf.util.atomic import write_atomic

SPEC = "job.json"
BATCH = 500  # records merged per transaction


@dataclass
class JobSpec:
    """What a job process needs of its job when it cannot read experiments.db (``_work`` reads these fields)."""

    id: int
    kind: str
    name: str
    attempts: int
    gpus: int
    run_id: int | None
    config: dict[str, Any]
    spec: dict[str, Any]
    devices: str | None = None
    cancel_requested: bool = False
    run: dict[str, Any] | None = field(default=None, repr=False)  # the run's row when it was submitted


def write_spec(folder: Path, job: q.Job, attempt: int, run: dict[str, Any] | None) -> Path:
    """Write ``job.json`` for attempt ``attempt`` of ``job`` (atomically: a job never reads half of one)."""
    spec = JobSpec(job.id, job.kind, job.name, attempt, job.gpus, job.run_id, job.config, job.spec, run=run)
    path = Path(folder) / SPEC
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(spec), sort_keys=True, default=str) + "\n")
    return path


def read_spec(folder: Path) -> JobSpec:
    """The job this process runs, as its coordinator wrote it (one line naming the file when it cannot)."""
    path = Path(folder) / SPEC
    try:
        raw = json.loads(path.read_text())
        return JobSpec(**raw)
    except (OSError, ValueError, TypeError) as e:
        raise TcfError(f"{path}: cannot read the job's description: {e}") from e


def attempts_recorded(folder: Path) -> list[int]:
    """The attempts that have a record file in ``folder``, in order."""
    out = []
    for p in Path(folder).glob("records-*.jsonl"):
        number = p.stem.removeprefix("records-")
        if number.isdigit():
            out.append(int(number))
    return sorted(out)


def _apply(store: Store, job: q.Job, attempt: int, rec: Record, where: str) -> None:
    if rec.op in STORE_OPS:
        run_id = rec.args.get("run_id")
        if run_id is not None and run_id != job.run_id:
            raise TcfError(f"{where}: record {rec.seq} names run {run_id}, but job {job.id} trains run {job.run_id}")
        apply(store, rec, job.id)
    elif rec.op == "start":
        q.record_start(store, job.id, attempt, host=str(rec.args["host"]), pid=int(rec.args["pid"]),
                       pid_start=rec.args.get("pid_start"), at=rec.time)
    elif rec.op == "heartbeat":
        q.record_heartbeat(store, job.id, attempt, rec.args.get("peak_mem_bytes"))
    elif rec.op == "end":
        q.finish_job(store, job.id, rec.args["state"], error=rec.args.get("error"),
                     exit_code=rec.args.get("exit_code"), artifact=rec.args.get("artifact"), attempt=attempt)
    else:
        raise TcfError(f"{where}: record {rec.seq}: unknown kind {rec.op!r} (known: {', '.join(STORE_OPS + JOB_OPS)})")


def merge(store: Store, job: q.Job) -> int:
    """Merge the complete records of ``job`` not merged yet into experiments.db; returns how many it merged."""
    if not job.job_dir:
        return 0
    merged = 0
    for attempt in attempts_recorded(Path(job.job_dir)):
        path = Path(job.job_dir) / f"records-{attempt}.jsonl"
        records, _ = read_records(path)
        while True:
            with store.transaction():  # the mark is read and moved inside: two coordinators never merge twice
                done = q.merged_seq(store, job.id, attempt)
                batch = records[done:done + BATCH]
                for rec in batch:
                    _apply(store, job, attempt, rec, str(path))
                if batch:
                    q.mark_merged(store, job.id, attempt, batch[-1].seq)
            merged += len(batch)
            if len(batch) < BATCH:
                break
    return merged
