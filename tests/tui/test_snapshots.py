"""SVG snapshots of each screen at 120x40 (``pytest tests/tui --snapshot-update`` rewrites them).

Deterministic by construction: seeded times, a fixed clock, no refresh timer (refresh_s=0), running jobs
on a fake host, a FakeProvider (or none, and a fixed reading of this machine's CPU and memory); the temporary
database's path is never shown.
"""

from __future__ import annotations

from textual.widgets import Input

from tcf.tui.app import TcfApp
from tcf.util.gpu import NullProvider
from tcf.util.host import HostInfo

from .conftest import GiB, clock, settle, two_gpus

SIZE = (120, 40)
HOST = HostInfo(cpu_percent=62.5, cores=2, mem_used_bytes=9 * GiB, mem_total_bytes=24 * GiB)


def app_for(db, provider=None) -> TcfApp:
    return TcfApp(db, provider=provider or two_gpus(), refresh_s=0, clock=clock, host=lambda: HOST)


def follow(job_id: int):
    """run_before: load the queue, highlight ``job_id``, open its Live screen with Enter."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        screen = pilot.app.screen
        await pilot.press(*["down"] * [j.id for j in screen.shown].index(job_id), "enter")
        await settle(pilot)

    return run_before


def typing(*keys: str):
    """run_before: load, press ``keys``, then stop the cursor blinking (its phase depends on timing)."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press(*keys)
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False
        await settle(pilot)

    return run_before


def test_queue_screen(snap_compare, db):
    """Nine jobs: running, lost (red), queued by priority, blocked, cancelled, finished, failed."""
    assert snap_compare(app_for(db), terminal_size=SIZE, run_before=settle)


def test_queue_screen_filtered(snap_compare, db):
    assert snap_compare(app_for(db), terminal_size=SIZE, run_before=typing("slash", *"scaling"))


def test_live_screen_training(snap_compare, db):
    """Epoch bars with HR@10/NDCG@10 of finished epochs, the log tail, two GPUs marked as the job's."""
    assert snap_compare(app_for(db), terminal_size=SIZE, run_before=follow(1))


def test_live_screen_pre_inference_without_nvml(snap_compare, db):
    """Block-range bars; the GPU panel says why it has no GPUs, shows this machine's CPU and memory instead, and
    still the job's peak memory."""
    provider = NullProvider("NVML unavailable: NVML Shared Library Not Found")
    assert snap_compare(app_for(db, provider), terminal_size=SIZE, run_before=follow(2))


def test_help_screen(snap_compare, db):
    assert snap_compare(app_for(db), terminal_size=SIZE, run_before=typing("question_mark"))


def test_add_dialog(snap_compare, db):
    assert snap_compare(app_for(db), terminal_size=SIZE, run_before=typing("a", *"configs/x.yaml"))
