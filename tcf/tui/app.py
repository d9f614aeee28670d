"""``tcf-tui``: watch and steer the job queue in experiments.db (Queue, Live and Results screens).

A thin layer over tcf.jobs: it reads experiments.db and NVML in worker threads, and starts or stops
jobs only through the queue functions, so quitting it never stops a job and it never runs one itself.

    tcf-tui --db experiments.db
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.message import Message

from tcf.tui.screens.help import HelpScreen
from tcf.tui.screens.live import LiveScreen
from tcf.tui.screens.queue import JobTable, QueueScreen
from tcf.tui.screens.results import ResultsScreen
from tcf.tui.widgets.gpu_panel import GpuHistory, GpuPanel
from tcf.util.gpu import GpuError, GpuInfo, GpuProvider, get_provider
from tcf.util.host import HostInfo, HostSampler


class GpuSampled(Message):
    """One reading of every GPU; ``reason`` says why there is none (no NVML, or NVML failed); ``host``: this
    machine's CPU and memory (shown where there is no GPU)."""

    def __init__(self, gpus: list[GpuInfo], reason: str | None, host: HostInfo | None = None) -> None:
        super().__init__()
        self.gpus, self.reason, self.host = gpus, reason, host


class TcfApp(App[None]):
    """Screens read ``app.db_path``, ``app.provider``, ``app.clock`` and ``app.job_id`` (the followed job).

    Every ``refresh_s`` seconds (0: never; tests and snapshots) the app samples the GPUs and asks the
    current screen to ``reload()``; ``clock`` is what "now" means for elapsed times and ETAs.
    """

    CSS_PATH = "tcf.tcss"
    TITLE = "tcf"
    MODES = {"queue": QueueScreen, "live": LiveScreen, "results": ResultsScreen}
    DEFAULT_MODE = "queue"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the footer needs the room
    BINDINGS = [
        # the tab bar shows 1 2 3, so the footer need not
        Binding("1", "switch_mode('queue')", "Queue", show=False, tooltip="the job queue"),
        Binding("2", "switch_mode('live')", "Live", show=False, tooltip="progress, log and GPUs of the selected job"),
        Binding("3", "switch_mode('results')", "Results", show=False, tooltip="results of finished runs"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="this list of keys"),
        Binding("q", "quit", "Quit", tooltip="quit (jobs keep running)"),
    ]

    def __init__(self, db_path: Path, provider: GpuProvider | None = None, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.time, host: Callable[[], HostInfo] | None = None) -> None:
        super().__init__()
        self.db_path = Path(db_path)
        self.provider: GpuProvider = provider if provider is not None else get_provider()
        self.host = host if host is not None else HostSampler().sample  # CPU and RAM, where no GPU is
        self.refresh_s = refresh_s
        self.clock = clock
        self.job_id: int | None = None
        self.gpu_history = GpuHistory()

    def on_mount(self) -> None:
        self.sample_gpus()
        if self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.tick)
        self.call_after_refresh(self._freeze_startup_objects)

    def _freeze_startup_objects(self) -> None:
        """The ~100k objects alive once the first screen is up (modules, widgets) live as long as the app;
        a full garbage collection scanning them took ~70 ms, enough to make a key press late. Frozen,
        the collector skips them."""
        gc.freeze()

    def on_unmount(self) -> None:
        gc.unfreeze()  # collectable again (several apps in one process: tests)

    def tick(self) -> None:
        if not self.is_running or not self.screen_stack:  # the timer may fire once more while exiting
            return
        self.sample_gpus()
        reload = getattr(self.screen, "reload", None)
        if callable(reload):
            reload()

    def sample_gpus(self) -> None:
        """Read the GPUs in a worker, unless the last reading still runs (a hung NVML call)."""
        if not any(w.group == "gpu" and not w.is_finished for w in self.workers):
            self.run_worker(self._sample, thread=True, group="gpu", exit_on_error=False)

    def _sample(self) -> None:
        try:
            gpus, reason = self.provider.all(), (None if self.provider.available else self.provider.reason)
        except GpuError as e:
            gpus, reason = [], str(e)
        self.post_message(GpuSampled(gpus, reason, self.host()))

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        self.gpu_history.add(message.gpus, message.reason, message.host)
        for screen in self.screen_stack[-1:]:  # none while the app exits: a late sample is only recorded
            for panel in screen.query(GpuPanel):
                panel.show(self.gpu_history)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        sources = [("everywhere", TcfApp), ("Queue", JobTable), ("Queue", QueueScreen), ("Live", LiveScreen),
                   ("Results", ResultsScreen)]
        # each class's own bindings, not the ones every Screen inherits (tab, copy)
        self.push_screen(HelpScreen([(where, list(vars(cls).get("BINDINGS", []))) for where, cls in sources]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tcf-tui", description="Watch and steer the tcf job queue.")
    parser.add_argument("--db", type=Path, default=Path(os.environ.get("TCF_DB", "experiments.db")),
                        help="result store (SQLite; default: $TCF_DB or experiments.db)")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes (default 1)")
    args = parser.parse_args(argv)
    TcfApp(args.db, refresh_s=args.refresh).run()


if __name__ == "__main__":
    main()
