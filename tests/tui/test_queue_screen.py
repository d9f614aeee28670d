"""Queue screen against a seeded experiments.db: what it lists, and what its keys do to the database."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

from tcf.jobs.queue import get_job
from tcf.store.db import Store
from tcf.store.sql import connection as sql
from tcf.tui.app import TcfApp
from tcf.tui.screens.queue import NO_WORKER, QueueScreen

from .conftest import FIXED, ORDER, clock, plain, settle

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


def make_app(db: Path, provider) -> TcfApp:
    return TcfApp(db, provider=provider, refresh_s=0, clock=clock)


def rows(app: TcfApp) -> list[list[str]]:
    table = app.screen.query_one(DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


def record_notes(app: TcfApp) -> list[tuple[str, str]]:
    """(severity, message) of every notification the app shows from now on."""
    notes: list[tuple[str, str]] = []
    original = app.notify

    def notify(message: str, *args, severity: str = "information", **kwargs) -> None:
        notes.append((severity, str(message)))
        original(message, *args, severity=severity, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    return notes


async def select(pilot, job_id: int) -> None:
    """Move the cursor to the job with the arrow keys, as a person would."""
    screen = pilot.app.screen
    assert isinstance(screen, QueueScreen)
    target = [j.id for j in screen.shown].index(job_id)
    current = screen.query_one(DataTable).cursor_row
    key = "down" if target > current else "up"
    await pilot.press(*[key] * abs(target - current))
    assert screen.selected().id == job_id


def db_job(db: Path, job_id: int):
    store = Store(db)
    try:
        return get_job(store, job_id)
    finally:
        store.close()


async def test_lists_jobs_in_queue_order_with_displayed_states(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = rows(app)
        assert [int(r[0]) for r in table] == ORDER
        states = {int(r[0]): r[1] for r in table}
        assert states == {1: "running", 2: "running", 6: "lost", 3: "queued", 4: "queued", 9: "blocked",
                          8: "cancelled", 7: "finished", 5: "failed"}
        by_id = {int(r[0]): r for r in table}
        # id, state, kind, name, GPU, progress, elapsed / ETA, prio, tags
        assert by_id[1][2:] == ["train", "mind-sasrec-opt-125m-top2", "0,1", "epoch 3 40%", "1h00m / ETA 1h16m",
                                "0", "scaling opt"]
        assert by_id[2][5:7] == ["blocks 16:24 24%", "10m00s / ETA 9s"]
        assert by_id[7][5:7] == ["2 ranges", "10m00s"]
        assert by_id[3][7:] == ["5", "scaling"]
        lost = app.screen.query_one(DataTable).get_row_at(ORDER.index(6))[1]
        assert "red" in str(lost.style)
        assert plain(app.screen.query_one("#workers")) == NO_WORKER


async def test_running_job_with_a_dead_process_shows_lost_at_once(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert db_job(db, 6).state == "running"  # nothing recorded it yet: the display alone says lost
        assert {int(r[0]): r[1] for r in rows(app)}[6] == "lost"


async def test_workers_line_counts_live_workers(db, provider):
    store = Store(db)
    with store.transaction():
        sql(store).execute("INSERT INTO workers (host, pid, devices, started_at, heartbeat) VALUES "
                         "('gpu-node-1', 77, '0,1,2,3', '2025-01-01T11:00:00+00:00', ?), "
                         "('gpu-node-2', 78, '0', '2025-01-01T10:00:00+00:00', ?)", [FIXED, FIXED - 3600])
    store.close()
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # the second worker's heartbeat is an hour old: it is not running
        assert plain(app.screen.query_one("#workers")) == "1 worker running: gpu-node-1 [0,1,2,3]"


async def test_c_cancels_the_selected_queued_job(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 4)
        await pilot.press("c")
        await settle(pilot)
        assert db_job(db, 4).state == "cancelled"
        assert db_job(db, 3).state == "queued"
        assert {int(r[0]): r[1] for r in rows(app)}[4] == "cancelled"


async def test_c_asks_before_it_stops_a_running_job(db, provider):
    """Reported (issue 22, 8): `c` cancelled a running job without a question."""
    from tcf.tui.widgets.dialogs import ConfirmDialog

    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 1)
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmDialog) and "Stop running job 1" in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen) and not db_job(db, 1).cancel_requested
        await pilot.press("c")
        await pilot.press("y")
        await settle(pilot)
        assert db_job(db, 1).cancel_requested  # (its worker on gpu-node-1 stops it)


async def test_cancel_of_an_ended_job_is_a_notification_not_a_crash(db, provider):
    app = make_app(db, provider)
    notes = record_notes(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 7)
        await pilot.press("c")
        await settle(pilot)
        assert ("error", "job 7 is finished; only queued or running jobs can be cancelled") in notes
        assert db_job(db, 7).state == "finished"
        assert app.is_running


async def test_r_retries_a_failed_job(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 5)
        await pilot.press("r")
        await settle(pilot)
        job = db_job(db, 5)
        assert (job.state, job.error) == ("queued", None)
        states = {int(r[0]): r[1] for r in rows(app)}
        assert states[5] == "queued"
        assert states[9] == "queued"  # its dependency is no longer failed: not blocked any more


async def test_plus_and_minus_change_priority(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 4)
        await pilot.press("plus")
        await settle(pilot)
        await pilot.press("plus")
        await settle(pilot)
        assert db_job(db, 4).priority == 2
        await pilot.press("minus")
        await settle(pilot)
        assert db_job(db, 4).priority == 1
        assert {int(r[0]): r[7] for r in rows(app)}[4] == "1"


async def test_t_and_n_edit_tags_and_note(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 3)
        await pilot.press("t", "ctrl+u", *"big, opt", "enter")  # the dialog starts with the current tags
        await settle(pilot)
        await pilot.press("n", *"rerun", "enter")
        await settle(pilot)
        job = db_job(db, 3)
        assert job.tags == ("big", "opt")
        assert job.note == "rerun"
        await pilot.press("n", *"xyz", "escape")  # escape keeps the note
        await settle(pilot)
        assert db_job(db, 3).note == "rerun"


async def test_slash_filters_rows_and_escape_clears(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"dssm")
        await settle(pilot)
        assert sorted(int(r[0]) for r in rows(app)) == [5, 8, 9]
        await pilot.press("enter")  # keeps the filter, back to the table: keys act on the filtered rows
        assert app.screen.query_one(DataTable).has_focus
        assert len(rows(app)) == 3
        await pilot.press("escape")
        await settle(pilot)
        assert [int(r[0]) for r in rows(app)] == ORDER


async def test_enter_opens_live_screen_of_the_selected_job(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await select(pilot, 2)
        await pilot.press("enter")
        await settle(pilot)
        assert app.current_mode == "live"
        assert plain(app.screen.query_one("#title")).startswith("#2 infer infer mind-opt-1.3b")


async def test_a_with_a_bad_path_shows_the_error(db, provider, tmp_path):
    app = make_app(db, provider)
    notes = record_notes(app)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("a")
        app.screen.query_one("#path").value = str(tmp_path / "missing.yaml")  # typing it key by key is slow
        await pilot.press("enter")
        await settle(pilot)
        errors = [m for s, m in notes if s == "error"]
        assert len(errors) == 1 and "missing.yaml" in errors[0]
        assert len(rows(app)) == len(ORDER)


@pytest.fixture
def id_config(small_dataset, tmp_path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(json.dumps({"name": "small-id", "dataset": {"path": str(small_dataset)},
                                "model": {"item_tower": "id", "embedding_dim": 16},
                                "train": {"epochs": 1, "device": "cpu"}}))
    return path


async def test_a_queues_the_jobs_of_a_config_with_tags_and_note(db, provider, id_config):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("a")
        app.screen.query_one("#path").value = str(id_config)  # typing a long path key by key is slow
        await pilot.press("tab", *"scaling smoke", "tab", *"first try", "enter")
        deadline = time.monotonic() + 240  # the first queue_config imports torch (slow on a busy machine)
        while len(rows(app)) == len(ORDER) and time.monotonic() < deadline:
            await settle(pilot)
        new = [r for r in rows(app) if int(r[0]) not in ORDER]
        assert len(new) == 1
        job = db_job(db, int(new[0][0]))
        assert (job.name, job.state, job.tags, job.note) == ("small-id", "queued", ("scaling", "smoke"), "first try")


async def test_keys_typed_into_the_filter_are_text_not_actions(db, provider):
    app = make_app(db, provider)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", "plus", "c", "r", "a")
        await settle(pilot)
        assert app.screen.query_one("#filter").value == "+cra"
        assert db_job(db, 1).priority == 0 and db_job(db, 1).state == "running"
        assert isinstance(app.screen, QueueScreen)  # "a" opened no dialog


async def test_first_load_highlights_the_job_the_app_already_follows(db, provider):
    app = make_app(db, provider)
    app.job_id = 7  # e.g. set by a script before the queue loaded
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.selected().id == 7 and app.job_id == 7
        await pilot.press("down")
        assert app.job_id == ORDER[ORDER.index(7) + 1]  # moving the cursor moves what Live follows
