"""The progress protocol: the events jobs write to experiments.db, and the fold the Live screen draws.

UIs never parse logs. A training run and a pre-inference report through :class:`EventWriter` (the only
writer of these events), every event of a queued job carries its ``job_id``, and :func:`live_view` folds
them into bars. The kinds and their ``payload_json`` (GPU fields: this process's CUDA memory, when it has
a CUDA context)::

    range_start  {"range": i, "start": s, "stop": e, "n_items": n}                  pre-inference
    progress     {"range", "start", "stop", "items_done", "n_items", "items_per_s", gpu...}
    range_end    {"range", "start", "stop", "seconds", gpu...}
    stage        {"stage": "epoch", "epoch": 3, "total": steps}                      training
                 {"stage": "pre-inference" | "evaluate valid" | "evaluate test", "epoch": null, "total": ...}
    progress     {"stage", "epoch", "done", "total", gpu...}
    (an epoch)   one row of ``epochs`` (loss, seconds) and its validation ``metrics``: Store.log_epoch
    (heartbeat)  ``jobs.heartbeat`` (Unix time) and ``jobs.peak_mem_bytes``, every few seconds: tcf.jobs.queue

Progress events are rate-limited to one a second (the last one of a range or a stage always goes out)::

    view = live_view(store, get_job(store, 3))
    for r in view.ranges: print(r.label, r.done, r.total, r.items_per_s)
    for e in view.epochs: print(e.epoch, e.done, e.total, e.metrics.get("hr@10"))
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tcf.store.db import Store
from tcf.store.records import Recorder
from tcf.util.gpu import process_gpu_memory
from tcf.util.progress import RateLimited, Reporter, stage_label

RANGE_START, RANGE_END, PROGRESS, STAGE = "range_start", "range_end", "progress", "stage"
EPOCH = "epoch"  # the stage name of a training epoch; its number travels as an integer


def _gpu() -> dict[str, int]:
    mem = process_gpu_memory()
    return {k: v for k, v in mem.items() if k in ("gpu_mem_bytes", "gpu_peak_bytes")}


class EventWriter(Reporter):
    """Progress -> experiments.db events (see the module docstring) and, for a run, its epoch rows."""

    def __init__(self, store: Recorder, source: str, run_id: int | None = None, interval: float = 1.0):
        self.store, self.source, self.run_id = store, source, run_id
        self._range: dict[str, int] = {}
        self._stage: dict[str, Any] = {"stage": None, "epoch": None, "total": None, "done": 0}
        self._items = RateLimited(self._log_items, interval)
        self._steps = RateLimited(self._log_steps, interval)

    def _log(self, kind: str, payload: dict[str, Any]) -> None:
        self.store.log_event(self.source, kind, payload, self.run_id)

    # -- training ---------------------------------------------------------------------------------
    def stage(self, name: str, total: int | None = None, epoch: int | None = None) -> None:
        self._stage = {"stage": name, "epoch": epoch, "total": total, "done": 0}
        self._log(STAGE, {"stage": name, "epoch": epoch, "total": total})

    def _log_steps(self) -> None:
        self._log(PROGRESS, {**self._stage, **_gpu()})

    def advance(self, n: int = 1) -> None:
        self._stage["done"] += n
        self._steps(force=self._stage["done"] == self._stage["total"])

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        if self.run_id is not None:
            self.store.log_epoch(self.run_id, epoch, loss, seconds, metrics)

    # -- pre-inference ----------------------------------------------------------------------------
    def range_start(self, i: int, start: int, stop: int, n_items: int) -> None:
        self._range = {"range": i, "start": start, "stop": stop}
        self._log(RANGE_START, {**self._range, "n_items": n_items})

    def _log_items(self, items_done: int, n_items: int, items_per_s: float) -> None:
        self._log(PROGRESS, {**self._range, "items_done": items_done, "n_items": n_items,
                             "items_per_s": items_per_s, **_gpu()})

    def progress(self, items_done: int, n_items: int, items_per_s: float) -> None:
        self._items(items_done, n_items, items_per_s, force=items_done >= n_items)

    def range_end(self, i: int, seconds: float) -> None:
        self._log(RANGE_END, {**self._range, "seconds": seconds, **_gpu()})


# -- the fold ------------------------------------------------------------------------------------

class FollowedJob(Protocol):
    """What the fold needs of a job (tcf.jobs.queue.Job has it)."""

    id: int
    state: str
    run_id: int | None
    started_at: str | None
    finished_at: str | None
    peak_mem_bytes: int | None
    config: dict[str, Any]


@dataclass
class RangeProgress:
    """One block range of a pre-inference: items done of total, speed, and whether it committed."""

    index: int
    start: int
    stop: int
    done: int
    total: int
    items_per_s: float | None = None
    seconds: float | None = None
    finished: bool = False

    @property
    def label(self) -> str:
        return f"blocks {self.start}:{self.stop}"


@dataclass
class EpochProgress:
    """One training epoch: steps done of total, then its loss, time and validation metrics."""

    epoch: int
    done: int
    total: int
    loss: float | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = False


@dataclass
class LiveView:
    job: Any  # the FollowedJob folded (the UIs show more of it)
    stage: str | None  # latest stage of a training job, as read ("pre-inference", "epoch 3", "evaluate test")
    ranges: list[RangeProgress]
    epochs: list[EpochProgress]
    gpu_mem_bytes: int | None  # latest reported by the job (torch allocator)
    gpu_peak_bytes: int | None  # the job's own peak: heartbeat and events, whichever is larger
    fraction: float | None  # of the current range or epoch
    eta_s: float | None  # of the current range, or of the remaining epochs (upper bound: early stopping)
    elapsed_s: float | None
    last_event_id: int = 0
    event_peak_bytes: int | None = None  # the largest peak the events reported (the fold's own state)


@dataclass
class _Fold:
    """The state :func:`live_view` carries from one event to the next."""

    ranges: dict[int, RangeProgress] = field(default_factory=dict)
    epochs: dict[int, EpochProgress] = field(default_factory=dict)
    stage: str | None = None
    mem: int | None = None
    peak: int | None = None
    last_id: int = 0


def _epoch_of(p: dict[str, Any]) -> int | None:
    """The integer epoch of a stage or step event; rows written before it was a field say 'epoch N'."""
    if p.get("epoch") is not None:
        return int(p["epoch"])
    stage = str(p.get("stage") or "")
    return int(stage.split()[1]) if stage.startswith("epoch ") and stage.split()[1].isdigit() else None


def _on_range_start(f: _Fold, p: dict[str, Any]) -> None:
    f.ranges[p["range"]] = RangeProgress(p["range"], p["start"], p["stop"], 0, p["n_items"])


def _on_range_end(f: _Fold, p: dict[str, Any]) -> None:
    if p.get("range") in f.ranges:
        r = f.ranges[p["range"]]
        r.done, r.seconds, r.finished = r.total, p.get("seconds"), True


def _on_stage(f: _Fold, p: dict[str, Any]) -> None:
    epoch = _epoch_of(p)
    f.stage = stage_label(EPOCH, epoch) if epoch is not None else p["stage"]
    if epoch is not None:
        f.epochs[epoch] = EpochProgress(epoch, 0, p.get("total") or 0)


def _on_progress(f: _Fold, p: dict[str, Any]) -> None:
    if "range" in p:
        if p["range"] in f.ranges:
            r = f.ranges[p["range"]]
            r.done, r.total, r.items_per_s = p["items_done"], p["n_items"], p["items_per_s"]
        return
    epoch = _epoch_of(p)
    if epoch is not None:
        e = f.epochs.setdefault(epoch, EpochProgress(epoch, 0, p.get("total") or 0))
        e.done, e.total = p["done"], p.get("total") or e.total


_HANDLERS: dict[str, Callable[[_Fold, dict[str, Any]], None]] = {
    RANGE_START: _on_range_start, RANGE_END: _on_range_end, STAGE: _on_stage, PROGRESS: _on_progress}


def _resume(since: LiveView | None, job: FollowedJob) -> _Fold:
    another_attempt = (since is not None and (since.job.started_at != job.started_at or
                                              getattr(since.job, "attempts", 0) != getattr(job, "attempts", 0)))
    if since is None or since.job.id != job.id or another_attempt:
        return _Fold()
    return _Fold({r.index: copy.copy(r) for r in since.ranges}, {e.epoch: copy.deepcopy(e) for e in since.epochs},
                 since.stage, since.gpu_mem_bytes, since.event_peak_bytes, since.last_event_id)


def _settle(f: _Fold) -> None:
    """What an attempt that ended leaves to the next: committed ranges and finished epochs, not its open
    progress, stage or memory (a retried job showed them for seconds as if they were its own)."""
    f.ranges = {i: r for i, r in f.ranges.items() if r.finished}
    f.epochs = {i: e for i, e in f.epochs.items() if e.finished}
    f.stage, f.mem = None, None


def _elapsed(job: FollowedJob, now: float) -> float | None:
    """From the attempt's start to its end; a job whose process died without recording its end (lost) stopped
    at its last heartbeat, not at now, nor at when a worker noticed."""
    if job.started_at is None:
        return None
    start = datetime.fromisoformat(job.started_at).timestamp()
    shown = getattr(job, "display", job.state)
    heartbeat = getattr(job, "heartbeat", None)
    if heartbeat is not None and (job.state == "lost" or (job.state == "running" and shown not in ("running",
                                                                                                      "stale"))):
        end = float(heartbeat)
    elif job.finished_at and job.state != "running":
        end = datetime.fromisoformat(job.finished_at).timestamp()
    else:
        end = now
    return max(end - start, 0.0)


def _fraction_and_eta(f: _Fold, job: FollowedJob) -> tuple[float | None, float | None]:
    """Of the open range (items/s), else of the open epoch and the epochs left (mean epoch time)."""
    if job.state != "running":
        return None, None
    open_ranges = [r for r in f.ranges.values() if not r.finished]
    if open_ranges:
        r = open_ranges[-1]
        return (r.done / r.total if r.total else None), ((r.total - r.done) / r.items_per_s if r.items_per_s else None)
    if not f.epochs:
        return None, None
    done = [e for e in f.epochs.values() if e.finished and e.seconds]
    open_epochs = [e for e in f.epochs.values() if not e.finished]
    current = open_epochs[-1] if open_epochs else None
    fraction = current.done / current.total if current is not None and current.total else None
    max_epochs = int(job.config.get("train", {}).get("epochs") or 0)
    if not (done and max_epochs):
        return fraction, None
    per_epoch = sum(e.seconds for e in done) / len(done)
    remaining = max_epochs - max(e.epoch for e in done) - (fraction or 0.0)
    return fraction, max(remaining, 0.0) * per_epoch


def live_view(store: Store, job: FollowedJob, now: float | None = None, since: LiveView | None = None) -> LiveView:
    """Fold the job's events and its run's epochs into progress bars. Earlier attempts leave their committed
    ranges (a retried pre-inference keeps them) and finished epochs, never their open progress (:func:`_settle`).
    With ``since`` (an earlier view of the same attempt) only the events after it are read, so a UI that
    refreshes every second does not reread a long job's history."""
    now = time.time() if now is None else now
    f = _resume(since, job)
    earlier = f.last_id == 0  # reading from the first event: those before this attempt started come first
    for ev in store.events(job_id=job.id, after_id=f.last_id):
        if earlier and job.started_at is not None and ev["time"] >= job.started_at:
            _settle(f)
            earlier = False
        f.last_id = ev["id"]
        p: dict[str, Any] = ev["payload"]
        f.mem = p.get("gpu_mem_bytes", f.mem)
        f.peak = max(f.peak or 0, p.get("gpu_peak_bytes") or 0) or f.peak
        handler = _HANDLERS.get(ev["kind"])
        if handler is not None:
            handler(f, p)
    if earlier:  # every event came before this attempt (or the job waits to run again)
        _settle(f)
    if job.run_id is not None:
        for row in store.epochs(job.run_id):
            e = f.epochs.setdefault(row["epoch"], EpochProgress(row["epoch"], 0, 0))
            e.done = e.total = max(e.total, e.done)
            e.loss, e.seconds, e.metrics, e.finished = row["train_loss"], row["seconds"], row["metrics"], True
    peak = max(f.peak or 0, job.peak_mem_bytes or 0) or None
    fraction, eta = _fraction_and_eta(f, job)
    return LiveView(job, f.stage, [f.ranges[i] for i in sorted(f.ranges)], [f.epochs[i] for i in sorted(f.epochs)],
                    f.mem, peak, fraction, eta, _elapsed(job, now), f.last_id, f.peak)


def progress_summary(view: LiveView) -> str:
    """One short line for a queue table: 'blocks 8:16 61%', 'epoch 3 40%', 'evaluate test'."""
    job = view.job
    if job.state != "running":
        if job.state == "finished" and view.epochs:
            return f"{len(view.epochs)} epochs"
        if job.state == "finished" and view.ranges:
            return f"{len(view.ranges)} ranges"
        return ""
    open_ranges = [r for r in view.ranges if not r.finished]
    pct = f" {100 * view.fraction:.0f}%" if view.fraction is not None else ""
    if open_ranges:
        return f"{open_ranges[-1].label}{pct}"
    if view.stage is not None:
        return f"{view.stage}{pct}" if view.stage.startswith(f"{EPOCH} ") else view.stage
    return "starting"


def log_tail(job: Any, lines: int = 20, max_bytes: int = 64 << 10) -> list[str]:
    """The last lines of the job's log file (stdout and stderr of its process); [] when there is none."""
    if not job.log_path:
        return []
    path = Path(job.log_path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - max_bytes, 0))
            data = f.read()
    except OSError:
        return []
    text = data.decode(errors="replace").replace("\r", "\n")
    return list(deque((ln for ln in text.splitlines() if ln.strip()), maxlen=lines))
