"""The Results screen: compare runs by the test metrics of their best checkpoint, and export the table.

Everything the table shows comes from tcf.report.view (rows, groups over seeds, baseline deltas,
exports through tcf.report.render's registry), so what is on screen and what is written to a file
cannot disagree. Loading is :class:`DataScreen`'s: one read of the runs in a worker thread, posted
back as :class:`RunsLoaded`.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Input, Label, RadioButton, RadioSet, Static
from textual.widgets.data_table import CellDoesNotExist

from tcf.errors import TcfError
from tcf.report.render import FORMATS, format_for_path
from tcf.report.runs import RunRecord, load_runs
from tcf.report.view import (
    VIEW_FORMATS,
    Column,
    DiffLine,
    Row,
    View,
    ViewState,
    build_view,
    cell_text,
    config_diff,
    export,
    metric_label,
    next_sort,
    note,
    plot_metric,
    plot_panels,
)
from tcf.store.db import Store
from tcf.tui.screens.base import DataScreen, LoadFailed
from tcf.tui.widgets.braille_plot import render_plot
from tcf.tui.widgets.filter_box import FilterBox
from tcf.tui.widgets.table import Table
from tcf.tui.widgets.tabs import ScreenTabs
from tcf.util.atomic import write_user_file

DEFAULT_EXPORT = "results.tex"


class RunsLoaded(Message):
    """A fresh read of every run (any status) with its tags."""

    def __init__(self, runs: list[RunRecord]) -> None:
        super().__init__()
        self.runs = runs


def _styled(view: View, row: Row, column: Column, marked: bool) -> Text:
    """A cell's text (exactly what exports write) with colour: deltas green/red, the baseline bold."""
    plain = cell_text(view, row, column)
    text = Text(plain, justify="right" if column.numeric else "left")
    if column.kind == "metric" and "(" in plain and not row.is_baseline:
        start = plain.rindex("(")
        text.stylize("green" if plain[start + 1] == "+" else "red", start)
    if row.is_baseline and (column.id in ("run_id", "name") or column.kind == "metric"):
        text.stylize("bold yellow")
    if marked and column.id == "run_id":
        text.stylize("reverse magenta")
    return text


