"""Render rows of the `results` view for people (table, md, LaTeX) and for programs (csv, json).

Human formats (table, md, latex) show metrics x100 with 2 decimals, as papers report HR/NDCG;
machine formats (csv, json) keep the stored fractions at full precision.

Usage::

    rows = Store("experiments.db").results(dataset="mind")
    print(format_results(rows, "latex"))
    write_output(Path("table.tex"), to_text(format_results(rows, "latex")))

Pivot tables (mean +/- std over seeds, deltas against a baseline) live in tcf.report.pivot.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tcf.errors import TcfError
from tcf.util.atomic import write_atomic

FORMATS = ("table", "md", "csv", "latex", "json")
LEADING_COLUMNS = ("run_id", "name", "status", "dataset", "architecture", "item_tower", "best_epoch")
_METRIC_COLUMN = re.compile(r"^(test|valid)_(.+)$")
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _metric_key(column: str) -> tuple[int, str, int]:
    split, name = _METRIC_COLUMN.match(column).groups()
    base, _, k = name.partition("@")
    return (0 if split == "test" else 1), base, int(k) if k.isdigit() else -1


def is_metric_column(column: str) -> bool:
    return _METRIC_COLUMN.match(column) is not None


def result_columns(rows: list[dict]) -> list[str]:
    """Leading run columns, then test metrics, then valid metrics; columns empty in every row dropped."""
    if not rows:
        return list(LEADING_COLUMNS)
    present = {key for row in rows for key, value in row.items() if value is not None}
    metrics = sorted((c for c in present if is_metric_column(c)), key=_metric_key)
    return [c for c in LEADING_COLUMNS if c in present] + metrics


def _cell(value: object, column: str, percent: bool) -> str:
    if value is None:
        return ""
    if percent and is_metric_column(column):
        return f"{float(value) * 100:.2f}"
    return str(value)


def _numeric(column: str) -> bool:
    return column in ("run_id", "best_epoch") or is_metric_column(column)


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters so run names and paths print as typed."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _table(rows: list[dict], columns: list[str]) -> Table:
    table = Table(caption="metrics x 100")
    for column in columns:  # metric headers stay whole; the run name folds on a narrow terminal
        if is_metric_column(column):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        else:
            table.add_column(column, justify="right" if _numeric(column) else "left",
                             overflow="fold" if column == "name" else "ellipsis")
    for row in rows:
        table.add_row(*(_cell(row.get(c), c, percent=True) or "-" for c in columns))
    return table


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    out = [line(columns), "|" + "|".join("---:" if _numeric(c) else "---" for c in columns) + "|"]
    out += [line([_cell(row.get(c), c, percent=True) for c in columns]) for row in rows]
    return "\n".join(out) + "\n"


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def _latex(rows: list[dict], columns: list[str]) -> str:
    spec = "".join("r" if _numeric(c) else "l" for c in columns)
    out = [f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    out += [" & ".join(latex_escape(_cell(row.get(c), c, percent=True)) for c in columns) + r" \\"
            for row in rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def format_results(rows: list[dict], fmt: str) -> str | Table:
    """Render `results` rows; 'table' gives a rich Table, every other format a string.

    json is the rows exactly as the view gives them (all keys, fractions), nothing else, so it
    can be piped into other tools.
    """
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt not in FORMATS:
        raise TcfError(f"unknown results format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = result_columns(rows)
    render = {"table": _table, "md": _markdown, "csv": _csv, "latex": _latex}[fmt]
    return render(rows, columns)


def to_text(rendered: str | Table) -> str:
    """Plain text of a rendered table (a rich Table is laid out uncoloured, unwrapped), newline-terminated."""
    if isinstance(rendered, Table):
        buffer = io.StringIO()
        Console(file=buffer, width=10_000, color_system=None, force_terminal=False).print(rendered)
        text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    else:
        text = rendered
    return text if text.endswith("\n") else text + "\n"


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (:func:`tcf.util.atomic.write_atomic`): a LaTeX build or a
    watching viewer never sees half a file, and a failed write leaves the previous file untouched."""
    write_atomic(path, text)
