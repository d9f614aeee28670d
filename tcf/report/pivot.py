"""Pivot tables for papers: finished runs grouped by any fields, seeds folded into mean ± std.

A paper's results table is a pivot of runs: rows are model variants (item tower, language model,
fine-tuned blocks), columns are datasets, and runs that differ only by seed share a cell. A field
is a column of the `results` view (``dataset``, ``item_tower``, ``lm_params``, ...) or a dotted key
of the run's stored config (``text_encoder.model``, ``seed``, ``train.lr``, ...); paths (keys ending
in ``.model`` or ``.path``) group and print as their base name.

Usage::

    store = Store("experiments.db")
    pivot = pivot_from_store(store, "item_tower,text_encoder.model:dataset",
                             value="test_ndcg@10", baseline="item_tower=id")
    print(format_pivot(pivot, "latex"))

Human formats (table, md, latex) show metrics x100 with 2 decimals; csv (one line per cell, with
mean, std, n, baseline and delta columns) and json keep fractions at full precision.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from rich.table import Table
from rich.text import Text

from tcf.errors import TcfError
from tcf.report.results import FORMATS, is_metric_column, latex_escape

DEFAULT_VALUE = "test_ndcg@10"
MISSING = "-"  # how a run without the field (an ID run's text_encoder.model) prints
_FIELD_HINT = ("a results column (dataset, item_tower, architecture, name, lm_params, ...) "
               "or a dotted config key (text_encoder.model, text_encoder.unfreeze, seed, train.lr, ...)")

Key = tuple[Any, ...]


# -- runs and their fields ---------------------------------------------------------------------

def finished_runs(store: Any, dataset: str | None = None, name_glob: str | None = None) -> list[dict]:
    """Finished runs as `results` view rows plus their parsed ``config``, in one query, oldest first."""
    rows = store.db.query(
        "SELECT res.*, runs.config_json AS config_json FROM results AS res "
        "JOIN runs ON runs.id = res.run_id WHERE res.status = 'finished' "
        "AND (:dataset IS NULL OR res.dataset = :dataset) AND (:glob IS NULL OR res.name GLOB :glob) "
        "ORDER BY res.run_id",
        {"dataset": dataset, "glob": name_glob},
    )
    runs = []
    for row in rows:
        row["config"] = json.loads(row.pop("config_json") or "{}")
        runs.append(row)
    return runs


def view_columns(store: Any) -> list[str]:
    """Column names of the `results` view (known even when no run matches the filters)."""
    return [row[1] for row in store.db.execute("PRAGMA table_info(results)").fetchall()]


def _flatten(config: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(config, dict):
        for key, value in config.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1]


def _schema_keys(model: Any, prefix: str = "") -> Iterable[str]:
    from typing import get_args

    for name, info in model.model_fields.items():
        section = next((a for a in (info.annotation, *get_args(info.annotation)) if hasattr(a, "model_fields")),
                       None)
        if section is not None:
            yield f"{prefix}{name}"  # the whole section, e.g. text_encoder (null for ID runs)
            yield from _schema_keys(section, f"{prefix}{name}.")
        else:
            yield prefix + name


def known_fields(columns: Iterable[str], runs: Iterable[dict]) -> set[str]:
    """Every usable field: view columns, the config schema's dotted keys, and keys stored configs have."""
    from tcf.config import Config

    fields = set(columns) | set(_schema_keys(Config))
    for run in runs:
        fields.update(_flatten(run.get("config") or {}))
    return fields


def check_fields(fields: Sequence[str], known: set[str], option: str) -> None:
    """Raise a TcfError naming ``option`` for the first field that is neither a column nor a config key."""
    for name in fields:
        if name not in known:
            raise TcfError(f"{option}: unknown field {name!r}; use {_FIELD_HINT}")


