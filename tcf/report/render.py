"""Tables as text: the one format registry (name <-> file extension <-> renderer), the one way a metric
cell prints, and the md / csv / latex / json writers that every table shares.

A table builder (``results.py``: a row per run; ``pivot.py``: a paper pivot; ``view.py``: the Results
screen) returns a :class:`Table`: a :class:`Grid` of the text people read, the rows programs read
(csv) and a JSON document. The ``table`` format is the grid drawn in a terminal, which the CLI does
with rich (the TUI draws its own DataTable), so nothing here imports a terminal library::

    text = render(pivot_table(pivot), "latex")
    fmt = format_for_path("table.tex", default="table")    # 'latex'

Human formats show metrics x100 with 2 decimals, as papers report HR/NDCG; csv and json keep the
stored fractions at full precision.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from tcf.errors import ConfigError
from tcf.report.runs import MISSING
from tcf.util.text import printable

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


# -- a metric cell -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """The runs behind one number: their metric values (fractions) and, when compared, the baseline's mean."""

    run_ids: tuple[int, ...]
    values: tuple[float, ...]
    baseline: float | None = None  # mean of the baseline runs; None: no delta shown
    is_baseline: bool = False  # the cell is (part of) the baseline itself

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


def pct(x: float) -> str:
    """A fraction as papers print HR/NDCG: x100, 2 decimals."""
    return f"{x * 100:.2f}"


def metric_text(cell: Cell | None, stated: Collection[int] = (1,), latex: bool = False) -> str:
    """How every table prints a metric: ``11.70``; `` ± 0.21`` over several runs; `` [n=2]`` unless the
    table already states the count (``stated``: what its note or its n column say; a value alone is
    one run); `` (+0.53)`` its difference from the baseline; ``-`` (``--`` in LaTeX) when missing.

    One rule for the pivot, the Results screen and their exports, so a number reads the same everywhere.
    """
    if cell is None:
        return "--" if latex else MISSING
    text = pct(cell.mean)
    if cell.std is not None:
        text += (r" $\pm$ " if latex else " ± ") + pct(cell.std)
    if cell.n not in stated:
        text += f" [n={cell.n}]"
    if cell.delta is not None:
        shown = f"{cell.delta * 100:+.2f}"
        text += f" ({'$-$' + shown[1:] if latex and shown.startswith('-') else shown})"
    return text


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters so run names and paths print as typed."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


# -- the table model ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    """A cell as people read it: plain text (terminal, md) and the same as LaTeX."""

    text: str
    latex: str


def label(text: str) -> Shown:
    """A text cell: shown as typed (control characters escaped: :func:`tcf.util.text.printable`), escaped
    for LaTeX."""
    text = printable(text)
    return Shown(text, latex_escape(text))


def number(cell: Cell | None, stated: Collection[int] = (1,)) -> Shown:
    """A metric cell through :func:`metric_text`."""
    return Shown(metric_text(cell, stated), metric_text(cell, stated, latex=True))


@dataclass(frozen=True)
class GridColumn:
    label: tuple[str, ...]  # the header, one line per header level (a pivot's column fields)
    numeric: bool = False  # right-aligned
    fit: str = "ellipsis"  # on a narrow terminal: "fold" (wrap), "ellipsis" (cut) or "whole" (never cut)
    drop: int = 0  # on a narrow terminal, columns are left out highest first; 0: never (what says which row it is)


@dataclass(frozen=True)
class Grid:
    """What every human format draws: header, cells as text, how to read the numbers."""

    columns: tuple[GridColumn, ...]
    rows: tuple[tuple[Shown, ...], ...]
    note: str = ""  # md: after the table; LaTeX: a comment; terminal: the caption
    title: str = ""  # terminal only
    caption: str | None = None  # the terminal table's caption when it is not the note
    stub: int = 0  # leading label columns (a pivot's row fields): a header line of their own in LaTeX
    levels: tuple[str, ...] = ()  # names of the header levels (a pivot's column fields)