class ResultsScreen(DataScreen):
    """One row per run (or per seed group) with its best-checkpoint test metrics; sort, filter, compare, export."""

    DEFAULT_CSS = """
    ResultsScreen ScreenTabs { dock: top; }
    #results-status { height: auto; padding: 0 1; }
    #results-filter { height: 3; margin: 0 1; }
    #results-table { height: 1fr; }
    #results-note { height: auto; padding: 0 1; }
    """

    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="filter: words, dataset:X, tag:Y, arch:, tower:, encoder:, status:"),
        Binding("escape", "clear_filter", "Clear filter", show=False, tooltip="clear the filter"),
        Binding("s", "sort", "Sort", tooltip="sort by the cursor's column (best first, reversed, off)"),
        Binding("g", "group", "Group seeds", tooltip="fold runs that differ only by seed: mean ± std"),
        Binding("b", "baseline", "Baseline", tooltip="mark the row as the baseline: deltas on every other row"),
        Binding("m", "mark", "Mark", tooltip="mark a run for a config diff"),
        Binding("d", "diff", "Diff", tooltip="config diff of the marked run and this one"),
        Binding("e", "export", "Export", tooltip="export the view to LaTeX, Markdown or CSV"),
        Binding("p", "plot", "Plot", tooltip="plot the metric against model size"),
        Binding("a", "all_runs", "All runs", tooltip="show runs of every status"),
        Binding("c", "all_config", "All config", tooltip="show every config column, not only those that vary"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunRecord] | None = None  # None until the first load
        self.state = ViewState()
        self.view: View | None = None
        self.marked: int | None = None  # run id marked with m for a diff
        self.export_path = DEFAULT_EXPORT
        self.loads = 0  # finished loads, failed ones too (tests wait on it)
        self._shown: tuple = ()
        self._cursor: tuple[str | None, str | None] = (None, None)  # (row key, column id), kept while no row shows

    def compose(self) -> ComposeResult:
        yield ScreenTabs("results")
        yield Static("loading experiments.db ...", id="results-status")
        yield FilterBox(placeholder="filter: words (name, dataset, tags, encoder), dataset:X, tag:Y, arch:, tower:, "
                                    "status:", id="results-filter")
        yield Table(id="results-table", cursor_type="cell", zebra_stripes=True, fixed_columns=2)
        yield Static(id="results-note")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    # -- loading (DataScreen: on resume and on every app tick) -----------------------------------

    def load(self, store: Store) -> RunsLoaded:
        return RunsLoaded(load_runs(store))

    def on_runs_loaded(self, message: RunsLoaded) -> None:
        recovered, self._last_error = self._last_error is not None, None
        changed = message.runs != self.runs
        self.runs = message.runs
        if changed or recovered:  # recovered: the status line still shows the error
            self.show()
        self.loads += 1

    def on_load_failed(self, message: LoadFailed) -> None:
        """Also in the status line; DataScreen's handler (Textual calls it next) notifies once per error."""
        if message.text != self._last_error:
            self.query_one("#results-status", Static).update(Text(message.text, style="red"))
        self.loads += 1

    # -- drawing -------------------------------------------------------------------------------

    def show(self) -> None:
        """Rebuild the view from the runs and the state; redraw the table only when it changed."""
        if self.runs is None or not self.is_mounted:
            return
        view = build_view(self.runs, self.state)
        self.view = view
        table = self.query_one(DataTable)
        rows = tuple(tuple(_styled(view, r, c, self.marked in r.run_ids) for c in view.columns) for r in view.rows)
        shown = (tuple(self._header(c) for c in view.columns), tuple(r.key for r in view.rows), rows)
        if shown != self._shown:
            cursor = self._cursor_keys() if table.row_count else self._cursor
            old = table.cursor_coordinate
            table.clear(columns=True)
            for column, header in zip(view.columns, shown[0], strict=True):
                table.add_column(header, key=column.id)
            for row, cells in zip(view.rows, rows, strict=True):
                table.add_row(*cells, key=row.key)
            self._restore_cursor(cursor, old)
            self._shown = shown
            if table.row_count:
                self._cursor = self._cursor_keys()
        self._status()

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        if event.data_table.id == "results-table" and event.data_table.row_count:
            self._cursor = self._cursor_keys()

    def _header(self, column: Column) -> Text:
        label = column.label
        if self.state.sort and self.state.sort[0] == column.id:
            label += " ▼" if self.state.sort[1] else " ▲"
        return Text(label, justify="right" if column.numeric else "left", style="bold")

    def _cursor_keys(self) -> tuple[str | None, str | None]:
        table = self.query_one(DataTable)
        if table.row_count == 0 or not table.columns:
            return None, None
        try:
            cell = table.coordinate_to_cell_key(table.cursor_coordinate)
        except CellDoesNotExist:  # the cursor is outside a freshly cleared table
            return None, None
        return cell.row_key.value, cell.column_key.value

    def _restore_cursor(self, keys: tuple[str | None, str | None], old: Coordinate) -> None:
        """The same run (row key) and column as before the redraw, else the same position clamped."""
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        row_key, column_key = keys
        rows = [r.key for r in self.view.rows] if self.view else []
        columns = [c.id for c in self.view.columns] if self.view else []
        row = rows.index(row_key) if row_key in rows else min(old.row, table.row_count - 1)
        column = columns.index(column_key) if column_key in columns else min(old.column, len(columns) - 1)
        table.move_cursor(row=row, column=max(column, 0), animate=False)

    def _status(self) -> None:
        view = self.view
        assert view is not None
        state = self.state
        runs = sum(r.n for r in view.rows)
        parts = [f"{runs} of {view.pool} {'runs' if state.show_all_runs else 'finished runs'}"]
        if state.grouped:
            parts.append(f"{len(view.rows)} seed groups")
        if state.sort and (column := view.column(state.sort[0])):
            parts.append(f"sort {column.label} {'▼' if state.sort[1] else '▲'}")
        if view.baseline_ids:
            parts.append(f"baseline run {','.join(map(str, view.baseline_ids))}")
        if self.marked is not None:
            parts.append(f"marked run {self.marked}")
        if state.query:
            parts.append(f"filter {state.query!r}")
        parts.append("all config keys" if state.show_all_config else "config keys that vary")
        self.query_one("#results-status", Static).update(Text("  ·  ".join(parts)))
        self.query_one("#results-note", Static).update(Text(note(view), style="dim"))

    # -- selection -----------------------------------------------------------------------------

    def current_row(self) -> Row | None:
        table = self.query_one(DataTable)
        if self.view is None or table.row_count == 0 or not self.view.rows:
            return None
        return self.view.rows[min(table.cursor_row, len(self.view.rows) - 1)]

    def current_column(self) -> Column | None:
        table = self.query_one(DataTable)
        if self.view is None or not self.view.columns or table.row_count == 0:
            return None
        return self.view.columns[min(table.cursor_column, len(self.view.columns) - 1)]

    def _set(self, **changes: object) -> None:
        from dataclasses import replace

        self.state = replace(self.state, **changes)
        self.show()

    # -- actions -------------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one("#results-filter", FilterBox).open()

    def action_clear_filter(self) -> None:
        self.query_one("#results-filter", FilterBox).close()
        self._set(query="")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "results-filter":
            self._set(query=event.value)

    def action_sort(self, column_id: str | None = None) -> None:
        """Sort by the cursor's column: its natural direction (metrics best first), reversed, then off."""
        column = self.view.column(column_id) if (self.view and column_id) else self.current_column()
        if column is not None:
            self._set(sort=next_sort(self.state.sort, column))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.action_sort(str(event.column_key.value))

    def action_group(self) -> None:
        self._set(grouped=not self.state.grouped)
        self.notify("rows: one per group of runs that differ only by seed (mean ± std)" if self.state.grouped
                    else "rows: one per run")

    def action_all_runs(self) -> None:
        self._set(show_all_runs=not self.state.show_all_runs)

    def action_all_config(self) -> None:
        self._set(show_all_config=not self.state.show_all_config)

    def action_baseline(self) -> None:
        """Mark the row (a run, or a seed group) as the baseline; on a baseline row, unmark it."""
        row = self.current_row()
        if row is None:
            self.notify("no run selected", severity="warning")
            return
        if row.is_baseline:
            self._set(baseline=frozenset())
            self.notify("baseline cleared")
        else:
            self._set(baseline=frozenset(row.run_ids))
            self.notify(f"baseline: run {','.join(map(str, row.run_ids))}; other rows show their difference")

    def action_mark(self) -> None:
        row = self.current_row()
        if row is None:
            self.notify("no run selected", severity="warning")
            return
        run_id = row.run_ids[0]
        self.marked = None if self.marked == run_id else run_id
        if self.marked is not None:
            self.notify(f"run {run_id} marked: press d on another row to compare configs")
        self._shown = ()  # the marked cell's style changed
        self.show()

    def action_diff(self) -> None:
        row = self.current_row()
        runs = {r.run_id: r for r in self.runs or []}
        if self.marked is None or self.marked not in runs:
            self.notify("mark a run with m first, then press d on another row", severity="warning")
            return
        if row is None or row.run_ids[0] == self.marked:
            self.notify("move to another run to compare with the marked one", severity="warning")
            return
        self.app.push_screen(DiffScreen(runs[self.marked], row.runs[0]))

    def action_export(self) -> None:
        if self.view is None:
            return

        def write(choice: tuple[str, str] | None) -> None:
            if choice is None or self.view is None:
                return
            fmt, name = choice
            path = Path(name).expanduser()
            path = path if path.is_absolute() else Path.cwd() / path
            try:
                write_user_file(path, export(self.view, fmt))
            except TcfError as e:
                self.notify(str(e), title="export", severity="error")
                return
            self.export_path = name
            self.notify(f"wrote {path} ({FORMATS[fmt].title}, {len(self.view.rows)} rows)", title="export")

        self.app.push_screen(ExportDialog(self.export_path), write)

    def action_plot(self) -> None:
        if self.view is None:
            return
        column = self.current_column()
        sort = self.state.sort[0] if self.state.sort else None
        metric = plot_metric(self.view, [column.id if column else None, sort])
        if metric is None:
            self.notify("no run in this view has test metrics", severity="warning")
            return
        self.app.push_screen(PlotScreen(self.view, metric))