def raw_value(run: dict, name: str) -> Any:
    """A run's value of a field: the view column if there is one, else the dotted config key (None if absent).

    An ID item tower never uses the text encoder, so its text_encoder.* keys (present when a config
    sets the section for all its runs) count as absent: an ID row prints "-", not a model it never ran.
    """
    if name in run and name != "config":
        return run[name]
    if name.split(".")[0] == "text_encoder" and run.get("item_tower") == "id":
        return None
    node: Any = run.get("config") or {}
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def normalize(name: str, value: Any) -> Any:
    """The grouping value: paths become base names, lists and sections compact JSON, the rest as is."""
    if value is None:
        return None
    if isinstance(value, str) and (name.endswith(".model") or name.endswith(".path")):
        return PurePath(value.rstrip("/")).name or value
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def field_value(run: dict, name: str) -> Any:
    """normalize(raw_value(...)): what a run contributes to a row, column or series key."""
    return normalize(name, raw_value(run, name))


def human_count(n: float) -> str:
    """Parameter counts as papers write them: 125M, 1.3B, 6.7B, 13B."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            scaled = n / size
            text = f"{scaled:.1f}" if round(scaled, 1) < 10 else f"{scaled:.0f}"
            return text.removesuffix(".0") + unit
    return f"{n:g}"


def display(name: str, value: Any) -> str:
    """How a (normalized) field value prints in a table header or legend."""
    if value is None:
        return MISSING
    if name == "lm_params" and isinstance(value, (int, float)):
        return human_count(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_SIZED_NUMBER = re.compile(r"(\d+(?:\.\d+)?)([kmbt](?![a-z]))?", re.IGNORECASE)
_UNIT = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _natural(text: str) -> tuple:
    """Sort key that orders opt-125m < opt-350m < opt-1.3b < opt-13b (numbers with size suffixes)."""
    parts: list[tuple[int, Any]] = []
    pos = 0
    for m in _SIZED_NUMBER.finditer(text):
        parts.append((0, text[pos:m.start()].lower()))
        parts.append((1, float(m.group(1)) * _UNIT.get((m.group(2) or "").lower(), 1.0)))
        pos = m.end()
    parts.append((0, text[pos:].lower()))
    return (*parts, (0, text))


def sort_key(value: Any) -> tuple:
    """Numbers numerically, strings naturally, missing values last."""
    if value is None:
        return (2,)
    if isinstance(value, (int, float)):
        return (0, float(value))
    return (1, _natural(str(value)))


# -- selectors ---------------------------------------------------------------------------------

def parse_fields(text: str, option: str) -> list[str]:
    """``a,b.c`` -> ["a", "b.c"]; empty items and repeats are errors naming ``option``."""
    fields = [f.strip() for f in text.split(",")]
    if any(not f for f in fields):
        raise TcfError(f"{option}: empty field in {text!r}; give comma-separated fields, e.g. item_tower,dataset")
    if len(set(fields)) != len(fields):
        raise TcfError(f"{option}: a field repeats in {text!r}")
    return fields


def parse_pivot_spec(spec: str) -> tuple[list[str], list[str]]:
    """``ROWS:COLS`` -> (row fields, column fields); COLS may be empty (one column)."""
    if spec.count(":") != 1 or not spec.split(":")[0].strip():
        raise TcfError(f"--pivot must be ROWS:COLS (comma-separated fields), e.g. "
                       f"item_tower,text_encoder.model:dataset; got {spec!r}")
    rows_text, cols_text = spec.split(":")
    rows = parse_fields(rows_text, "--pivot")
    cols = parse_fields(cols_text, "--pivot") if cols_text.strip() else []
    both = sorted(set(rows) & set(cols))
    if both:
        raise TcfError(f"--pivot: {both[0]!r} is both a row and a column field in {spec!r}")
    return rows, cols


def parse_selector(text: str, option: str = "--baseline") -> dict[str, str]:
    """``key=value[,key=value]`` -> {key: value}."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, wanted = part.partition("=")
        if not eq or not key.strip():
            raise TcfError(f"{option} must be key=value[,key=value], e.g. item_tower=id; got {text!r}")
        pairs[key.strip()] = wanted.strip()
    return pairs


