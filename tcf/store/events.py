"""What a job has done so far, from experiments.db alone: per block range and per epoch progress.

The UIs never parse logs: pre-inference writes ``range_start`` / ``progress`` / ``range_end`` events,
training writes ``stage`` / ``progress`` events and one ``epochs`` row per epoch, and every event of a
queued job carries its ``job_id``. :func:`live_view` folds them into bars a UI can draw::

    view = live_view(store, get_job(store, 3))
    for r in view.ranges: print(r.label, r.done, r.total, r.items_per_s)
    for e in view.epochs: print(e.epoch, e.done, e.total, e.metrics.get("hr@10"))
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tcf.jobs.queue import Job
from tcf.store.db import Store


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
    job: Job
    stage: str | None  # latest stage of a training job ("pre-inference", "epoch 3", "evaluate test")
    ranges: list[RangeProgress]
    epochs: list[EpochProgress]
    gpu_mem_bytes: int | None  # latest reported by the job (torch allocator)
    gpu_peak_bytes: int | None  # the job's own peak: heartbeat and events, whichever is larger
    fraction: float | None  # of the current range or epoch
    eta_s: float | None  # of the current range, or of the remaining epochs (upper bound: early stopping)
    elapsed_s: float | None
    last_event_id: int = 0
    event_peak_bytes: int | None = None  # the largest peak the events reported (the fold's own state)


def _elapsed(job: Job, now: float) -> float | None:
    if job.started_at is None:
        return None
    start = datetime.fromisoformat(job.started_at).timestamp()
    end = datetime.fromisoformat(job.finished_at).timestamp() if job.finished_at and job.state != "running" else now
    return max(end - start, 0.0)


def live_view(store: Store, job: Job, now: float | None = None, since: LiveView | None = None) -> LiveView:
    """Fold the job's events (all attempts: a retried pre-inference keeps its committed ranges) and its
    run's epochs into progress bars. With ``since`` (an earlier view of the same job) only the events
    after it are read, so a UI that refreshes every second does not reread a long job's history."""
    now = time.time() if now is None else now
    ranges: dict[int, RangeProgress] = {}
    epochs: dict[int, EpochProgress] = {}
    stage = None
    mem = peak = None
    last_id = 0
    if since is not None and since.job.id == job.id:
        ranges = {r.index: copy.copy(r) for r in since.ranges}
        epochs = {e.epoch: copy.deepcopy(e) for e in since.epochs}
        stage, mem, peak, last_id = since.stage, since.gpu_mem_bytes, since.event_peak_bytes, since.last_event_id
    for ev in store.events(job_id=job.id, after_id=last_id):
        last_id = ev["id"]
        p: dict[str, Any] = ev["payload"]
        mem = p.get("gpu_mem_bytes", mem)
        peak = max(peak or 0, p.get("gpu_peak_bytes") or 0) or peak
        if ev["kind"] == "range_start":
            ranges[p["range"]] = RangeProgress(p["range"], p["start"], p["stop"], 0, p["n_items"])
        elif ev["kind"] == "progress" and "range" in p and p["range"] in ranges:
            r = ranges[p["range"]]
            r.done, r.total, r.items_per_s = p["items_done"], p["n_items"], p["items_per_s"]
        elif ev["kind"] == "range_end" and p.get("range") in ranges:
            r = ranges[p["range"]]
            r.done, r.seconds, r.finished = r.total, p.get("seconds"), True
        elif ev["kind"] == "stage":
            stage = p["stage"]
            if stage.startswith("epoch "):
                n = int(stage.split()[1])
                epochs[n] = EpochProgress(n, 0, p.get("total") or 0)
        elif ev["kind"] == "progress" and str(p.get("stage", "")).startswith("epoch "):
            n = int(p["stage"].split()[1])
            e = epochs.setdefault(n, EpochProgress(n, 0, p.get("total") or 0))
            e.done, e.total = p["done"], p.get("total") or e.total
    if job.run_id is not None:
        for row in store.epochs(job.run_id):
            e = epochs.setdefault(row["epoch"], EpochProgress(row["epoch"], 0, 0))
            e.done = e.total = max(e.total, e.done)
            e.loss, e.seconds, e.metrics, e.finished = row["train_loss"], row["seconds"], row["metrics"], True
    event_peak = peak
    peak = max(peak or 0, job.peak_mem_bytes or 0) or None

    fraction = eta = None
    open_ranges = [r for r in ranges.values() if not r.finished]
    open_epochs = [e for e in epochs.values() if not e.finished]
    if open_ranges and job.state == "running":
        r = open_ranges[-1]
        fraction = r.done / r.total if r.total else None
        if r.items_per_s:
            eta = (r.total - r.done) / r.items_per_s
    elif epochs and job.state == "running":
        done = [e for e in epochs.values() if e.finished and e.seconds]
        current = open_epochs[-1] if open_epochs else None
        if current is not None and current.total:
            fraction = current.done / current.total
        max_epochs = int(job.config.get("train", {}).get("epochs") or 0)
        if done and max_epochs:
            per_epoch = sum(e.seconds for e in done) / len(done)
            remaining = max_epochs - max(e.epoch for e in done) - (fraction or 0.0)
            eta = max(remaining, 0.0) * per_epoch
    return LiveView(job, stage, [ranges[i] for i in sorted(ranges)], [epochs[i] for i in sorted(epochs)],
                    mem, peak, fraction, eta, _elapsed(job, now), last_id, event_peak)


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
        return f"{view.stage}{pct}" if view.stage.startswith("epoch ") else view.stage
    return "starting"


def log_tail(job: Job, lines: int = 20, max_bytes: int = 64 << 10) -> list[str]:
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
