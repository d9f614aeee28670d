"""One-line progress rows (label, bar, done/total, detail) for block ranges and epochs.

Rendered with rich's static bar instead of Textual's ProgressBar: its ETA column ticks with the wall
clock, while these rows change only when the job reports, which keeps snapshots deterministic.
"""

from __future__ import annotations

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tcf.store.events import EpochProgress, RangeProgress
from tcf.util.units import duration


def range_detail(r: RangeProgress) -> str:
    """Speed while it runs; its time once the range committed."""
    if r.finished:
        return f"done in {duration(r.seconds)}" if r.seconds is not None else "done"
    return f"{r.items_per_s:,.0f} items/s" if r.items_per_s else ""


def epoch_detail(e: EpochProgress) -> str:
    """Loss and validation metrics (x100, as in `tcf results`) once the epoch finished."""
    if not e.finished:
        return ""
    parts = [f"loss {e.loss:.4f}"] if e.loss is not None else []
    parts += [f"{name.upper()} {100 * value:.2f}" for name, value in e.metrics.items() if name.endswith("@10")]
    if e.seconds is not None:
        parts.append(duration(e.seconds))
    return "  ".join(parts)


def range_cells(r: RangeProgress) -> tuple[str, int, int, str, bool]:
    return r.label, r.done, r.total, range_detail(r), r.finished


def epoch_cells(e: EpochProgress) -> tuple[str, int, int, str, bool]:
    return f"epoch {e.epoch}", e.done, e.total, epoch_detail(e), e.finished


def counts(done: int, total: int) -> str:
    return f"{done:,}/{total:,}"


class ProgressRow(Static):
    """label ━━━━━━━╸━━━ done/total detail; the bar takes the width the other columns leave."""

    DEFAULT_CSS = "ProgressRow { height: 1; }"

    def show(self, cells: tuple[str, int, int, str, bool], widths: tuple[int, int, int]) -> None:
        """``widths`` (label, counts, detail) are shared by a section's rows, so their bars line up."""
        label, done, total, detail, finished = cells
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=widths[0], no_wrap=True)
        grid.add_column(ratio=1)
        grid.add_column(width=widths[1], justify="right", no_wrap=True)
        grid.add_column(width=widths[2], no_wrap=True, overflow="ellipsis")
        bar = ProgressBar(total=max(total, 1), completed=min(done, total) if total else 0,
                          complete_style="green" if finished else "cyan", finished_style="green")
        grid.add_row(Text(label, style="bold"), bar, counts(done, total), Text(detail, style="dim"))
        self.update(grid)


def column_widths(rows: list[tuple[str, int, int, str, bool]]) -> tuple[int, int, int]:
    """Widths of the label, counts and detail columns that fit every row of a section."""
    return (max((len(r[0]) for r in rows), default=1), max((len(counts(r[1], r[2])) for r in rows), default=1),
            max((len(r[3]) for r in rows), default=1))
