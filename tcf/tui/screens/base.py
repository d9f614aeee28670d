"""What the data screens share: loads and queue actions run in worker threads and post typed messages.

A Store's sqlite connection belongs to the thread that opened it, so every worker opens its own
(cheap) and closes it; the event loop never touches the database and the UI stays responsive even
while a writer holds the lock for the 30 s busy timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tcf.jobs.slurm import follow
from tcf.store.db import READ_ERRORS, Store

FOLLOW_EVERY_S = 2.0  # squeue at most this often, however often the screens refresh


def no_store(path: Any) -> str:
    """What a screen says while no store exists at the path it reads: a mistyped --db shows here, not as an
    empty queue."""
    where = Path(path).expanduser().absolute()
    folder = "" if where.parent.is_dir() else f" (nor the folder {where.parent})"
    return (f"no tcf result store at {where}{folder}: check --db or TCF_DB; tcf run, tcf queue add or "
            "tcf worker make one there")


@contextmanager
def open_store(path: Any, readonly: bool = True) -> Iterator[Store]:
    """This thread's own Store: read-only for the screens' loads (watching never changes a byte of the file),
    writable for the queue actions the user asks for."""
    store = Store(path, readonly=readonly)
    try:
        yield store
    finally:
        store.close()


class ActionDone(Message):
    """A queue action finished: ``text`` is what to tell the user; ``error`` marks a refusal or failure."""

    def __init__(self, text: str, error: bool = False) -> None:
        super().__init__()
        self.text, self.error = text, error


class LoadFailed(Message):
    """Reading experiments.db failed (locked too long, newer schema, unreadable file)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class DataScreen(Screen):
    """A screen that reloads from experiments.db when shown and on every app tick (``reload``)."""

    def __init__(self) -> None:
        super().__init__()
        self._loader: Worker | None = None
        self._again = False  # a reload was asked for while one ran: run one more when it ends
        self._last_error: str | None = None

    def load(self, store: Store) -> Message:
        """Read what the screen shows (runs in a worker thread); returns the message to post."""
        raise NotImplementedError

    def reload(self) -> None:
        """Start a load unless one is still running (a slow database must not pile up workers)."""
        if self._loader is not None and not self._loader.is_finished:
            self._again = True
            return
        self._again = False
        self._loader = self.run_worker(self._load, thread=True, group="load", exit_on_error=False)

    def on_screen_resume(self) -> None:
        self.reload()

    def missing(self) -> Message:
        """What to show while there is no experiments.db (reading must not create an empty one)."""
        return LoadFailed(no_store(self.app.db_path))

    def _load(self) -> None:
        try:
            if not Path(self.app.db_path).exists():
                message = self.missing()
            else:
                try:  # Slurm jobs: their states and records merged first, when there are any
                    follow(self.app.db_path, min_interval_s=FOLLOW_EVERY_S)
                    unsynced = None
                except READ_ERRORS as e:
                    unsynced = LoadFailed(f"cannot sync the Slurm jobs: {e}")
                with open_store(self.app.db_path) as store:
                    message = self.load(store)
                if unsynced is not None:  # what is merged already still shows; say why the rest does not
                    self.post_message(unsynced)
        except READ_ERRORS as e:
            message = LoadFailed(str(e))
        except Exception as e:  # e.g. an event this version cannot fold: say so rather than go stale silently
            message = LoadFailed(f"{type(e).__name__}: {e}")
        self.post_message(message)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._loader and event.state in (WorkerState.SUCCESS, WorkerState.ERROR) and self._again:
            self.reload()

    def on_load_failed(self, message: LoadFailed) -> None:
        if message.text != self._last_error:  # once per distinct error, not once per tick
            self.notify(message.text, title="experiments.db", severity="error")
        self._last_error = message.text

    def act(self, fn: Callable[[Store], str]) -> None:
        """Run a queue action in a worker; its result or its error becomes a notification."""

        def work() -> None:
            try:
                with open_store(self.app.db_path, readonly=False) as store:
                    done = ActionDone(fn(store))
            except Exception as e:  # any failure of a user action is reported, never a crash
                done = ActionDone(str(e) or type(e).__name__, error=True)
            self.post_message(done)

        self.run_worker(work, thread=True, group="action", exit_on_error=False)

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="error" if message.error else "information")
        self.reload()
