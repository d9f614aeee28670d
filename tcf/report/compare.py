"""Comparison tables of runs, without any UI: what the `tcf-tui` Results screen shows and exports.

A comparison is one row per run (or per group of runs that differ only by seed) with the test
metrics of the best validation epoch, which are the `results` view's ``test_*`` columns. The last
epoch's validation rows (``metrics.split = 'epoch'``) are never read: a table that showed them would
rank runs by where early stopping happened to end, not by their selected checkpoint.

Everything here is pure (runs in, a :class:`View` out), so the screen, its exports and the tests
agree on one layout::

    runs = load_runs(Store("experiments.db"))
    view = build_view(runs, ViewState(grouped=True, sort=("test_ndcg@10", True), query="dataset:mind"))
    write_output(Path("table.tex"), export(view, "latex"))

Human text (the screen, md, latex) shows metrics x100 with 2 decimals; csv keeps fractions at full
precision, as ``tcf results`` does.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text

from tcf.report.pivot import DEFAULT_VALUE, MISSING, Cell, _flatten, display, field_value, human_count, sort_key
from tcf.report.plot import Panel, scaling_panels
from tcf.report.results import latex_escape

EXPORT_FORMATS = ("csv", "md", "latex")
EXTENSIONS = {"csv": ".csv", "md": ".md", "latex": ".tex"}
METRIC_PREFIX = "test_"
SEED = "seed"
# Config keys that a run column already shows (as the dataset's folder name, the encoder's base name).
SHOWN_AS_COLUMNS = frozenset({"name", "dataset.path", "model.architecture", "model.item_tower", "text_encoder.model"})
# Fields that `/` matches with ``field:pattern``; free words match name, dataset, tags and encoder.
QUERY_FIELDS = ("dataset", "tag", "arch", "tower", "encoder", "status")
NUMERIC_COLUMNS = frozenset({"run_id", "lm_params", "n"})
RUN_COLUMN_LABELS = {
    "run_id": "id", "name": "name", "status": "status", "dataset": "dataset", "architecture": "arch",
    "item_tower": "tower", "encoder": "encoder", "lm_params": "lm_params", "tags": "tags", "n": "n",
}


# -- runs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRecord:
    """One run as the comparison needs it; ``config`` maps every dotted key to its grouping value."""

    run_id: int
    name: str
    status: str
    dataset: str | None
    architecture: str | None
    item_tower: str | None
    lm_params: int | None
    encoder: str | None  # base name of text_encoder.model; None for ID towers
    tags: tuple[str, ...]
    config: dict[str, Any]  # dotted key -> pivot.field_value (paths as base names, lists as JSON)
    metrics: dict[str, float]  # test_* metrics (fractions) the run has
    raw_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # results row + config


def record(row: dict[str, Any], tags: Iterable[str] = ()) -> RunRecord:
    """A RunRecord from a `results` view row that also carries ``config`` (parsed) or ``config_json``."""
    row = dict(row)
    if "config" not in row:
        row["config"] = json.loads(row.pop("config_json", None) or "{}")
    config = row["config"] or {}
    return RunRecord(
        run_id=int(row["run_id"]), name=str(row.get("name") or ""), status=str(row.get("status") or ""),
        dataset=row.get("dataset"), architecture=row.get("architecture"), item_tower=row.get("item_tower"),
        lm_params=row.get("lm_params"), encoder=field_value(row, "text_encoder.model"), tags=tuple(tags),
        config={key: field_value(row, key) for key in _flatten(config)},
        metrics={k: float(v) for k, v in row.items() if k.startswith(METRIC_PREFIX) and v is not None},
        raw_config=config, source=row,
    )


def load_runs(store: Any) -> list[RunRecord]:
    """Every run of the store (any status), oldest first, with its job's tags; one read transaction."""
    from tcf.jobs.queue import run_tags

    conn = store.db.conn
    conn.execute("BEGIN")  # one read snapshot (WAL): runs and tags agree even while workers write
    try:
        rows = list(store.db.query(
            "SELECT res.*, runs.config_json AS config_json FROM results AS res "
            "JOIN runs ON runs.id = res.run_id ORDER BY res.run_id"))
        tags = run_tags(store)
    finally:
        conn.rollback()
    return [record(row, tags.get(int(row["run_id"]), ())) for row in rows]


# -- the `/` query -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """Free words (each must occur somewhere) and field patterns (any pattern of a field may match)."""

    words: tuple[str, ...] = ()
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()


