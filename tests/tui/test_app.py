"""The app shell: screen switching by key and by tab, the help screen, quitting, and the command line."""

from __future__ import annotations

import pytest

from tcf.jobs.queue import get_job
from tcf.store.db import Store
from tcf.tui import app as app_module
from tcf.tui.app import GpuSampled, TcfApp
from tcf.tui.screens.help import HelpScreen
from tcf.tui.screens.live import LiveScreen
from tcf.tui.screens.queue import JobTable, QueueScreen
from tcf.tui.screens.results import ResultsScreen

from .conftest import clock, plain, settle

pytestmark = pytest.mark.anyio
SIZE = (120, 40)


async def test_number_keys_and_tabs_switch_screens(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("2")
        assert isinstance(app.screen, LiveScreen)
        await pilot.press("3")
        assert isinstance(app.screen, ResultsScreen)
        await pilot.press("1")
        assert isinstance(app.screen, QueueScreen)
        await pilot.click("#live")  # the "2 Live" tab
        await settle(pilot)
        assert isinstance(app.screen, LiveScreen)
        await pilot.click("#queue")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)


async def test_help_lists_every_key_of_every_screen(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        rows = app.screen.keys()
        listed = {(where, key) for where, key, _ in rows}
        for where, cls in [("everywhere", TcfApp), ("Queue", JobTable), ("Queue", QueueScreen), ("Live", LiveScreen)]:
            for b in cls.BINDINGS:
                assert (where, app.get_key_display(b)) in listed, (where, b.key)
        keys = {key for _, key, _ in rows}
        assert {"1", "2", "3", "?", "q", "⏎", "a", "c", "r", "+", "-", "t", "n", "/"} <= keys
        assert "cancel the selected job" in plain(app.screen.query_one("#keys"))
        await pilot.press("q")  # closes the help, does not quit
        assert app.is_running and isinstance(app.screen, QueueScreen)


async def test_quitting_leaves_jobs_alone(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0.05, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    store = Store(db)
    assert [get_job(store, i).state for i in (1, 2, 3)] == ["running", "running", "queued"]
    store.close()


async def test_a_missing_store_is_said_and_not_created_by_looking(tmp_path, provider):
    """Reported (issue 22, 8): `tcf-tui --db` with a mistyped path showed an empty queue and no word about it."""
    db = tmp_path / "experiments.db"
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert plain(app.screen.query_one("#workers")).startswith(f"no tcf result store at {db}: check --db")
        assert "press a to queue a config" in plain(app.screen.query_one("#detail"))
        await pilot.press("2")
        await settle(pilot)
        assert not db.exists()


async def test_an_unreadable_store_is_a_notification_not_a_crash(tmp_path, provider):
    db = tmp_path / "experiments.db"
    db.write_bytes(b"not a database" * 100)
    app = TcfApp(db, provider=provider, refresh_s=0.05, clock=clock)
    notes = []
    app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.pause(0.2)  # a few refreshes: still one notification
        assert app.is_running
    assert len(notes) == 1 and "cannot open the experiment store" in notes[0]


async def test_a_gpu_sample_that_lands_while_the_app_exits_is_recorded_not_a_crash(db, provider):
    app = TcfApp(db, provider=provider, refresh_s=0, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
    assert not app.screen_stack  # the sampling worker's message can still arrive now
    app.on_gpu_sampled(GpuSampled(provider.all(), None))
    assert [g.index for g in app.gpu_history.latest] == [0, 1]


def test_main_takes_db_from_option_or_environment(monkeypatch, tmp_path):
    started: list[TcfApp] = []
    monkeypatch.setattr(TcfApp, "run", lambda self: started.append(self))
    monkeypatch.setattr(app_module, "get_provider", lambda: "provider")
    monkeypatch.setenv("TCF_DB", str(tmp_path / "env.db"))
    app_module.main([])
    app_module.main(["--db", str(tmp_path / "opt.db"), "--refresh", "2.5"])
    monkeypatch.delenv("TCF_DB")
    app_module.main([])
    assert [(a.db_path.name, a.refresh_s) for a in started] == [("env.db", 1.0), ("opt.db", 2.5),
                                                               ("experiments.db", 1.0)]
    assert started[0].provider == "provider"
