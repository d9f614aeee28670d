"""The scaling plot in a terminal: tcf.report.plot's panels drawn with braille dots (2x4 per character).

Drawn by hand, with no plotting dependency: a few dozen lines cover log ticks, error bars, dashed
baselines and a legend, and the result is a rich Text that any Static can show::

    Static(render_plot(plot_panels(view, "test_ndcg@10"), "test_ndcg@10", width=100))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from tcf.report.plot import Panel
from tcf.report.render import pct
from tcf.report.runs import human_count
from tcf.report.view import metric_label

SERIES_COLOURS = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_white")
BASELINE_COLOURS = ("grey62", "grey42")  # the first baseline, then every other one
LABEL_WIDTH = 7  # the y axis labels, e.g. " 11.97"
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dot row][dot column]


class BrailleCanvas:
    """Characters of 2x4 braille dots, each with the colour of the last thing drawn in it."""

    def __init__(self, width: int, height: int) -> None:
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


class _Scale:
    """Data to dots: x is log(lm_params), y the metric x100, both padded so no point sits on the frame."""

    def __init__(self, panel: Panel, plot_w: int, height: int) -> None:
        self.xs = sorted({p.x for s in panel.series for p in s.points})
        ys = [100 * v for s in panel.series for p in s.points for v in (p.mean - p.std, p.mean + p.std)]
        ys += [100 * b.mean for b in panel.baselines]
        pad = (max(ys) - min(ys)) * 0.08 or 0.5
        self.y_lo, self.y_hi = min(ys) - pad, max(ys) + pad
        pad_x = 1.5 if len(self.xs) > 1 else 3.0  # a single size sits mid-axis, not on its edge
        self.x_lo, self.x_hi = math.log10(self.xs[0] / pad_x), math.log10(self.xs[-1] * pad_x)
        self.dots_w, self.dots_h = 2 * plot_w - 1, 4 * height - 1

    def px(self, x: float) -> int:
        return round((math.log10(x) - self.x_lo) / (self.x_hi - self.x_lo) * self.dots_w)

    def py(self, y: float) -> int:
        return round((self.y_hi - 100 * y) / (self.y_hi - self.y_lo) * self.dots_h)


def _draw(canvas: BrailleCanvas, panel: Panel, scale: _Scale, colours: dict[str, str]) -> None:
    """Dashed baselines first, then each series: its line, its std bars and a marker per point."""
    for i, base in enumerate(panel.baselines):
        for x in range(0, scale.dots_w + 1):
            if (x // 3) % 2 == 0:
                canvas.dot(x, scale.py(base.mean), BASELINE_COLOURS[min(i, 1)])
    for series in panel.series:
        colour = colours[series.label]
        points = [(scale.px(p.x), scale.py(p.mean)) for p in series.points]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            canvas.line(x0, y0, x1, y1, colour)
        for p in series.points:
            if p.std:
                canvas.line(scale.px(p.x), scale.py(p.mean - p.std), scale.px(p.x), scale.py(p.mean + p.std), colour)
        for x, y in points:
            canvas.marker(x, y, colour)


def _frame(out: Text, canvas: BrailleCanvas, scale: _Scale) -> None:
    """The canvas with y labels (top, middle, bottom) on its left and the model sizes under it."""
    height, plot_w = canvas.height, canvas.width
    mid = (height - 1) // 2
    y_mid = scale.y_hi - (scale.y_hi - scale.y_lo) * mid / (height - 1)
    label_rows = {0: scale.y_hi, height - 1: scale.y_lo, mid: y_mid}
    for y in range(height):
        label = f"{label_rows[y]:.2f}" if y in label_rows else ""
        out.append(f"{label:>{LABEL_WIDTH}}" + ("┤" if y in label_rows else "│"), style="dim")
        out.append_text(canvas.row(y))
        out.append("\n")
    axis = ["─"] * plot_w
    ticks = [" "] * (plot_w + 8)
    for x in scale.xs:
        col = scale.px(x) // 2
        axis[col] = "┬"
        tick = human_count(x)
        start = max(0, min(col - len(tick) // 2, len(ticks) - len(tick)))
        if all(c == " " for c in ticks[max(0, start - 1):start + len(tick) + 1]):  # ticks never overlap
            ticks[start:start + len(tick)] = tick
    out.append(" " * LABEL_WIDTH + "└" + "".join(axis) + "\n", style="dim")
    out.append(" " * (LABEL_WIDTH + 1) + "".join(ticks).rstrip() + "\n", style="dim")


def _legend(out: Text, panel: Panel, colours: dict[str, str]) -> None:
    """Every series with its values (mean ± std per size), then the baselines: the numbers behind the dots."""
    for series in panel.series:
        values = "  ".join(f"{human_count(p.x)} {pct(p.mean)}" + (f" ± {pct(p.std)}" if p.n > 1 else "")
                           for p in series.points)
        out.append("  ⣿─ ", style=colours[series.label])
        out.append(f"{series.label}: {values}\n")
    for i, base in enumerate(panel.baselines):
        out.append("  ╌╌ ", style=BASELINE_COLOURS[min(i, 1)])
        spread = f" ± {pct(base.std)} (n={base.n})" if base.n > 1 else ""
        out.append(f"{base.label}: {pct(base.mean)}{spread}\n")


def render_panel(panel: Panel, metric: str, width: int = 72, height: int = 14) -> Text:
    """One panel as braille: metric x100 against lm_params (log x), series lines with std bars, dashed baselines."""
    canvas = BrailleCanvas(max(10, width - LABEL_WIDTH - 1), height)
    scale = _Scale(panel, canvas.width, height)
    colours = {s.label: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, s in enumerate(panel.series)}
    _draw(canvas, panel, scale, colours)
    out = Text()
    out.append(f"{panel.dataset}: {metric_label(metric)} ×100 vs text encoder parameters (log scale)\n", style="bold")
    _frame(out, canvas, scale)
    _legend(out, panel, colours)
    return out


def render_plot(panels: Sequence[Panel], metric: str, width: int = 72, height: int = 14) -> Text:
    """Every panel, one under the other; a sentence when there is nothing to plot."""
    if not panels:
        return Text(f"Nothing to plot: no finished text-tower run with lm_params and {metric} in this view "
                    "(the x axis is the text encoder's parameter count).")
    out = Text()
    for i, panel in enumerate(panels):
        if i:
            out.append("\n")
        out.append_text(render_panel(panel, metric, width, height))
    return out
