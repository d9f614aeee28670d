"""The Queue screen: every job with its state and progress, and the actions a person takes on one.

Actions go through tcf.jobs.queue only (cancel, retry, edit, queue a config), in worker threads;
the TUI never runs or kills a job itself beyond what ``cancel_job`` does, so quitting it stops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from tcf.jobs.queue import (
    TERMINAL,
    Job,
    cancel_job,
    edit_job,
    get_job,
    list_jobs,
    live_workers,
    match_jobs,
    queue_config,
    retry_jobs,
)
from tcf.store.db import Store
from tcf.store.events import LiveView, live_view, progress_summary
from tcf.tui.screens.base import DataScreen, no_store
from tcf.tui.styles import STATE_STYLE
from tcf.tui.widgets.dialogs import AddJobDialog, AddRequest, ConfirmDialog, PromptDialog, split_tags
from tcf.tui.widgets.filter_box import FilterBox
from tcf.tui.widgets.footer import KeyFooter
from tcf.tui.widgets.table import Table
from tcf.tui.widgets.tabs import ScreenTabs
from tcf.util.text import printable
from tcf.util.units import duration

COLUMNS = ("id", "state", "kind", "name", "GPU", "progress", "elapsed / ETA", "prio", "tags")
NAME_WIDTH = 34
NO_WORKER = "no worker running: start one with `tcf worker`"


class JobTable(Table):
    """The jobs; Enter (DataTable's select) opens the Live screen, and the footer says so."""

    BINDINGS = [Binding("enter", "select_cursor", "Live", tooltip="open the Live screen of the selected job")]


@dataclass(frozen=True)
class JobProgress:
    """What the table shows of a job's LiveView."""

    summary: str
    elapsed_s: float | None
    eta_s: float | None


class JobsLoaded(Message):
    """A fresh read of the queue: jobs in queue order, progress of the started ones, live workers."""

    def __init__(self, jobs: list[Job], progress: dict[int, JobProgress], workers: list[dict[str, Any]],
                 missing: str | None = None) -> None:
        super().__init__()
        self.jobs, self.progress, self.workers, self.missing = jobs, progress, workers, missing


def times_cell(job: Job, p: JobProgress | None) -> str:
    """'12m04s / ETA 3m10s' while running, the elapsed time once ended, nothing while queued."""
    if p is None or p.elapsed_s is None:
        return ""
    if job.display == "running":
        return f"{duration(p.elapsed_s)} / ETA {duration(p.eta_s) or '?'}"
    return duration(p.elapsed_s)


def workers_line(workers: list[dict[str, Any]]) -> Text:
    """How many workers will pick up queued jobs, and where; a hint when none will."""
    if not workers:
        return Text(NO_WORKER, style="yellow")
    where = ", ".join(f"{w['host']} [{w['devices']}]" for w in workers)
    return Text(f"{len(workers)} worker{'s' if len(workers) != 1 else ''} running: {where}")


def job_cells(job: Job, p: JobProgress | None) -> tuple[Any, ...]:
    name = printable(job.name)
    name = name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 1] + "…"
    return (str(job.id), Text(job.display, style=STATE_STYLE.get(job.display, "")), job.kind, Text(name),
            job.devices or "", p.summary if p else "", times_cell(job, p), str(job.priority),
            Text(printable(" ".join(job.tags))))