def _matches(name: str, raw: Any, wanted: str) -> bool:
    if raw is None:
        return wanted.lower() in ("", "none", "null", MISSING)
    value = normalize(name, raw)
    if isinstance(value, bool):
        return wanted.lower() == str(value).lower()
    if wanted in (str(raw), str(value), display(name, value)):
        return True
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(wanted), float(value), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return False


def selects(run: dict, selector: dict[str, str]) -> bool:
    """Whether a run matches every key=value of a selector (paths match by full path or base name)."""
    return all(_matches(name, raw_value(run, name), wanted) for name, wanted in selector.items())


def check_metric(value: str, runs: Sequence[dict], option: str) -> None:
    """Raise a TcfError naming ``option`` unless some run has the metric; the message lists those that do."""
    available = sorted({k for run in runs for k, v in run.items() if is_metric_column(k) and v is not None})
    if value not in available:
        raise TcfError(f"{option}: unknown metric {value!r}; available: {', '.join(available) or 'none'}")


# -- the pivot ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """The runs of one (row, column): their metric values (fractions) and the column's baseline."""

    run_ids: tuple[int, ...]
    values: tuple[float, ...]
    baseline: float | None = None  # mean of the baseline runs in this column; None: no delta shown
    is_baseline: bool = False  # every run of the cell is a baseline run

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.is_baseline else self.mean - self.baseline

    @property
    def delta_pct(self) -> float | None:
        """Relative difference from the baseline, in percent."""
        if self.delta is None or self.baseline == 0:
            return None
        return 100 * self.delta / self.baseline


@dataclass
class Pivot:
    """Row keys x column keys -> Cell; keys are tuples of normalized field values."""

    value: str
    row_fields: list[str]
    col_fields: list[str]
    row_keys: list[Key]
    col_keys: list[Key]
    cells: dict[tuple[Key, Key], Cell]
    baseline: str | None = None
    column_baselines: dict[Key, float] = field(default_factory=dict)


def build_pivot(runs: Sequence[dict], row_fields: Sequence[str], col_fields: Sequence[str],
                value: str = DEFAULT_VALUE, baseline: str | None = None) -> Pivot:
    """Group ``runs`` (finished_runs rows) into cells; runs without the metric are left out.

    With a baseline selector, each column's baseline is the mean over the matching runs in that
    column, and every other cell of the column carries its delta from it.
    """
    selector = parse_selector(baseline) if baseline else None
    grouped: dict[tuple[Key, Key], list[dict]] = {}
    for run in runs:
        if run.get(value) is None:
            continue
        row = tuple(field_value(run, f) for f in row_fields)
        col = tuple(field_value(run, f) for f in col_fields)
        grouped.setdefault((row, col), []).append(run)

    column_baselines: dict[Key, float] = {}
    if selector is not None:
        per_column: dict[Key, list[float]] = {}
        for (_, col), members in grouped.items():
            per_column.setdefault(col, []).extend(float(r[value]) for r in members if selects(r, selector))
        column_baselines = {col: statistics.fmean(v) for col, v in per_column.items() if v}
        if not column_baselines:
            raise TcfError(f"--baseline {baseline!r} matches no finished run with {value}")

    cells = {}
    for (row, col), members in grouped.items():
        cells[(row, col)] = Cell(
            run_ids=tuple(int(r["run_id"]) for r in members),
            values=tuple(float(r[value]) for r in members),
            baseline=column_baselines.get(col),
            is_baseline=selector is not None and all(selects(r, selector) for r in members),
        )

    def order(keys: Iterable[Key]) -> list[Key]:
        return sorted(set(keys), key=lambda k: tuple(sort_key(v) for v in k))

    return Pivot(value=value, row_fields=list(row_fields), col_fields=list(col_fields),
                 row_keys=order(r for r, _ in cells), col_keys=order(c for _, c in cells),
                 cells=cells, baseline=baseline, column_baselines=column_baselines)