def parse_query(text: str) -> Query:
    """``opt dataset:mind tag:scaling`` -> words ("opt",) and fields; an unknown ``x:y`` is a free word."""
    words: list[str] = []
    fields: dict[str, list[str]] = {}
    for token in text.lower().split():
        name, colon, pattern = token.partition(":")
        if colon and name in QUERY_FIELDS and pattern:
            fields.setdefault(name, []).append(pattern)
        else:
            words.append(token)
    return Query(tuple(words), tuple((k, tuple(v)) for k, v in fields.items()))


def _like(value: str, pattern: str) -> bool:
    """Glob when the pattern has wildcards, else case-insensitive equality (dataset:mind is not mind_small)."""
    value = value.lower()
    return fnmatch.fnmatchcase(value, pattern) if any(c in pattern for c in "*?[") else value == pattern


def matches(run: RunRecord, query: Query) -> bool:
    """Whether a run passes the query: every free word and every field."""
    haystack = " ".join([run.name, run.dataset or "", run.encoder or "", *run.tags]).lower()
    if any(word not in haystack for word in query.words):
        return False
    values: dict[str, list[str]] = {
        "dataset": [run.dataset or ""], "tag": list(run.tags), "arch": [run.architecture or ""],
        "tower": [run.item_tower or ""], "encoder": [run.encoder or ""], "status": [run.status],
    }
    return all(any(_like(v, p) for v in values[name] for p in patterns) for name, patterns in query.fields)


# -- rows, groups and the view -----------------------------------------------------------------

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
    """A run, or runs that differ only by seed; ``metrics`` holds a pivot Cell (mean ± std) per metric."""

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
    """The rows and columns on screen, in order, and the baseline they are compared with."""

    state: ViewState
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    baseline: dict[str, Cell] = field(default_factory=dict)  # metric -> the baseline runs' values
    baseline_ids: tuple[int, ...] = ()
    pool: int = 0  # runs before the `/` query (after the finished/all toggle)

    def column(self, column_id: str) -> Column | None:
        return next((c for c in self.columns if c.id == column_id), None)

    @property
    def metric_ids(self) -> list[str]:
        return [c.id for c in self.columns if c.kind == "metric"]


def metric_label(metric: str) -> str:
    """``test_ndcg@10`` -> ``NDCG@10`` (every metric column is a test metric)."""
    return metric.removeprefix(METRIC_PREFIX).upper()


def _metric_order(metric: str) -> tuple[str, int]:
    base, _, k = metric.removeprefix(METRIC_PREFIX).partition("@")
    return base, int(k) if k.isdigit() else -1


def group_signature(run: RunRecord) -> tuple:
    """What must agree for runs to share a group: everything but the seed (and the name, which is free text).

    Absent and None are the same (an ID run with or without a stale text_encoder section).
    """
    config = tuple(sorted((k, json.dumps(v)) for k, v in run.config.items()
                          if k not in (SEED, "name") and v is not None))
    return (run.dataset, run.architecture, run.item_tower, run.lm_params, config)


def _cells(runs: Sequence[RunRecord], metrics: Iterable[str]) -> dict[str, Cell]:
    cells = {}
    for metric in metrics:
        have = [r for r in runs if metric in r.metrics]
        if have:
            cells[metric] = Cell(tuple(r.run_id for r in have), tuple(r.metrics[metric] for r in have))
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


def build_view(runs: Sequence[RunRecord], state: ViewState) -> View:
    """Filter, group, compare with the baseline and sort: the table exactly as shown and exported."""
    pool = [r for r in runs if state.show_all_runs or r.status == "finished"]
    base_ids = baseline_ids(pool, state.baseline, state.grouped)
    query = parse_query(state.query)
    shown = [r for r in pool if matches(r, query)]
    metrics = sorted({m for r in shown for m in r.metrics}, key=_metric_order)
    base_set = set(base_ids)
    rows = [Row(str(group[0].run_id), group, _cells(group, metrics),
                is_baseline=bool(base_set) and any(r.run_id in base_set for r in group))
            for group in group_runs(shown, state.grouped)]
    baseline = _cells([r for r in pool if r.run_id in base_set], metrics) if base_set else {}

    config_keys = _leaf_keys(shown) if state.show_all_config else varying_keys(shown)
    config_keys = [k for k in config_keys if k not in SHOWN_AS_COLUMNS and not (state.grouped and k == SEED)]
    # the metrics right after the name: on a 120-column terminal they must be visible without scrolling
    lead = ["run_id", "name", *(["status"] if state.show_all_runs else [])]
    describe = [*(["n"] if state.grouped else []), "dataset", "architecture", "item_tower", "encoder", "lm_params",
                "tags"]
    columns = ([Column(c, RUN_COLUMN_LABELS[c], "run") for c in lead]
               + [Column(m, metric_label(m), "metric") for m in metrics]
               + [Column(c, RUN_COLUMN_LABELS[c], "run") for c in describe]
               + [Column(k, k, "config") for k in config_keys])
    sort = state.sort if state.sort and any(c.id == state.sort[0] for c in columns) else None
    return View(state=state, columns=tuple(columns), rows=tuple(sort_rows(rows, sort)), baseline=baseline,
                baseline_ids=base_ids, pool=len(pool))


