"""Live screen: per-range and per-epoch bars from seeded events, the log tail, the GPU panel, and that
the UI answers keys within 100 ms while ten jobs report progress."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets import DataTable, Sparkline

from tcf.store.db import Store
from tcf.tui.app import TcfApp
from tcf.tui.screens.live import NO_JOB
from tcf.tui.widgets.gpu_panel import GpuPanel, GpuRow, HostRow
from tcf.tui.widgets.progress_bars import ProgressRow
from tcf.util.gpu import NullProvider
from tcf.util.host import HostInfo

from .conftest import FIXED, GiB, add_event, add_job, clock, iso, plain, settle

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


async def open_live(pilot, job_id: int) -> None:
    """Follow ``job_id`` on the Live screen (coming from the Queue screen, which sets ``app.job_id``)."""
    await pilot.press("1")
    await settle(pilot)
    pilot.app.job_id = job_id
    await pilot.press("2")
    await settle(pilot)


def bars(app: TcfApp, box: str) -> list[str]:
    return [" ".join(plain(r).split()) for r in app.screen.query_one(f"#{box}").query(ProgressRow)]


async def test_pre_inference_job_shows_one_bar_per_block_range(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 2)
        ranges = bars(app, "ranges")
        assert len(ranges) == 3
        assert ranges[0].startswith("blocks 0:8") and "5,000/5,000 done in 40s" in ranges[0]
        assert ranges[1].startswith("blocks 8:16") and "5,000/5,000 done in 50s" in ranges[1]
        assert ranges[2].startswith("blocks 16:24") and "1,200/5,000 410 items/s" in ranges[2]
        assert not app.screen.query_one("#epochs").display  # an infer job has no epochs
        title = plain(app.screen.query_one("#title"))
        assert title == "#2 infer infer mind-opt-1.3b  running  GPU 2  elapsed 10m00s  ETA 9s"


async def test_training_job_shows_epochs_with_validation_metrics_and_log_tail(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 1)
        epochs = bars(app, "epochs")
        assert len(epochs) == 3
        assert "300/300 loss 3.5000 HR@10 25.12 NDCG@10 13.01" in epochs[0]
        assert "300/300 loss 3.0000 HR@10 31.04 NDCG@10 17.02" in epochs[1]
        assert "120/300" in epochs[2] and "HR@10" not in epochs[2]  # still running: no validation yet
        assert not app.screen.query_one("#ranges").display
        log = plain(app.screen.query_one("#log")).splitlines()
        assert len(log) == 10 and log[-1] == "epoch 2 step 275/300 loss 3.275"


async def test_gpu_panel_shows_provider_memory_and_the_jobs_peak(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 1)
        panel = app.screen.query_one(GpuPanel)
        text = [" ".join(plain(s).split()) for s in panel.query("Static")]
        assert "job peak memory: 9.0 GiB" in text  # the largest gpu_peak_bytes its events reported
        assert "mem 41.0/141.0 GiB 29%" in text and "util 7%" in text
        assert "mem 121.0/141.0 GiB 86%" in text and "util 93%" in text
        assert [("job" in plain(r.query_one(".gpu-title"))) for r in panel.query(GpuRow)] == [True, True]
        await open_live(pilot, 2)  # on GPU 2, which this provider does not have; its heartbeat peak is 13 GiB
        assert "job peak memory: 13.0 GiB" in [plain(s) for s in panel.query("Static")]
        assert [("job" in plain(r.query_one(".gpu-title"))) for r in panel.query(GpuRow)] == [False, False]


async def test_without_nvml_the_panel_says_why_and_shows_cpu_and_memory(db):
    """Reported (issue 22, 8): without NVML the GPU panel was an empty box where CPU and RAM use would serve."""
    reason = "NVML unavailable: NVML Shared Library Not Found"
    host = HostInfo(cpu_percent=37.5, cores=2, mem_used_bytes=5 * GiB, mem_total_bytes=16 * GiB)
    app = TcfApp(db, provider=NullProvider(reason), refresh_s=0, clock=clock, host=lambda: host)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 1)
        panel = app.screen.query_one(GpuPanel)
        assert plain(panel.query_one("#gpu-reason")) == reason
        assert not panel.query(GpuRow) and panel.border_title == "CPU and memory (no GPU)"
        await pilot.pause()
        row = panel.query_one(HostRow)
        assert plain(row.query_one(".host-cpu")) == "CPU   38% of 2 cores"
        assert plain(row.query_one(".host-ram")) == "RAM  5.0/16.0 GiB  31%"
        assert len(bars(app, "epochs")) == 3


async def test_with_gpus_the_panel_shows_them_not_the_host(db, provider):
    host = HostInfo(cpu_percent=10.0, cores=2, mem_used_bytes=GiB, mem_total_bytes=2 * GiB)
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock, host=lambda: host)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 1)
        panel = app.screen.query_one(GpuPanel)
        assert panel.query(GpuRow) and not panel.query(HostRow) and panel.border_title == "GPUs"


async def test_refresh_follows_new_events_and_gpu_history(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await open_live(pilot, 2)
        store = Store(db)
        add_event(store, 2, "progress", {"range": 2, "start": 16, "stop": 24, "items_done": 2500,
                                         "n_items": 5000, "items_per_s": 500.0})
        store.close()
        provider.set(0, util_percent=50)
        app.tick()
        await settle(pilot)
        assert "2,500/5,000 500 items/s" in bars(app, "ranges")[2]
        spark = app.screen.query_one(GpuPanel).query(GpuRow).first().query_one(".spark-util", Sparkline)
        assert list(spark.data) == [7.0, 50.0]


async def test_without_a_selected_job_it_says_how_to_pick_one(tmp_path, provider):
    Store(tmp_path / "experiments.db").close()  # a store without jobs
    app = TcfApp(tmp_path / "experiments.db", provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        assert plain(app.screen.query_one("#title")) == NO_JOB
        await pilot.press("escape")
        assert app.current_mode == "queue"


def seed_running(db: Path, n: int) -> None:
    store = Store(db)
    for i in range(1, n + 1):
        add_job(store, i, "infer", f"infer job-{i}", "running", started=iso(11), devices=str(i % 4),
                host="gpu-node-1", pid=1000 + i, heartbeat=FIXED)
        add_event(store, i, "range_start", {"range": 0, "start": 0, "stop": 8, "n_items": 10_000})
    store.close()


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from conftest import add_event
from tcf.store.db import Store
store, n, done = Store(sys.argv[1]), int(sys.argv[2]), 0
while True:
    done += 100
    for i in range(1, n + 1):
        add_event(store, i, "progress", {"range": 0, "start": 0, "stop": 8, "items_done": done,
                                         "n_items": 10_000, "items_per_s": 400.0})
    time.sleep(0.1)
"""