class QueueScreen(DataScreen):
    """All jobs, running first; the highlighted job is the one the Live screen follows."""

    BINDINGS = [
        Binding("a", "add", "Add", tooltip="queue the jobs of a config file (path, tags, note)"),
        Binding("c", "cancel", "Cancel", tooltip="cancel the selected job (a running one after you confirm)"),
        Binding("r", "retry", "Retry", tooltip="queue a failed, lost or cancelled job again (it resumes)"),
        Binding("plus", "priority(1)", "Prio+", key_display="+", tooltip="raise the priority of the selected job"),
        Binding("minus", "priority(-1)", "Prio-", key_display="-", tooltip="lower the priority of the selected job"),
        Binding("t", "tags", "Tags", tooltip="edit the tags of the selected job"),
        Binding("n", "note", "Note", tooltip="edit the note of the selected job"),
        Binding("slash", "filter", "Filter", key_display="/", tooltip="show only jobs matching a name, tag or state"),
        Binding("escape", "clear_filter", "Clear filter", show=False, tooltip="clear the filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[Job] = []
        self.progress: dict[int, JobProgress] = {}
        self.shown: list[Job] = []
        self.filter_text = ""
        self._rows: list[tuple[str, ...]] = []
        self._ended: dict[tuple[Any, ...], JobProgress] = {}  # ended jobs no longer change
        self._views: dict[int, LiveView] = {}  # running jobs' last views: the next load reads only newer events

    def compose(self) -> ComposeResult:
        yield ScreenTabs("queue")
        yield Static(id="workers")
        yield FilterBox(placeholder="filter: name, tag, state, kind, id (glob or substring)", id="filter")
        table = JobTable(id="jobs", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column, key=column)
        yield table
        yield Static(id="detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    # -- loading -------------------------------------------------------------------------------

    def load(self, store: Store) -> JobsLoaded:
        now = self.app.clock()
        jobs = list_jobs(store, now=now)
        progress = {j.id: self._job_progress(store, j, now) for j in jobs if j.started_at is not None}
        return JobsLoaded(jobs, progress, live_workers(store, now=now))

    def missing(self) -> JobsLoaded:
        """No store at the path: say so where the workers line is (a mistyped --db is no empty queue); `a`
        creates the store with the first job it queues."""
        return JobsLoaded([], {}, [], missing=no_store(self.app.db_path))

    def _job_progress(self, store: Store, job: Job, now: float) -> JobProgress:
        key = (job.id, job.state, job.attempts, job.finished_at)
        if job.state in TERMINAL and key in self._ended:
            return self._ended[key]
        view = live_view(store, job, now=now, since=self._views.get(job.id))  # only events since the last load
        self._views[job.id] = view
        summary = progress_summary(view)
        if job.display != job.state and summary == "starting":  # lost before it reported anything
            summary = ""
        p = JobProgress(summary, view.elapsed_s, view.eta_s)
        if job.state in TERMINAL:
            self._ended[key] = p
            self._views.pop(job.id, None)
        return p

    def on_jobs_loaded(self, message: JobsLoaded) -> None:
        if message.missing is not None and message.missing != self._last_error:
            self.notify(message.missing, title="experiments.db", severity="warning")
        self._last_error = message.missing
        self.jobs, self.progress = message.jobs, message.progress
        line = Text(message.missing, style="yellow") if message.missing else workers_line(message.workers)
        self.query_one("#workers", Static).update(line)
        self.show_jobs()

    def show_jobs(self) -> None:
        """Redraw the table from ``self.jobs`` and the filter, keeping the highlighted job (at first: the
        job the app already follows, if any). Same jobs in the same order: only changed cells are updated."""
        table = self.query_one(DataTable)
        shown = match_jobs(self.jobs, self.filter_text)
        cells = [job_cells(j, self.progress.get(j.id)) for j in shown]
        plain = [tuple(str(c) for c in row) for row in cells]
        if [r[0] for r in plain] == [r[0] for r in self._rows]:
            for old, new, row in zip(self._rows, plain, cells, strict=True):
                for column, a, b, value in zip(COLUMNS, old, new, row, strict=True):
                    if a != b:
                        table.update_cell(new[0], column, value, update_width=True)
        else:
            current = self.selected()
            keep = current.id if current is not None else self.app.job_id
            table.clear()
            for job, row in zip(shown, cells, strict=True):
                table.add_row(*row, key=str(job.id))
            ids = [j.id for j in shown]
            if keep in ids:
                table.move_cursor(row=ids.index(keep), animate=False)
        self._rows = plain
        self.shown = shown
        self._show_detail()

    def selected(self) -> Job | None:
        table = self.query_one(DataTable)
        if not self.shown or table.row_count == 0:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        job = self.selected()
        if job is not None:
            self.app.job_id = job.id  # the Live screen follows the highlighted job
        detail = self.query_one("#detail", Static)
        if job is None:
            detail.update("no jobs: press [b]a[/b] to queue a config" if not self.filter_text else "no match")
            return
        text = Text(f"#{job.id} {printable(job.name)}", style="bold")
        if job.deps:
            text.append(f"  after job {', '.join(map(str, job.deps))}", style="dim")
        if job.note:
            text.append(f"  note: {printable(job.note)}")
        if job.error:
            text.append(f"  {printable(job.error)}", style="red")
        detail.update(text)

    # -- actions -------------------------------------------------------------------------------

    def _target(self) -> Job | None:
        job = self.selected()
        if job is None:
            self.notify("no job selected", severity="warning")
        return job

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.open_live()

    def open_live(self) -> None:
        job = self._target()
        if job is not None:
            self.app.job_id = job.id
            self.app.switch_mode("live")

    def action_cancel(self) -> None:
        """Cancel a queued job at once; a running one only after the user confirms (it is stopped, mid-work)."""
        if (job := self._target()) is None:
            return
        if job.display not in ("running", "stale"):
            self.act(lambda store: cancel_job(store, job.id))
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.act(lambda store: cancel_job(store, job.id))

        where = f" on GPU {job.devices}" if job.devices and job.devices != "cpu" else ""
        self.app.push_screen(ConfirmDialog(f"Stop running job {job.id} ({printable(job.name)}){where}?",
                                           "Its process gets SIGTERM and records itself cancelled; `r` queues it "
                                           "again (it resumes from its last checkpoint or block range)."), answer)

    def action_retry(self) -> None:
        if (job := self._target()) is not None:
            self.act(lambda store: f"job {', '.join(map(str, retry_jobs(store, [job.id])))} queued again")

    def action_priority(self, delta: int) -> None:
        if (job := self._target()) is None:
            return

        def bump(store: Store) -> str:
            current = get_job(store, job.id).priority  # the stored one: another client may have changed it
            return f"job {job.id}: priority {edit_job(store, job.id, priority=current + delta).priority}"

        self.act(bump)

    def action_tags(self) -> None:
        if (job := self._target()) is None:
            return

        def save(text: str | None) -> None:
            if text is not None:
                self.act(lambda store: f"job {job.id}: tags "
                         f"{' '.join(edit_job(store, job.id, tags=split_tags(text)).tags) or '(none)'}")

        self.app.push_screen(PromptDialog(f"Tags of job {job.id}", " ".join(job.tags), "single words"), save)

    def action_note(self) -> None:
        if (job := self._target()) is None:
            return

        def save(text: str | None) -> None:
            if text is not None:
                self.act(lambda store: f"job {job.id}: note {edit_job(store, job.id, note=text.strip()).note!r}")

        self.app.push_screen(PromptDialog(f"Note of job {job.id}", job.note), save)

    def action_add(self) -> None:
        def queue(request: AddRequest | None) -> None:
            if request is None:
                return

            def say(text: str) -> None:
                self.app.call_from_thread(self.notify, text)

            def add(store: Store) -> str:
                path = None if request.path is None else Path(request.path).expanduser()
                ids = queue_config(store, path, say=say, tags=request.tags, note=request.note)
                return f"queued job{'s' if len(ids) != 1 else ''} {', '.join(map(str, ids))}"

            self.act(add)

        self.app.push_screen(AddJobDialog(), queue)

    # -- filter --------------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one("#filter", FilterBox).open()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", FilterBox).close()
        self.filter_text = ""
        self.show_jobs()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value
            self.show_jobs()