# -- cell text ---------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x * 100:.2f}"


def delta(view: View, row: Row, metric: str) -> float | None:
    """Row mean minus baseline mean (fractions); None for a baseline row or without a baseline."""
    cell, base = row.metrics.get(metric), view.baseline.get(metric)
    if cell is None or base is None or row.is_baseline:
        return None
    return cell.mean - base.mean


def metric_text(view: View, row: Row, metric: str, latex: bool = False) -> str:
    """``11.70``, ``11.70 ± 0.21`` (several runs), `` [n=2]`` when fewer runs than the row have it, ``(+0.53)``."""
    cell = row.metrics.get(metric)
    if cell is None:
        return "--" if latex else MISSING
    text = _pct(cell.mean)
    if cell.std is not None:
        text += (r" $\pm$ " if latex else " ± ") + _pct(cell.std)
    if cell.n != row.n:
        text += f" [n={cell.n}]"
    d = delta(view, row, metric)
    if d is not None:
        shown = f"{d * 100:+.2f}"
        if latex and shown.startswith("-"):
            shown = "$-$" + shown[1:]
        text += f" ({shown})"
    return text


def cell_text(view: View, row: Row, column: Column, latex: bool = False) -> str:
    """What a cell shows (LaTeX-escaped with ``latex``): the one source for the screen, md and LaTeX."""
    if column.kind == "metric":
        return metric_text(view, row, column.id, latex)
    if column.id == "run_id":
        text = ",".join(map(str, row.run_ids))
    elif column.id == "name":
        text = row_value(row, "name") + (" (baseline)" if row.is_baseline else "")
    elif column.id == "tags":
        text = row_value(row, "tags")
    elif column.id == "status":
        text = row_value(row, "status")
    elif column.id == "n":
        text = str(row.n)
    elif column.id == "lm_params":
        text = display("lm_params", row.runs[0].lm_params)
    else:  # other run columns, and config keys (one value per row: a group shares all but the seed)
        text = display(column.id, row_value(row, column.id))
    return latex_escape(text) if latex else text


def note(view: View, ascii_only: bool = False) -> str:
    """How to read the numbers: which metrics, what ± is, what the deltas are against."""
    pm, times = ("+/-", "x") if ascii_only else ("±", "×")
    text = f"test metrics at the best validation epoch {times}100"
    if view.state.grouped:
        text += f"; mean {pm} sample std over runs that differ only by seed (n runs)"
    if view.baseline_ids:
        text += f"; (+d): difference from the baseline (run {','.join(map(str, view.baseline_ids))})"
    return text


# -- exports -----------------------------------------------------------------------------------

def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def export_csv(view: View) -> str:
    """One line per row with the view's columns; metrics as fractions plus _std/_n (grouped) and _delta."""
    grouped, has_base = view.state.grouped, bool(view.baseline_ids)
    header: list[str] = []
    for c in view.columns:
        if c.kind == "metric":
            header += [c.id, *([f"{c.id}_std", f"{c.id}_n"] if grouped else []),
                       *([f"{c.id}_delta"] if has_base else [])]
        else:
            header.append("run_ids" if c.id == "run_id" and grouped else c.id)
    if has_base:
        header.append("baseline")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in view.rows:
        line: list[str] = []
        for c in view.columns:
            if c.kind == "metric":
                cell = row.metrics.get(c.id)
                line.append(_csv_value(cell.mean if cell else None))
                if grouped:
                    line += [_csv_value(cell.std if cell else None), str(cell.n) if cell else "0"]
                if has_base:
                    line.append(_csv_value(delta(view, row, c.id)))
            elif c.id == "run_id":
                line.append(" ".join(map(str, row.run_ids)))
            else:
                line.append(_csv_value(row_value(row, c.id)))
        if has_base:
            line.append("true" if row.is_baseline else "false")
        writer.writerow(line)
    return buffer.getvalue()


