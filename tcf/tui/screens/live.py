"""The Live screen: one job's block ranges and epochs as progress bars, its log tail, and the GPUs.

It follows ``app.job_id`` (the job highlighted on the Queue screen, or opened with Enter); all it
shows comes from experiments.db (``live_view``), the job's log file (``log_tail``) and NVML.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from tcf.errors import TcfError
from tcf.jobs.queue import get_job
from tcf.store.db import Store
from tcf.store.events import LiveView, live_view, log_tail
from tcf.tui.screens.base import DataScreen
from tcf.tui.styles import STATE_STYLE
from tcf.tui.widgets.footer import KeyFooter
from tcf.tui.widgets.gpu_panel import GpuPanel
from tcf.tui.widgets.progress_bars import ProgressRow, column_widths, epoch_cells, range_cells
from tcf.tui.widgets.tabs import ScreenTabs
from tcf.util.text import printable
from tcf.util.units import duration

LOG_LINES = 10
NO_JOB = "no job selected: highlight one on the Queue screen (1) and press Enter"


class JobLoaded(Message):
    """The followed job's progress and log tail; ``view`` None with ``text`` saying why."""

    def __init__(self, view: LiveView | None, log: list[str], text: str = "") -> None:
        super().__init__()
        self.view, self.log, self.text = view, log, text


def title_line(view: LiveView) -> Text:
    """'#3 train mind-sasrec  running  GPU 0,1  elapsed 12m04s  ETA 3m10s  epoch 3'."""
    job = view.job
    text = Text(f"#{job.id} {job.kind} ", style="bold")
    text.append(printable(job.name), style="bold")
    text.append("  ")
    text.append(job.display, style=STATE_STYLE.get(job.display, ""))
    if job.devices:
        text.append(f"  GPU {job.devices}" if job.devices != "cpu" else "  CPU")
    if view.elapsed_s is not None:
        text.append(f"  elapsed {duration(view.elapsed_s)}")
    if job.display == "running":
        text.append(f"  ETA {duration(view.eta_s) or '?'}")
    if view.stage:
        text.append(f"  {view.stage}", style="dim")
    if job.error:
        text.append(f"\n{printable(job.error)}", style="red")
    return text


class LiveScreen(DataScreen):
    """Progress of the job the Queue screen points at; Escape goes back to the queue."""

    BINDINGS = [Binding("escape", "app.switch_mode('queue')", "Back", tooltip="back to the Queue screen")]
    _view: LiveView | None = None  # the last view: the next load folds only the events after it

    def compose(self) -> ComposeResult:
        yield ScreenTabs("live")
        yield Static(NO_JOB, id="title")
        with Horizontal(id="live-body"):
            with Vertical(id="bars"):
                yield Static("Pre-inference", classes="section", id="ranges-title")
                yield VerticalScroll(id="ranges")
                yield Static("Training", classes="section", id="epochs-title")
                yield VerticalScroll(id="epochs")
                yield Static(id="empty")
            yield GpuPanel(id="gpus")
        yield Static(id="log")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#log").border_title = "log"
        self._show_sections(ranges=False, epochs=False)

    def on_screen_resume(self) -> None:
        self.query_one(GpuPanel).show(self.app.gpu_history)
        super().on_screen_resume()

    def load(self, store: Store) -> JobLoaded:
        job_id = self.app.job_id
        if job_id is None:
            return JobLoaded(None, [], NO_JOB)
        now = self.app.clock()
        try:
            job = get_job(store, job_id, now=now)  # ``now`` decides running vs. lost (heartbeat age)
        except TcfError:
            return JobLoaded(None, [], f"job {job_id} is gone (removed from the queue)")
        self._view = live_view(store, job, now=now, since=self._view)  # only the events since the last load
        return JobLoaded(self._view, log_tail(job, LOG_LINES))

    def missing(self) -> JobLoaded:
        return JobLoaded(None, [], NO_JOB)

    def _show_sections(self, ranges: bool, epochs: bool) -> None:
        for name, shown in (("ranges", ranges), ("epochs", epochs)):
            self.query_one(f"#{name}-title").display = shown
            self.query_one(f"#{name}").display = shown

    def _show_rows(self, box_id: str, cells: list[tuple[str, int, int, str, bool]]) -> None:
        """One ProgressRow per range or epoch, reusing the mounted ones (no remount per refresh)."""
        box = self.query_one(f"#{box_id}", VerticalScroll)
        rows = list(box.query(ProgressRow))
        for extra in rows[len(cells):]:
            extra.remove()
        if len(rows) < len(cells):
            new = [ProgressRow() for _ in cells[len(rows):]]
            box.mount_all(new)
            rows += new
            box.scroll_end(animate=False)  # the newest range or epoch is the one to watch
        widths = column_widths(cells)
        for row, c in zip(rows[:len(cells)], cells, strict=True):
            row.show(c, widths)

    def on_job_loaded(self, message: JobLoaded) -> None:
        self._last_error = None
        view = message.view
        panel = self.query_one(GpuPanel)
        if view is None:
            self.query_one("#title", Static).update(message.text)
            self._show_sections(ranges=False, epochs=False)
            self.query_one("#empty", Static).update("")
            self.query_one("#log", Static).update("")
            panel.set_job(None, None)
            panel.show(self.app.gpu_history)
            return
        self.query_one("#title", Static).update(title_line(view))
        self._show_sections(ranges=bool(view.ranges), epochs=bool(view.epochs))
        self._show_rows("ranges", [range_cells(r) for r in view.ranges])
        self._show_rows("epochs", [epoch_cells(e) for e in view.epochs])
        empty = ""
        if not view.ranges and not view.epochs:
            empty = {"queued": "queued: waiting for a worker", "blocked": "blocked: a job it needs ended badly"
                     }.get(view.job.display, "no progress reported yet")
        self.query_one("#empty", Static).update(empty)
        log = Text("\n".join(message.log) if message.log else "(no log yet)", no_wrap=True, overflow="ellipsis")
        self.query_one("#log", Static).update(log)
        panel.set_job(view.gpu_peak_bytes, view.job.devices)
        panel.show(self.app.gpu_history)
