"""The Results screen's table, without any UI: a row per run (or per seed group) with the test metrics
of the best validation epoch, which are the `results` view's ``test_*`` columns. The last epoch's
validation rows (``metrics.split = 'epoch'``) are never read: a table that showed them would rank runs
by where early stopping happened to end, not by their selected checkpoint.

Everything here is pure (runs in, a :class:`View` out), so the screen, its exports and the tests agree
on one layout::

    runs = load_runs(Store("experiments.db"))
    view = build_view(runs, ViewState(grouped=True, sort=("test_ndcg@10", True), query="dataset:mind"))
    write_user_file(Path("table.tex"), export(view, "latex"))

Cells print through tcf.report.render's one cell formatter; csv keeps fractions at full precision.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tcf.report.plot import Panel, scaling_panels
from tcf.report.render import Cell, Grid, GridColumn, Shown, Table, latex_escape, metric_text, render
from tcf.report.runs import (
    DEFAULT_METRIC,
    RunRecord,
    display,
    flatten,
    matches,
    parse_query,
    sort_key,
    variant,
)
from tcf.store.schema import metric_key

VIEW_FORMATS = ("latex", "md", "csv")  # what the screen exports (tcf.report.render's registry)
METRIC_PREFIX = "test_"
SEED = "seed"
# Config keys that a run column already shows (as the dataset's folder name, the encoder's base name).
SHOWN_AS_COLUMNS = frozenset({"name", "dataset.path", "model.architecture", "model.item_tower", "text_encoder.model"})
NUMERIC_COLUMNS = frozenset({"run_id", "lm_params", "n"})
RUN_COLUMN_LABELS = {
    "run_id": "id", "name": "name", "status": "status", "dataset": "dataset", "architecture": "arch",
    "item_tower": "tower", "encoder": "encoder", "lm_params": "lm_params", "tags": "tags", "n": "n",
}


@dataclass(frozen=True)
class ViewState:
    """Everything the user chose: the same runs and state always give the same view."""

    show_all_runs: bool = False  # False: finished runs only
    show_all_config: bool = False  # False: only config keys that vary across the shown runs
    grouped: bool = False  # fold runs that differ only by seed
    sort: tuple[str, bool] | None = None  # (column id, descending); None: run id order
    query: str = ""
    baseline: frozenset[int] = frozenset()  # run ids marked as the baseline (a run, or a group's runs)


@dataclass(frozen=True)
class Column:
    id: str  # run column ("run_id", "name", ...), dotted config key, or metric ("test_ndcg@10")
    label: str
    kind: str  # "run", "config" or "metric"

    @property
    def numeric(self) -> bool:
        return self.kind == "metric" or self.id in NUMERIC_COLUMNS


@dataclass(frozen=True)
class Row:
    """A run, or runs that differ only by seed; ``metrics`` holds a Cell (mean ± std, delta) per metric."""

    key: str  # stable across refreshes: the lowest run id
    runs: tuple[RunRecord, ...]
    metrics: dict[str, Cell]
    is_baseline: bool = False

    @property
    def run_ids(self) -> tuple[int, ...]:
        return tuple(r.run_id for r in self.runs)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class View:
    """The rows and columns on screen, in order, and the runs they are compared with (their cells carry
    the baseline's means)."""

    state: ViewState
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    baseline_ids: tuple[int, ...] = ()
    pool: int = 0  # runs before the `/` query (after the finished/all toggle)
    baseline_runs: tuple[RunRecord, ...] = ()  # the runs of baseline_ids (shown or not)

    def column(self, column_id: str) -> Column | None:
        return next((c for c in self.columns if c.id == column_id), None)

    @property
    def metric_ids(self) -> list[str]:
        return [c.id for c in self.columns if c.kind == "metric"]


def metric_label(metric: str) -> str:
    """``test_ndcg@10`` -> ``NDCG@10`` (every metric column is a test metric)."""
    return metric.removeprefix(METRIC_PREFIX).upper()


def group_signature(run: RunRecord) -> tuple:
    """What must agree for runs to share a group: everything they measure (tcf.report.runs.variant: all but the
    seed, the name and how they were computed). Absent and None are the same (an ID run with or without a stale
    text_encoder section)."""
    return (run.dataset, run.architecture, run.item_tower, run.lm_params, run.protocol,
            tuple(sorted(variant(run).items())))


def _cells(runs: Sequence[RunRecord], metrics: Iterable[str], baseline: dict[str, Cell] | None = None,
           is_baseline: bool = False) -> dict[str, Cell]:
    cells = {}
    for metric in metrics:
        have = [r for r in runs if metric in r.metrics]
        base = (baseline or {}).get(metric)
        if have:
            cells[metric] = Cell(tuple(r.run_id for r in have), tuple(r.metrics[metric] for r in have),
                                 baseline=None if base is None else base.mean, is_baseline=is_baseline)
    return cells


def group_runs(runs: Sequence[RunRecord], grouped: bool) -> list[tuple[RunRecord, ...]]:
    """Runs as rows: one per run, or (grouped) one per signature, in order of their oldest run."""
    if not grouped:
        return [(r,) for r in runs]
    groups: dict[tuple, list[RunRecord]] = {}
    for run in sorted(runs, key=lambda r: r.run_id):
        groups.setdefault(group_signature(run), []).append(run)
    return [tuple(g) for g in groups.values()]


def varying_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Config keys with at least two different values among the runs, sorted.

    A key that is absent (or None) in some runs only does not count as varying: the text encoder's
    max_tokens of text runs against "-" for ID runs says nothing the item tower column does not.
    """
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.config.items():
            if value is not None:
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k in _leaf_keys(runs) if len(values.get(k, ())) > 1)


def _leaf_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Dotted config keys of the runs, without sections (an ID run's ``text_encoder: null``)."""
    keys = {k for r in runs for k in r.config}
    return sorted(k for k in keys if not any(other.startswith(k + ".") for other in keys))


def baseline_ids(runs: Sequence[RunRecord], marked: Iterable[int], grouped: bool) -> tuple[int, ...]:
    """The runs the marked ones stand for: grouped, every run of a group that holds a marked run.

    So a baseline group keeps up as more of its seeds finish, and a mark survives the `/` filter.
    """
    marked = set(marked)
    if not marked:
        return ()
    chosen = [run for group in group_runs(runs, grouped) if any(r.run_id in marked for r in group) for run in group]
    return tuple(sorted(r.run_id for r in chosen))


def row_value(row: Row, column_id: str) -> Any:
    """A row's value of a column, for sorting and csv: metrics as the mean (fraction), config as grouped."""
    first = row.runs[0]
    if column_id in row.metrics:
        return row.metrics[column_id].mean
    if column_id.startswith(METRIC_PREFIX):
        return None
    if column_id == "run_id":
        return first.run_id
    if column_id == "n":
        return row.n
    if column_id == "name":
        return _common_name([r.name for r in row.runs])
    if column_id == "status":
        return ",".join(sorted({r.status for r in row.runs}))
    if column_id == "tags":
        return " ".join(dict.fromkeys(t for r in row.runs for t in r.tags))
    if column_id in ("dataset", "architecture", "item_tower", "encoder", "lm_params"):
        return getattr(first, column_id)
    values = {json.dumps(r.config.get(column_id), sort_keys=True) for r in row.runs}
    if len(values) > 1:  # the seed of a group, say: no single value
        return None
    return first.config.get(column_id)


def _common_name(names: Sequence[str]) -> str:
    if len(set(names)) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names)).rstrip("-_ ")
    return prefix + "*" if prefix else names[0] + ", ..."