def export_markdown(view: View) -> str:
    """A GitHub table of exactly the cells on screen, then the note."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line([c.label for c in view.columns]),
           "|" + "|".join("---:" if c.numeric else "---" for c in view.columns) + "|"]
    out += [line([cell_text(view, row, c) for c in view.columns]) for row in view.rows]
    return "\n".join(out) + f"\n\n{note(view)}\n"


def _latex_cell(text: str) -> str:
    # A line that starts with [ or * would be read as an argument of the previous row's \\.
    return "{}" + text if text[:1] in ("[", "*") else text


def export_latex(view: View) -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs}``); ± as $\\pm$, specials escaped, note as a comment."""
    spec = "".join("r" if c.numeric else "l" for c in view.columns)
    out = [f"% {note(view, ascii_only=True)}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(_latex_cell(latex_escape(c.label)) for c in view.columns) + r" \\", r"\midrule"]
    out += [" & ".join(_latex_cell(cell_text(view, row, c, latex=True)) for c in view.columns) + r" \\"
            for row in view.rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


EXPORTERS: dict[str, Callable[[View], str]] = {"csv": export_csv, "md": export_markdown, "latex": export_latex}


def export(view: View, fmt: str) -> str:
    """The view as csv, md or latex text."""
    if fmt not in EXPORTERS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    return EXPORTERS[fmt](view)


def format_for_path(path: str, default: str = "latex") -> str:
    """The export format a file name asks for (.csv, .md, .tex), else ``default``."""
    suffix = os.path.splitext(path)[1].lower()
    return next((fmt for fmt, ext in EXTENSIONS.items() if ext == suffix), default)


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


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Stored config -> {dotted key: value}, values as stored (full paths, no ID-tower masking)."""
    out = {}
    for key in _flatten(config):
        node: Any = config
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def _diff_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def config_diff(left: dict[str, Any], right: dict[str, Any]) -> list[DiffLine]:
    """Every dotted key of either config with both values as text; ``differs`` picks the interesting ones."""
    a, b = flat_config(left), flat_config(right)
    return [DiffLine(k, _diff_text(a[k]) if k in a else ABSENT, _diff_text(b[k]) if k in b else ABSENT)
            for k in sorted(set(a) | set(b))]


# -- the scaling plot in a terminal ------------------------------------------------------------

def plot_metric(view: View, preferred: Sequence[str | None] = ()) -> str | None:
    """The metric to plot: the first preferred one that the view has, else test_ndcg@10, else the first."""
    metrics = view.metric_ids
    for m in (*preferred, DEFAULT_VALUE):
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def plot_panels(view: View, metric: str) -> list[Panel]:
    """tcf.report.plot's panels (per dataset, a line per frozen/top-N series, ID baselines) of the shown runs."""
    runs = [r.source for row in view.rows for r in row.runs if r.status == "finished"]
    return scaling_panels(runs, metric)


SERIES_COLOURS = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_white")
BASELINE_COLOUR = "grey62"
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dot row][dot column]


class BrailleCanvas:
    """Characters of 2x4 braille dots, each with the colour of the last thing drawn in it."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.bits = [[0] * width for _ in range(height)]
        self.colour: list[list[str | None]] = [[None] * width for _ in range(height)]

    def dot(self, x: int, y: int, colour: str) -> None:
        if 0 <= x < 2 * self.width and 0 <= y < 4 * self.height:
            self.bits[y // 4][x // 2] |= _BRAILLE_BITS[y % 4][x % 2]
            self.colour[y // 4][x // 2] = colour

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: str) -> None:
        """Bresenham between two dots."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, colour)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def marker(self, x: int, y: int, colour: str) -> None:
        """A full character (all 8 dots) around a data point."""
        cx, cy = x // 2, y // 4
        if 0 <= cx < self.width and 0 <= cy < self.height:
            self.bits[cy][cx] = 0xFF
            self.colour[cy][cx] = colour

    def row(self, y: int) -> Text:
        text = Text()
        for bits, colour in zip(self.bits[y], self.colour[y], strict=True):
            text.append(chr(0x2800 + bits) if bits else " ", style=colour or "")
        return text


def render_panel(panel: Panel, metric: str, width: int = 72, height: int = 14) -> Text:
    """One panel as braille: metric x100 against lm_params (log x), series lines with std bars, dashed baselines.

    Drawn by hand (no plotting dependency): a few dozen lines cover log ticks, bars and a legend.
    """
    label_w = 7
    plot_w = max(10, width - label_w - 1)
    canvas = BrailleCanvas(plot_w, height)
    xs = sorted({p.x for s in panel.series for p in s.points})
    ys = [100 * v for s in panel.series for p in s.points for v in (p.mean - p.std, p.mean + p.std)]
    ys += [100 * b.mean for b in panel.baselines]
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.08 or 0.5
    y_lo, y_hi = y_lo - pad, y_hi + pad
    pad_x = 1.5 if len(xs) > 1 else 3.0
    x_lo, x_hi = math.log10(xs[0] / pad_x), math.log10(xs[-1] * pad_x)
    dots_w, dots_h = 2 * plot_w - 1, 4 * height - 1

    def px(x: float) -> int:
        return round((math.log10(x) - x_lo) / (x_hi - x_lo) * dots_w)

    def py(y: float) -> int:
        return round((y_hi - 100 * y) / (y_hi - y_lo) * dots_h)

    for i, base in enumerate(panel.baselines):
        colour = BASELINE_COLOUR if i == 0 else "grey42"
        for x in range(0, dots_w + 1):
            if (x // 3) % 2 == 0:
                canvas.dot(x, py(base.mean), colour)
    colours = {s.label: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, s in enumerate(panel.series)}
    for series in panel.series:
        colour = colours[series.label]
        points = [(px(p.x), py(p.mean)) for p in series.points]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            canvas.line(x0, y0, x1, y1, colour)
        for p in series.points:
            if p.std:
                canvas.line(px(p.x), py(p.mean - p.std), px(p.x), py(p.mean + p.std), colour)
        for x, y in points:
            canvas.marker(x, y, colour)

    out = Text()
    out.append(f"{panel.dataset}: {metric_label(metric)} ×100 vs text encoder parameters (log scale)\n", style="bold")
    mid = (height - 1) // 2
    label_rows = {0: y_hi, height - 1: y_lo, mid: y_hi - (y_hi - y_lo) * mid / (height - 1)}
    for y in range(height):
        label = f"{label_rows[y]:.2f}" if y in label_rows else ""
        out.append(f"{label:>{label_w}}" + ("┤" if y in label_rows else "│"), style="dim")
        out.append_text(canvas.row(y))
        out.append("\n")
    axis = ["─"] * plot_w
    ticks = [" "] * (plot_w + 8)
    for x in xs:
        col = px(x) // 2
        axis[col] = "┬"
        tick = human_count(x)
        start = max(0, min(col - len(tick) // 2, len(ticks) - len(tick)))
        if all(c == " " for c in ticks[max(0, start - 1):start + len(tick) + 1]):
            ticks[start:start + len(tick)] = tick
    out.append(" " * label_w + "└" + "".join(axis) + "\n", style="dim")
    out.append(" " * (label_w + 1) + "".join(ticks).rstrip() + "\n", style="dim")
    for series in panel.series:
        values = "  ".join(f"{human_count(p.x)} {_pct(p.mean)}" + (f" ± {_pct(p.std)}" if p.n > 1 else "")
                           for p in series.points)
        out.append("  ⣿─ ", style=colours[series.label])
        out.append(f"{series.label}: {values}\n")
    for i, base in enumerate(panel.baselines):
        out.append("  ╌╌ ", style=BASELINE_COLOUR if i == 0 else "grey42")
        spread = f" ± {_pct(base.std)} (n={base.n})" if base.n > 1 else ""
        out.append(f"{base.label}: {_pct(base.mean)}{spread}\n")
    return out


def render_plot(view: View, metric: str, width: int = 72, height: int = 14) -> Text:
    """Every panel of the view's runs, one under the other; a sentence when there is nothing to plot."""
    panels = plot_panels(view, metric)
    if not panels:
        return Text(f"Nothing to plot: no finished text-tower run with lm_params and {metric} in this view "
                    "(the x axis is the text encoder's parameter count).")
    out = Text()
    for i, panel in enumerate(panels):
        if i:
            out.append("\n")
        out.append_text(render_panel(panel, metric, width, height))
    return out