def pivot_from_store(store: Any, spec: str, value: str | None = None, baseline: str | None = None,
                     dataset: str | None = None, name_glob: str | None = None) -> Pivot:
    """Parse ``ROWS:COLS``, check every field and the metric, and pivot the finished runs."""
    row_fields, col_fields = parse_pivot_spec(spec)
    value = value or DEFAULT_VALUE
    runs = finished_runs(store, dataset=dataset, name_glob=name_glob)
    known = known_fields(view_columns(store), runs)
    check_fields([*row_fields, *col_fields], known, "--pivot")
    if baseline is not None:
        check_fields(list(parse_selector(baseline)), known, "--baseline")
    if not runs:
        raise TcfError(f"{store.path}: no finished runs" + (" match --dataset/--name" if dataset or name_glob else ""))
    check_metric(value, runs, "--value")
    return build_pivot(runs, row_fields, col_fields, value, baseline)


# -- rendering ---------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x * 100:.2f}"


def _uniform_n(p: Pivot) -> int | None:
    """The run count shared by every multi-run cell (1 if none has several); None if they differ."""
    ns = {cell.n for cell in p.cells.values() if cell.n > 1} or {1}
    return ns.pop() if len(ns) == 1 else None


def _note(p: Pivot, ascii_only: bool = False) -> str:
    pm, times = ("+/-", "x") if ascii_only else ("±", "×")
    n = _uniform_n(p)
    runs = ("one run per cell" if n == 1 else f"mean {pm} sample std over {n or '[n=k]'} runs "
            "(a cell of one run shows its value alone)")
    text = f"{p.value} {times}100; {runs}"
    if p.baseline:
        text += f"; (+d): difference from the mean of {p.baseline} in the same column"
    return text


def _human_cell(p: Pivot, cell: Cell | None, latex: bool = False) -> str:
    if cell is None:
        return MISSING if not latex else "--"
    pm = r" $\pm$ " if latex else " ± "
    text = _pct(cell.mean)
    if cell.std is not None:
        text += pm + _pct(cell.std)
    if _uniform_n(p) is None and cell.n > 1:
        text += f" [n={cell.n}]"
    if cell.delta is not None:
        delta = f"{cell.delta * 100:+.2f}"
        text += f" ({'$-$' + delta[1:] if latex and delta.startswith('-') else delta})"
    return text


def _row_labels(p: Pivot, row: Key) -> list[str]:
    return [display(f, v) for f, v in zip(p.row_fields, row, strict=True)]


def _col_label(p: Pivot, col: Key, sep: str) -> str:
    return sep.join(display(f, v) for f, v in zip(p.col_fields, col, strict=True)) or p.value


def _rich(p: Pivot) -> Table:
    title = f"{p.value} by {', '.join(p.row_fields)}" + (f" x {', '.join(p.col_fields)}" if p.col_fields else "")
    table = Table(title=Text(title), caption=Text(_note(p)))  # Text: no markup in [n=k]
    body = [(_row_labels(p, row), [_human_cell(p, p.cells.get((row, col))) for col in p.col_keys])
            for row in p.row_keys]
    for name in p.row_fields:  # labels fold on a narrow terminal; numbers never do
        table.add_column(name, overflow="fold")
    for i, col in enumerate(p.col_keys):
        width = max(len(cells[i]) for _, cells in body)
        table.add_column(_col_label(p, col, "\n"), justify="right", no_wrap=True, min_width=width)
    for labels, cells in body:
        table.add_row(*(Text(s) for s in labels), *(Text(s) for s in cells))
    return table


def _markdown(p: Pivot) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = list(p.row_fields) + [_col_label(p, c, " / ") for c in p.col_keys]
    out = [line(header), "|" + "|".join(["---"] * len(p.row_fields) + ["---:"] * len(p.col_keys)) + "|"]
    for row in p.row_keys:
        out.append(line(_row_labels(p, row) + [_human_cell(p, p.cells.get((row, c))) for c in p.col_keys]))
    cols = f"; columns: {', '.join(p.col_fields)}" if p.col_fields else ""
    return "\n".join(out) + f"\n\n{_note(p)}{cols}\n"


def _latex_cell(text: str) -> str:
    # A line that starts with [ or * would be read as an argument of the previous row's \\.
    return "{}" + text if text[:1] in ("[", "*") else text