@dataclass(frozen=True)
class Table:
    """One table in every format: the grid, its csv rows, and its JSON document (None: no json)."""

    grid: Grid
    csv_header: tuple[str, ...]
    csv_rows: tuple[tuple[Any, ...], ...]
    json: Any = None


# -- fitting a terminal ------------------------------------------------------------------------

def column_width(texts: Sequence[str]) -> int:
    """The widest line among a column's header lines and cells."""
    return max((len(line) for text in texts for line in (text.splitlines() or [""])), default=0)


def table_width(widths: Sequence[int]) -> int:
    """A boxed terminal table's width: each column's text, a space either side and a rule, plus the last rule."""
    return sum(w + 3 for w in widths) + 1


def fit_columns(widths: Sequence[int], drops: Sequence[int], width: int) -> list[int]:
    """The indices of the columns to show in ``width`` characters: while the table is too wide, the column with
    the highest ``drop`` (the rightmost of equals) is left out; ``drop == 0`` columns always stay, so a reader
    sees which run each row is at any width."""
    kept = list(range(len(widths)))
    while table_width([widths[i] for i in kept]) > width:
        droppable = [i for i in kept if drops[i] > 0]
        if not droppable:
            break
        kept.remove(max(droppable, key=lambda i: (drops[i], i)))
    return kept


def fit_grid(grid: Grid, width: int) -> tuple[Grid, list[str]]:
    """The grid as a terminal of ``width`` columns shows it, and the labels of the columns left out: metric and
    descriptive columns go until the rest fits whole, never those that say which row it is (they fold only
    when they alone are too wide)."""
    widths = [column_width([*c.label, *(row[i].text or MISSING for row in grid.rows)])
              for i, c in enumerate(grid.columns)]
    kept = fit_columns(widths, [c.drop for c in grid.columns], width)
    fits = table_width([widths[i] for i in kept]) <= width
    columns = tuple(replace(grid.columns[i], fit="whole" if fits else grid.columns[i].fit) for i in kept)
    left_out = [" / ".join(c.label) for i, c in enumerate(grid.columns) if i not in kept]
    return replace(grid, columns=columns, rows=tuple(tuple(row[i] for i in kept) for row in grid.rows)), left_out


# -- writers -----------------------------------------------------------------------------------

def markdown(table: Table) -> str:
    """A GitHub table, then the note (and the column fields of stacked headers)."""
    grid = table.grid

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line([" / ".join(c.label) for c in grid.columns]),
           "|" + "|".join("---:" if c.numeric else "---" for c in grid.columns) + "|"]
    out += [line([s.text for s in row]) for row in grid.rows]
    text = "\n".join(out) + "\n"
    if grid.note:
        text += f"\n{grid.note}" + (f"; columns: {', '.join(grid.levels)}" if grid.levels else "") + "\n"
    return text


def _latex_cell(text: str) -> str:
    # A line that starts with [ or * would be read as an argument of the previous row's \\.
    return "{}" + text if text[:1] in ("[", "*") else text


def _latex_header(grid: Grid) -> list[str]:
    """One line of labels; with a stub, one line per column level (neighbours merged) and one of stub labels."""
    if not grid.stub:
        return [" & ".join(_latex_cell(latex_escape(" / ".join(c.label))) for c in grid.columns) + r" \\"]
    stub, data = grid.columns[:grid.stub], grid.columns[grid.stub:]
    names = grid.levels or ("",)
    out = []
    for level, name in enumerate(names):
        corner = [""] * (len(stub) - 1) + [latex_escape(name)]
        labels = [c.label[level] for c in data]
        if level == len(names) - 1:
            out.append(" & ".join(corner + [_latex_cell(latex_escape(s)) for s in labels]) + r" \\")
            break
        groups: list[list[Any]] = []  # [label, first column, width]: merge neighbours that agree up to here
        for i, column in enumerate(data):
            if groups and data[groups[-1][1]].label[:level + 1] == column.label[:level + 1]:
                groups[-1][2] += 1
            else:
                groups.append([labels[i], i, 1])
        cells = [f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(text)}}}" if n > 1 else latex_escape(text)
                 for text, _, n in groups]
        out.append(" & ".join(corner + cells) + r" \\")
        out.append(" ".join(f"\\cmidrule(lr){{{len(stub) + i + 1}-{len(stub) + i + n}}}" for _, i, n in groups))
    out.append(" & ".join([latex_escape(c.label[0]) for c in stub] + [""] * len(data)) + r" \\")
    return out


