"""A seeded experiments.db with jobs in every state, a fixed clock, and Pilot helpers for tcf-tui tests.

Times are fixed (the clock is ``FIXED``) and running jobs live on another host ("gpu-node-1") with a
fresh heartbeat, so what the screens show does not depend on this machine, its PIDs or the wall clock.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text
from textual.content import Content
from textual.widgets import DataTable

from tcf.store.db import Store
from tcf.store.sql import connection as sql
from tcf.util.gpu import FakeProvider, GpuInfo
from tcf.util.process import hostname

FIXED = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()
GiB = 1 << 30
DEAD_PID = 2**31 - 1  # above any pid_max: never a live process
# Queue order of the seeded jobs: running by id, queued by priority then id, ended newest first.
ORDER = [1, 2, 6, 3, 4, 9, 8, 7, 5]


def clock() -> float:
    return FIXED


def iso(hh: int, mm: int = 0) -> str:
    return datetime(2025, 1, 1, hh, mm, tzinfo=timezone.utc).isoformat(timespec="seconds")


def add_job(store: Store, job_id: int, kind: str, name: str, state: str, *, priority: int = 0,
            tags: tuple[str, ...] = (), note: str = "", started: str | None = None, finished: str | None = None,
            devices: str | None = None, host: str | None = None, pid: int | None = None,
            heartbeat: float | None = None, run_id: int | None = None, error: str | None = None,
            log_path: str | None = None, peak: int | None = None, deps: tuple[int, ...] = (),
            epochs: int = 10) -> None:
    config = {"dataset": {"path": "/data/mind"}, "train": {"epochs": epochs}}
    with store.transaction():
        sql(store).execute(
            "INSERT INTO jobs (id, kind, name, config_json, spec_json, state, priority, tags_json, note, gpus, "
            "created_at, started_at, finished_at, attempts, host, pid, devices, heartbeat, run_id, error, log_path, "
            "peak_mem_bytes) VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [job_id, kind, name, json.dumps(config), state, priority, json.dumps(list(tags)), note, iso(9),
             started, finished, 1 if started else 0, host, pid, devices, heartbeat, run_id, error, log_path, peak])
        for dep in deps:
            sql(store).execute("INSERT INTO job_deps (job_id, dep_id) VALUES (?, ?)", [job_id, dep])


def add_event(store: Store, job_id: int, kind: str, payload: dict[str, Any], run_id: int | None = None) -> None:
    with store.transaction():
        sql(store).execute(
            "INSERT INTO events (source, run_id, job_id, time, kind, payload_json) VALUES (?, ?, ?, ?, ?, ?)",
            [f"job:{job_id}", run_id, job_id, iso(11, 59), kind, json.dumps(payload)])


def add_ranges(store: Store, job_id: int, ranges: list[tuple[int, int, int, int, float]], *,
               finished: int) -> None:
    """(start, stop, n_items, items_done, items_per_s) per range; the first ``finished`` committed."""
    for i, (start, stop, n, done, speed) in enumerate(ranges):
        base = {"range": i, "start": start, "stop": stop}
        add_event(store, job_id, "range_start", {**base, "n_items": n})
        add_event(store, job_id, "progress", {**base, "items_done": done, "n_items": n, "items_per_s": speed,
                                              "gpu_mem_bytes": 10 * GiB, "gpu_peak_bytes": 12 * GiB})
        if i < finished:
            add_event(store, job_id, "range_end", {**base, "seconds": n / speed})


def seed(path: Path) -> Path:
    """Nine jobs: 2 running (a training job in epoch 3, a pre-inference in range 3 of 3), one running
    job whose process is dead (lost), 2 queued, one blocked, one finished, one failed, one cancelled."""
    store = Store(path)
    log = path.parent / "job-1.log"
    log.write_text("".join(f"epoch 2 step {s}/300 loss 3.{s:03d}\n" for s in range(0, 300, 25)))

    run = store.create_run(name="mind-sasrec-opt-125m-top2", config={}, config_hash="h", dataset="mind",
                           architecture="sasrec", item_tower="text")
    add_job(store, 1, "train", "mind-sasrec-opt-125m-top2", "running", tags=("scaling", "opt"),
            started=iso(11), devices="0,1", host="gpu-node-1", pid=4242, heartbeat=FIXED, run_id=run,
            log_path=str(log), note="baseline for the scaling figure")
    for epoch, (hr, ndcg) in enumerate([(0.2512, 0.1301), (0.3104, 0.1702)], start=1):
        add_event(store, 1, "stage", {"stage": "epoch", "epoch": epoch, "total": 300}, run)
        store.log_epoch(run, epoch, train_loss=4.0 - epoch / 2, seconds=600.0,
                        metrics={"hr@10": hr, "ndcg@10": ndcg})
    add_event(store, 1, "stage", {"stage": "epoch", "epoch": 3, "total": 300}, run)
    add_event(store, 1, "progress", {"stage": "epoch", "epoch": 3, "done": 120, "total": 300,
                                     "gpu_mem_bytes": 6 * GiB, "gpu_peak_bytes": 9 * GiB}, run)

    add_job(store, 2, "infer", "infer mind-opt-1.3b", "running", started=iso(11, 50), devices="2",
            host="gpu-node-1", pid=4343, heartbeat=FIXED, peak=13 * GiB)
    add_ranges(store, 2, [(0, 8, 5000, 5000, 125.0), (8, 16, 5000, 5000, 100.0), (16, 24, 5000, 1200, 410.0)],
               finished=2)
    add_job(store, 3, "train", "mind-sasrec-opt-1.3b-top2", "queued", priority=5, tags=("scaling",), deps=(2,))
    add_job(store, 4, "train", "mind-sasrec-id", "queued")
    add_job(store, 5, "train", "mind-dssm-bert-base", "failed", started=iso(10), finished=iso(10, 20),
            devices="3", host="gpu-node-1", error="CUDA out of memory (tried to allocate 2.00 GiB)")
    add_job(store, 6, "train", "mind-sasrec-opt-350m", "running", started=iso(11, 30), devices="1",
            host=hostname(), pid=DEAD_PID, heartbeat=FIXED)
    add_job(store, 7, "infer", "infer mind-bert-base", "finished", started=iso(9), finished=iso(9, 10),
            devices="0", host="gpu-node-1")
    add_ranges(store, 7, [(0, 6, 3000, 3000, 300.0), (6, 12, 3000, 3000, 300.0)], finished=2)
    add_job(store, 8, "train", "mind-dssm-id", "cancelled", finished=iso(9, 30))
    add_job(store, 9, "train", "mind-dssm-bert-base-top1", "queued", deps=(5,))
    store.close()
    return path


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio; the tests are marked ``anyio``


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return seed(tmp_path / "experiments.db")


def two_gpus() -> FakeProvider:
    return FakeProvider([GpuInfo(0, "NVIDIA H200", 141 * GiB, 100 * GiB, 41 * GiB, 7),
                         GpuInfo(1, "NVIDIA H200", 141 * GiB, 20 * GiB, 121 * GiB, 93)])


@pytest.fixture
def provider() -> FakeProvider:
    return two_gpus()


def plain(widget: Any) -> str:
    """The text a Static shows (markup, rich Text and rich renderables alike)."""
    content = widget.content
    if isinstance(content, str):
        return Content.from_markup(content).plain
    if isinstance(content, Text | Content):
        return content.plain
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(content)
    return console.file.getvalue()


async def settle(pilot: Any) -> None:
    """Wait until every screen on the stack has loaded (its load worker started and finished, no reload
    asked for, the posted result handled), every worker is done, and every table has measured its rows.
    A DataTable measures its rows when it next idles: a snapshot taken before shows them cut to the header
    widths, under a dialog as well, so the screens below the top one count too."""

    def pending() -> bool:
        screens = pilot.app.screen_stack
        for screen in screens:
            loader = getattr(screen, "_loader", False)
            if loader is None or (loader and not loader.is_finished) or getattr(screen, "_again", False):
                return True
            if screen.message_queue_size:  # e.g. a load's result posted, not yet shown
                return True
        tables = [t for screen in screens for t in screen.query(DataTable)]
        return any(t._require_update_dimensions or t._updated_cells for t in tables)

    for _ in range(3):  # a handled load can start measuring: look again after each quiet spell
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        for _ in range(300):
            if not pending():
                break
            await pilot.app.workers.wait_for_complete()
            await pilot.pause(0.01)
        await pilot.pause(0.05)  # and for the layout refresh that measuring asked for
    await pilot.pause()