def _latex(p: Pivot) -> str:
    r_count, c_count = len(p.row_fields), len(p.col_keys)
    out = [f"% {_note(p, ascii_only=True)}", f"\\begin{{tabular}}{{{'l' * r_count}{'r' * c_count}}}", r"\toprule"]
    levels = len(p.col_fields)
    for level in range(levels):  # one header line per column field, as pandas' to_latex
        corner = [""] * (r_count - 1) + [latex_escape(p.col_fields[level])]
        labels = [display(p.col_fields[level], col[level]) for col in p.col_keys]
        if level == levels - 1:
            out.append(" & ".join(corner + [_latex_cell(latex_escape(s)) for s in labels]) + r" \\")
            break
        groups: list[list[Any]] = []  # merge neighbours that share this level and every level above
        for i, col in enumerate(p.col_keys):
            if groups and p.col_keys[groups[-1][1]][: level + 1] == col[: level + 1]:
                groups[-1][2] += 1
            else:
                groups.append([labels[i], i, 1])
        cells = [f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(label)}}}" if n > 1 else latex_escape(label)
                 for label, _, n in groups]
        out.append(" & ".join(corner + cells) + r" \\")
        out.append(" ".join(f"\\cmidrule(lr){{{r_count + i + 1}-{r_count + i + n}}}" for _, i, n in groups))
    if levels == 0:
        out.append(" & ".join([""] * r_count + [latex_escape(p.value)]) + r" \\")
    out.append(" & ".join(latex_escape(f) for f in p.row_fields) + " & " * c_count + r" \\")
    out.append(r"\midrule")
    previous: list[str] = []
    for row in p.row_keys:
        labels = _row_labels(p, row)
        shown = []  # a leading label that repeats the row above is left blank, as in paper tables
        for i, label in enumerate(labels):
            repeat = i < len(labels) - 1 and labels[: i + 1] == previous[: i + 1]
            shown.append("" if repeat else _latex_cell(latex_escape(label)))
        cells = [_latex_cell(_human_cell(p, p.cells.get((row, c)), latex=True)) for c in p.col_keys]
        out.append(" & ".join(shown + cells) + r" \\")
        previous = labels
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def _csv_value(value: Any) -> str:
    """Empty for missing, repr for floats (full precision, round-trips through float())."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _csv(p: Pivot) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*p.row_fields, *p.col_fields, "metric", "mean", "std", "n", "baseline", "delta",
                     "delta_pct", "run_ids"])
    for row in p.row_keys:
        for col in p.col_keys:
            cell = p.cells.get((row, col))
            if cell is None:
                continue
            baseline = None if cell.is_baseline else cell.baseline
            writer.writerow([*(_csv_value(v) for v in (*row, *col)), p.value, repr(cell.mean),
                             _csv_value(cell.std), cell.n, _csv_value(baseline), _csv_value(cell.delta),
                             _csv_value(cell.delta_pct), " ".join(map(str, cell.run_ids))])
    return buffer.getvalue()


def _json(p: Pivot) -> str:
    cells = []
    for row in p.row_keys:
        for col in p.col_keys:
            cell = p.cells.get((row, col))
            if cell is None:
                continue
            cells.append({
                "row": dict(zip(p.row_fields, row, strict=True)),
                "column": dict(zip(p.col_fields, col, strict=True)),
                "mean": cell.mean, "std": cell.std, "n": cell.n, "run_ids": list(cell.run_ids),
                "values": list(cell.values), "is_baseline": cell.is_baseline,
                "baseline": None if cell.is_baseline else cell.baseline,
                "delta": cell.delta, "delta_pct": cell.delta_pct,
            })
    return json.dumps({"value": p.value, "rows": p.row_fields, "columns": p.col_fields,
                       "baseline": p.baseline, "cells": cells}, indent=2) + "\n"


def format_pivot(p: Pivot, fmt: str) -> str | Table:
    """Render a pivot: 'table' gives a rich Table; md, csv, latex and json give strings."""
    renderers = {"table": _rich, "md": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in renderers:
        raise TcfError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return renderers[fmt](p)