async def key_latency(app: TcfApp, key: str, mode: str) -> float:
    """Seconds from a key press (sent as the terminal driver sends it) to its screen being current and
    painted.

    Not ``pilot.press`` + ``pilot.pause``: those wait until the whole process has been idle for 20 ms
    several times over, so with loads running in worker threads they time Pilot's idle detection
    (60 ms at the very least), not the UI.
    """
    start = time.perf_counter()
    app._driver.send_message(events.Key(key, key))
    while app.current_mode != mode:
        await asyncio.sleep(0.001)
    await app.screen.wait_for_refresh()
    return time.perf_counter() - start


async def test_keys_are_handled_within_100ms_while_ten_jobs_report(tmp_path, provider):
    """Ten running jobs each write 10 progress events a second (10x a real job's rate) from another
    process, as real jobs do, while the app refreshes every 0.2 s: switching screens stays under 100 ms, or
    (on a machine busy with other work, issue 22, 7) within 3x what the same switch takes with no writer."""
    db = tmp_path / "experiments.db"
    seed_running(db, 10)
    app = TcfApp(db, provider=provider, refresh_s=0.2, clock=clock)
    app.job_id = 1
    writer = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            for key in "212":  # mount both screens and paint what their first loads brought
                await pilot.press(key)
                await settle(pilot)
            alone = []
            for key, mode in [("1", "queue"), ("2", "live")] * 3:
                await pilot.pause(0.25)
                alone.append(await key_latency(app, key, mode))
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "10", str(Path(__file__).parent)])
            await pilot.pause(1.0)
            timings = []
            for key, mode in [("1", "queue"), ("2", "live")] * 5:
                await pilot.pause(0.25)  # a refresh (reading the new events) is under way or just done
                timings.append(await key_latency(app, key, mode))
            await pilot.press("1")
            await settle(pilot)
            progressed = app.screen.query_one(DataTable).get_row_at(0)[5]  # the queue did follow the writer
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
    assert str(progressed) != "blocks 0:8 0%"
    bound = max(0.1, 3 * sorted(alone)[len(alone) // 2])
    assert max(timings) < bound, ([f"{t * 1000:.0f} ms" for t in timings], [f"{t * 1000:.0f} ms" for t in alone])