def latex(table: Table) -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``): specials escaped, ± as $\\pm$, the note as a comment;
    a stub label that repeats the row above is left blank, as in paper tables."""
    grid = table.grid
    out = [f"% {grid.note.replace('±', '+/-').replace('×', 'x')}"] if grid.note else []
    out += [f"\\begin{{tabular}}{{{''.join('r' if c.numeric else 'l' for c in grid.columns)}}}", r"\toprule"]
    out += _latex_header(grid)
    out.append(r"\midrule")
    previous: list[str] = []
    for row in grid.rows:
        stub = [s.text for s in row[:grid.stub]]
        cells = ["" if i < grid.stub - 1 and stub[:i + 1] == previous[:i + 1] else _latex_cell(s.latex)
                 for i, s in enumerate(row)]
        out.append(" & ".join(cells) + r" \\")
        previous = stub
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def csv_value(value: Any) -> str:
    """Empty for missing, true/false, repr for floats (full precision, round-trips through float())."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else printable(str(value))


def csv_text(table: Table) -> str:
    """The table's csv rows under its header (fractions at full precision, for programs)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.csv_header)
    writer.writerows([csv_value(v) for v in row] for row in table.csv_rows)
    return buffer.getvalue()


def json_text(table: Table) -> str:
    """The table's JSON document, indented, newline-terminated."""
    if table.json is None:
        raise ConfigError(None, "format", "this table has no JSON form")
    return json.dumps(table.json, indent=2) + "\n"


# -- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """A way to write results: its name (``--format``), the file extension that picks it, and its writer
    (None: drawn by the UI (``table``), or a figure format that tcf.report.plot writes)."""

    name: str
    extension: str
    title: str
    render: Callable[[Table], str] | None = None
    figure: bool = False


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("table", ".txt", "Text table (.txt)"),
    Format("md", ".md", "Markdown (.md)", markdown),
    Format("csv", ".csv", "CSV (.csv)", csv_text),
    Format("latex", ".tex", "LaTeX (.tex)", latex),
    Format("json", ".json", "JSON (.json)", json_text),
    Format("png", ".png", "PNG image (.png)", figure=True),
    Format("svg", ".svg", "SVG image (.svg)", figure=True),
    Format("pdf", ".pdf", "PDF (.pdf)", figure=True),
)}
TABLE_FORMATS = tuple(name for name, f in FORMATS.items() if not f.figure)
FIGURE_FORMATS = tuple(name for name, f in FORMATS.items() if f.figure)


def format_for_path(path: str | PurePath, default: str, offered: Sequence[str] = TABLE_FORMATS) -> str:
    """The offered format a file name asks for by its extension (.tex, .MD, ...), else ``default``."""
    suffix = PurePath(path).suffix.lower()
    return next((name for name in offered if FORMATS[name].extension == suffix), default)


def check_format(fmt: str, offered: Sequence[str] = TABLE_FORMATS) -> Format:
    """The registry's Format, or a ConfigError about ``format`` that lists the offered ones."""
    if fmt not in offered:
        raise ConfigError(None, "format", f"must be one of {', '.join(offered)}, got {fmt!r}")
    return FORMATS[fmt]


def render(table: Table, fmt: str) -> str:
    """The table as md, csv, latex or json text (the terminal ``table`` is drawn from ``table.grid``)."""
    writer = check_format(fmt, [n for n in TABLE_FORMATS if FORMATS[n].render is not None]).render
    assert writer is not None
    return writer(table)