# -- modal screens -------------------------------------------------------------------------------

class DiffScreen(ModalScreen[None]):
    """Two runs' configs side by side: the keys that differ (highlighted), or every key with ``a``."""

    DEFAULT_CSS = """
    DiffScreen { align: center middle; }
    #diff-dialog { width: 90%; height: auto; max-height: 90%; border: thick $primary; background: $surface;
                   padding: 0 1; }
    #diff-title { text-style: bold; height: auto; margin-bottom: 1; }
    #diff-table { height: auto; max-height: 30; }
    #diff-help { color: $text-muted; height: 1; }
    """
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("a", "toggle_all", "All keys"),
    ]

    def __init__(self, left: RunRecord, right: RunRecord) -> None:
        super().__init__()
        self.left, self.right = left, right
        self.lines: list[DiffLine] = config_diff(left.raw_config, right.raw_config)
        self.show_all = False

    @property
    def differing(self) -> list[DiffLine]:
        return [line for line in self.lines if line.differs]

    def compose(self) -> ComposeResult:
        with Vertical(id="diff-dialog"):
            yield Static(id="diff-title")
            yield Table(id="diff-table", cursor_type="row", zebra_stripes=True)
            yield Label("a: all keys / only differing   escape: close", id="diff-help")

    def on_mount(self) -> None:
        self.fill()

    def fill(self) -> None:
        n = len(self.differing)
        self.query_one("#diff-title", Static).update(Text(
            f"config of run {self.left.run_id} ({self.left.name}) vs run {self.right.run_id} ({self.right.name}): "
            f"{n} of {len(self.lines)} keys differ" + ("" if self.show_all else "; a shows all")))
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_column("key", key="key")
        table.add_column(f"run {self.left.run_id}", key="left")
        table.add_column(f"run {self.right.run_id}", key="right")
        for line in self.lines if self.show_all else self.differing:
            style = "bold yellow" if line.differs else "dim"
            table.add_row(Text(line.key, style=style), Text(line.left, style=style), Text(line.right, style=style),
                          key=line.key)
        if not n:
            table.add_row(Text("(no difference)", style="dim"), "", "", key="(none)")
        table.focus()

    def action_toggle_all(self) -> None:
        self.show_all = not self.show_all
        self.fill()

    def action_close(self) -> None:
        self.dismiss(None)