def sort_rows(rows: Sequence[Row], sort: tuple[str, bool] | None) -> list[Row]:
    """Rows by a column (numbers numerically, names naturally), ties by run id; missing values last either way."""
    rows = sorted(rows, key=lambda r: r.runs[0].run_id)
    if sort is None:
        return rows
    column_id, descending = sort
    present = [r for r in rows if row_value(r, column_id) is not None]
    missing = [r for r in rows if row_value(r, column_id) is None]
    present.sort(key=lambda r: sort_key(row_value(r, column_id)), reverse=descending)  # stable: ties keep id order
    return present + missing


def default_descending(column: Column) -> bool:
    """Metrics sort best first; everything else ascending."""
    return column.kind == "metric"


def next_sort(sort: tuple[str, bool] | None, column: Column) -> tuple[str, bool] | None:
    """The sort after choosing ``column`` again: its default direction, then reversed, then off."""
    first = default_descending(column)
    if sort is None or sort[0] != column.id:
        return (column.id, first)
    if sort[1] == first:
        return (column.id, not first)
    return None


def _columns(state: ViewState, shown: Sequence[RunRecord], metrics: Sequence[str]) -> list[Column]:
    """The metrics right after the name (visible on a 120-column terminal without scrolling), then what
    describes the runs, then the config keys that vary (every key with ``show_all_config``)."""
    config_keys = _leaf_keys(shown) if state.show_all_config else varying_keys(shown)
    config_keys = [k for k in config_keys if k not in SHOWN_AS_COLUMNS and not (state.grouped and k == SEED)]
    lead = ["run_id", "name", *(["status"] if state.show_all_runs else [])]
    describe = [*(["n"] if state.grouped else []), "dataset", "architecture", "item_tower", "encoder", "lm_params",
                "tags"]
    return ([Column(c, RUN_COLUMN_LABELS[c], "run") for c in lead]
            + [Column(m, metric_label(m), "metric") for m in metrics]
            + [Column(c, RUN_COLUMN_LABELS[c], "run") for c in describe]
            + [Column(k, k, "config") for k in config_keys])