class PlotScreen(ModalScreen[None]):
    """The scaling plot of the shown runs (tcf.report.plot's series), drawn in braille characters."""

    DEFAULT_CSS = """
    PlotScreen { align: center middle; }
    #plot-dialog { width: 96%; height: auto; max-height: 94%; border: thick $primary; background: $surface;
                   padding: 0 1; }
    #plot-help { color: $text-muted; height: 1; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("p", "close", "Close", show=False)]

    def __init__(self, view: View, metric: str) -> None:
        super().__init__()
        self.view, self.metric = view, metric
        self.text = Text()

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="plot-dialog"):
            yield Static(id="plot-body")
            yield Label(f"{metric_label(self.metric)} of the runs in the current view; escape: close", id="plot-help")

    def on_mount(self) -> None:
        width = max(40, self.app.size.width - 12)
        try:
            self.text = render_plot(plot_panels(self.view, self.metric), self.metric, width=width, height=12)
        except TcfError as e:  # runs this plot cannot tell apart: say so instead of averaging them
            self.text = Text(f"Nothing to plot: {e}", style="red")
        self.query_one("#plot-body", Static).update(self.text)

    def action_close(self) -> None:
        self.dismiss(None)


class ExportDialog(ModalScreen[tuple[str, str] | None]):
    """Format and file name for an export of the current view; Enter writes, Escape cancels.

    Picking a format changes the file name's extension; a name typed with .csv/.md/.tex picks its format.
    """

    DEFAULT_CSS = """
    ExportDialog { align: center middle; }
    #export-dialog { width: 72; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    #export-title { text-style: bold; margin-bottom: 1; }
    #export-format { width: 100%; }
    #export-buttons { height: auto; margin-top: 1; }
    #export-help { color: $text-muted; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("enter", "submit", "Write", priority=True)]

    def __init__(self, path: str = DEFAULT_EXPORT) -> None:
        super().__init__()
        self.path = path
        self.fmt = format_for_path(path, "latex", VIEW_FORMATS)

    def compose(self) -> ComposeResult:
        with Vertical(id="export-dialog"):
            yield Label("Export the view as shown (rows, columns, groups, sort)", id="export-title")
            with RadioSet(id="export-format"):
                for fmt in VIEW_FORMATS:
                    yield RadioButton(FORMATS[fmt].title, value=fmt == self.fmt, id=f"format-{fmt}")
            yield Input(self.path, placeholder="file name", id="export-path")
            with Horizontal(id="export-buttons"):
                yield Button("Export", variant="primary", id="export-ok")
                yield Button("Cancel", id="export-cancel")
            yield Label("enter: write   escape: cancel", id="export-help")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        self.fmt = str(event.pressed.id).removeprefix("format-")
        box = self.query_one("#export-path", Input)
        stem, dot, suffix = box.value.rpartition(".")
        extension = FORMATS[self.fmt].extension
        if dot and f".{suffix.lower()}" in {FORMATS[f].extension for f in VIEW_FORMATS}:
            box.value = stem + extension
        elif box.value:
            box.value += extension

    def _submit(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if not path:
            self.notify("give a file name", severity="warning")
            return
        self.dismiss((format_for_path(path, self.fmt, VIEW_FORMATS), path))

    def action_submit(self) -> None:
        """Enter writes from any field (the format list would otherwise take it); on Cancel it cancels."""
        if isinstance(self.focused, Button) and self.focused.id == "export-cancel":
            self.dismiss(None)
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "export-ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