def build_view(runs: Sequence[RunRecord], state: ViewState) -> View:
    """Filter, group, compare with the baseline and sort: the table exactly as shown and exported."""
    pool = [r for r in runs if state.show_all_runs or r.status == "finished"]
    base_ids = baseline_ids(pool, state.baseline, state.grouped)
    query = parse_query(state.query)
    shown = [r for r in pool if matches(r, query)]
    metrics = sorted({m for r in shown for m in r.metrics if m.startswith(METRIC_PREFIX)}, key=metric_key)
    base_set = set(base_ids)
    baseline = _cells([r for r in pool if r.run_id in base_set], metrics) if base_set else {}
    rows = []
    for group in group_runs(shown, state.grouped):
        is_base = bool(base_set) and any(r.run_id in base_set for r in group)
        rows.append(Row(str(group[0].run_id), group, _cells(group, metrics, baseline, is_base), is_baseline=is_base))
    columns = _columns(state, shown, metrics)
    sort = state.sort if state.sort and any(c.id == state.sort[0] for c in columns) else None
    return View(state=state, columns=tuple(columns), rows=tuple(sort_rows(rows, sort)), baseline_ids=base_ids,
                pool=len(pool), baseline_runs=tuple(r for r in pool if r.run_id in base_set))


# -- cell text and exports ---------------------------------------------------------------------

def cell_text(view: View, row: Row, column: Column, latex: bool = False) -> str:
    """What a cell shows (LaTeX-escaped with ``latex``): the one source for the screen, md and LaTeX.

    A metric's ``[n=k]`` appears when fewer of the row's runs have it than its n column says.
    """
    if column.kind == "metric":
        return metric_text(row.metrics.get(column.id), (row.n,), latex)
    if column.id == "run_id":
        text = ",".join(map(str, row.run_ids))
    elif column.id == "name":
        text = row_value(row, "name") + (" (baseline)" if row.is_baseline else "")
    elif column.id in ("tags", "status"):
        text = row_value(row, column.id)
    elif column.id == "n":
        text = str(row.n)
    elif column.id == "lm_params":
        text = display("lm_params", row.runs[0].lm_params)
    else:  # other run columns, and config keys (one value per row: a group shares all but the seed)
        text = display(column.id, row_value(row, column.id))
    return latex_escape(text) if latex else text


def note(view: View) -> str:
    """How to read the numbers: which metrics, what ± is, what the deltas are against."""
    text = "test metrics at the best validation epoch ×100"
    if view.state.grouped:
        text += "; mean ± sample std over runs that differ only by seed (n runs)"
    if view.baseline_ids:
        text += f"; (+d): difference from the baseline (run {','.join(map(str, view.baseline_ids))})"
    return text


def _csv(view: View) -> tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]:
    """One line per row with the view's columns; metrics as fractions plus _std/_n (grouped) and _delta."""
    grouped, has_base = view.state.grouped, bool(view.baseline_ids)
    header: list[str] = []
    for c in view.columns:
        if c.kind == "metric":
            header += [c.id, *([f"{c.id}_std", f"{c.id}_n"] if grouped else []),
                       *([f"{c.id}_delta"] if has_base else [])]
        else:
            header.append("run_ids" if c.id == "run_id" and grouped else c.id)
    lines = []
    for row in view.rows:
        line: list[Any] = []
        for c in view.columns:
            cell = row.metrics.get(c.id)
            if c.kind == "metric":
                line += [cell and cell.mean, *([cell and cell.std, cell.n if cell else 0] if grouped else []),
                         *([cell and cell.delta] if has_base else [])]
            else:
                line.append(" ".join(map(str, row.run_ids)) if c.id == "run_id" else row_value(row, c.id))
        lines.append(tuple(line + ([row.is_baseline] if has_base else [])))
    return (*header, *(["baseline"] if has_base else [])), tuple(lines)


def view_table(view: View) -> Table:
    """The view as a Table: md and LaTeX are exactly the cells on screen; csv adds std, n and deltas."""
    grid = Grid(columns=tuple(GridColumn((c.label,), numeric=c.numeric) for c in view.columns),
                rows=tuple(tuple(Shown(cell_text(view, r, c), cell_text(view, r, c, latex=True))
                                 for c in view.columns) for r in view.rows),
                note=note(view))
    return Table(grid, *_csv(view))


def export(view: View, fmt: str) -> str:
    """The view as csv, md or latex text."""
    if fmt not in VIEW_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(VIEW_FORMATS)}, not {fmt!r}")
    return render(view_table(view), fmt)


# -- config diff -------------------------------------------------------------------------------

ABSENT = "(absent)"


@dataclass(frozen=True)
class DiffLine:
    key: str
    left: str
    right: str

    @property
    def differs(self) -> bool:
        return self.left != self.right


def _diff_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def config_diff(left: dict[str, Any], right: dict[str, Any]) -> list[DiffLine]:
    """Every dotted key of either stored config with both values as text (full paths, no ID-tower masking);
    ``differs`` picks the interesting ones."""
    a, b = flatten(left), flatten(right)
    return [DiffLine(k, _diff_text(a[k]) if k in a else ABSENT, _diff_text(b[k]) if k in b else ABSENT)
            for k in sorted(set(a) | set(b))]


# -- the scaling plot of the shown runs --------------------------------------------------------

def plot_metric(view: View, preferred: Sequence[str | None] = ()) -> str | None:
    """The metric to plot: the first preferred one that the view has, else test_ndcg@10, else the first."""
    metrics = view.metric_ids
    for m in (*preferred, DEFAULT_METRIC):
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def plot_panels(view: View, metric: str) -> list[Panel]:
    """tcf.report.plot's panels (per dataset, a line per frozen/top-N series) of the shown runs; the baseline is
    the one marked with ``b`` when there is one, else the ID runs of each architecture, one line per model."""
    marked = [r for r in view.baseline_runs if r.status == "finished"] if view.baseline_ids else None
    return scaling_panels([r for row in view.rows for r in row.runs if r.status == "finished"], metric,
                          baseline=marked)
