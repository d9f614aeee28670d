"""The paper's scaling figure: a metric against the text encoder's size, one panel per dataset.

x is ``lm_params`` (log scale, ticks labelled 125M, 1.3B, ...), y the metric x100; each series (by
default the item tower and how many top blocks were fine-tuned: "frozen", "top-2 fine-tuned") is a
line of means over seeds with sample-std error bars, and the ID-based runs of the same architecture
are a dashed horizontal baseline. matplotlib is imported only when drawing, so ``tcf --help`` stays
fast. The file's extension picks the format (png, svg or pdf; tcf.report.render's registry)::

    panels = plot_scaling(Store("experiments.db"), Path("scaling.png"), metric="test_ndcg@10")

The Results screen draws the same panels in braille (tcf.tui.widgets.braille_plot).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcf.errors import ConfigError, TcfError
from tcf.report.render import FIGURE_FORMATS, format_for_path
from tcf.report.runs import (
    DEFAULT_METRIC,
    RunRecord,
    check_fields,
    check_metric,
    display,
    field_value,
    human_count,
    known_fields,
    load_runs,
    no_runs,
    sort_key,
    split_fields,
)
from tcf.store.db import Store
from tcf.util.atomic import write_user_file

PANEL_INCHES = (3.3, 2.5)  # one dataset's subplot: a column of a two-column paper
DPI = 300  # the PNG's resolution (PDF and SVG are vector)
FONT_PT = 8  # a paper's figure text
DODGE_DECADES = 0.015  # how far apart (log10 of x) the series' points of one model size are drawn
MAX_COLUMNS = 3


@dataclass(frozen=True)
class Point:
    """One model size of one series: the metric's mean and sample std (0 for one run), fractions."""

    x: int
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Baseline:
    """The ID-based runs of one architecture: a horizontal line at their mean."""

    label: str
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Panel:
    dataset: str
    series: tuple[Series, ...]
    baselines: tuple[Baseline, ...]


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def _default_label(run: RunRecord, several_architectures: bool) -> str:
    """The default series: the item tower and how many top blocks were fine-tuned ("frozen", "top-2 fine-tuned")."""
    unfreeze = field_value(run, "text_encoder.unfreeze")
    parts = [str(run.architecture)] if several_architectures else []
    if run.item_tower not in (None, "text"):
        parts.append(str(run.item_tower))
    parts.append(f"top-{unfreeze} fine-tuned" if unfreeze else "frozen")
    return ", ".join(parts)


def _split(groups: dict[Any, list[RunRecord]], fields: Sequence[str], by: Any) -> dict[tuple, list[RunRecord]]:
    """The groups split further by every key that varies among runs of one group at one ``by`` value (a model
    size, say), so that a point or a line only ever averages runs that differ in their seed; each key of the
    result carries ``((field, value), ...)`` of the fields added."""
    cells = [[r for r in members if by(r) == x] for members in groups.values() for x in {by(r) for r in members}]
    added = split_fields(cells, fields, "series")
    out: dict[tuple, list[RunRecord]] = {}
    for key, members in groups.items():
        for run in members:
            out.setdefault((key, tuple((f, field_value(run, f)) for f in added)), []).append(run)
    return out


def _extra(pairs: tuple[tuple[str, Any], ...]) -> str:
    return "".join(f", {f}={display(f, v)}" for f, v in pairs)


def _baselines(runs: Sequence[RunRecord], architectures: Sequence[str], metric: str,
               marked: Sequence[RunRecord] | None) -> tuple[Baseline, ...]:
    """A panel's baselines: the runs the user marked, else each architecture's ID-tower runs, one line per
    model (runs that differ in anything but their seed are separate lines, labelled by what differs)."""
    if marked is not None:
        chosen = [r for r in marked if metric in r.metrics]
        if not chosen:
            return ()
        groups = _split({"": chosen}, ["name"], lambda r: 0)
        ids = ",".join(str(r.run_id) for r in chosen)
        return tuple(Baseline(f"baseline (run {ids}){_extra(extra)}", *_stats([r.metrics[metric] for r in members]))
                     for (_, extra), members in sorted(groups.items(), key=lambda kv: str(kv[0])))
    by_arch = {arch: [r for r in runs if r.architecture == arch and r.item_tower == "id" and r.lm_params is None]
               for arch in architectures}
    groups = _split({a: members for a, members in by_arch.items() if members}, ["architecture"], lambda r: 0)
    return tuple(Baseline(f"ID {arch}{_extra(extra)} (baseline)", *_stats([r.metrics[metric] for r in members]))
                 for (arch, extra), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))))


def scaling_panels(runs: Sequence[RunRecord], metric: str = DEFAULT_METRIC,
                   series_fields: Sequence[str] | None = None,
                   baseline: Sequence[RunRecord] | None = None) -> list[Panel]:
    """Group finished runs into panels (datasets) of series (lines) of points (model sizes).

    Runs with ``lm_params`` are points; a point averages only runs that differ in their seed: any other key
    that varies among the runs of one series at one size (a pooling, a learning rate) splits the series, and
    the key joins its label. The baselines are the runs in ``baseline`` (what the user marked) of the panel,
    else the ID-tower runs of each architecture that the panel's text runs use, one dashed line per model
    (pop, say, is left out when no text run is a pop). With the default series and several architectures, the
    architecture joins the series label, so that SASRec and DSSM never share a line. Runs of another evaluation
    protocol than ``full`` get panels of their own ("mind (cold)"): numbers of two protocols never share a line.
    """
    runs = [r for r in runs if metric in r.metrics]
    text_runs = [r for r in runs if r.lm_params is not None]
    several = len({r.architecture for r in text_runs}) > 1
    fields = list(series_fields) if series_fields is not None else [
        *(["architecture"] if several else []), "item_tower", "text_encoder.unfreeze"]

    def series_key(run: RunRecord) -> tuple[tuple, str]:
        if series_fields is None:
            key = (run.architecture if several else None, run.item_tower,
                   field_value(run, "text_encoder.unfreeze") or 0)
            return tuple(sort_key(v) for v in key), _default_label(run, several)
        values = [field_value(run, f) for f in series_fields]
        label = ", ".join(f"{f}={display(f, v)}" for f, v in zip(series_fields, values, strict=True))
        return tuple(sort_key(v) for v in values), label

    panels = []
    for dataset, protocol in sorted({(r.dataset, r.protocol) for r in text_runs},
                                    key=lambda k: (sort_key(k[0]), k[1] != "full", k[1])):
        here = [r for r in runs if r.dataset == dataset and r.protocol == protocol]
        by_series: dict[tuple[tuple, str], list[RunRecord]] = {}
        for run in (r for r in here if r.lm_params is not None):
            by_series.setdefault(series_key(run), []).append(run)
        lines = _split(by_series, [*fields, "lm_params"], lambda r: r.lm_params)
        series = []
        for ((_, label), extra), members in sorted(lines.items(), key=lambda kv: (kv[0][0][0], str(kv[0][1]))):
            by_x: dict[int, list[float]] = {}
            for run in members:
                by_x.setdefault(int(run.lm_params), []).append(run.metrics[metric])
            series.append(Series(label + _extra(extra), tuple(Point(x, *_stats(by_x[x])) for x in sorted(by_x))))
        architectures = sorted({r.architecture for r in here if r.lm_params is not None})
        marked = None if baseline is None else [r for r in baseline if r.dataset == dataset and r.protocol == protocol]
        title = str(dataset) if protocol == "full" else f"{dataset} ({protocol})"
        panels.append(Panel(title, tuple(series), _baselines(here, architectures, metric, marked)))
    return panels


def dodge(n_series: int, index: int) -> float:
    """The factor that moves series ``index`` of ``n_series`` sideways on the log x axis, so that frozen and
    fine-tuned points of one model size sit side by side instead of on top of each other (1 for one series)."""
    return 10 ** (DODGE_DECADES * (index - (n_series - 1) / 2))


def draw_scaling(panels: Sequence[Panel], metric: str = DEFAULT_METRIC) -> Any:
    """A matplotlib Figure (Agg canvas, no pyplot state) with one subplot per panel, at a paper's size and fonts:
    a panel a column wide (3.3 in), 8 pt text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    columns = min(len(panels), MAX_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    labels = sorted({s.label for p in panels for s in p.series})
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one colour per series in every panel
    markers = {label: "os^Dv<>ph*"[i % 10] for i, label in enumerate(labels)}
    for index, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        for i, series in enumerate(panel.series):
            shift = dodge(len(panel.series), i)
            ax.errorbar([p.x * shift for p in series.points], [100 * p.mean for p in series.points],
                        yerr=[100 * p.std for p in series.points], marker=markers[series.label], markersize=4,
                        linewidth=1.2, capsize=2, elinewidth=0.8, color=colours[series.label], label=series.label)
        for i, baseline in enumerate(panel.baselines):
            ax.axhline(100 * baseline.mean, linestyle="--", linewidth=1, color=str(0.25 + 0.2 * i),
                       label=baseline.label)
        xs = sorted({p.x for s in panel.series for p in s.points})
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FixedFormatter([human_count(x) for x in xs]))
        ax.xaxis.set_minor_locator(NullLocator())
        pad = 1.5 if len(xs) > 1 else 3.0  # a single size sits mid-axis, not on its edge
        ax.set_xlim(xs[0] / pad, xs[-1] * pad)
        ax.set_title(panel.dataset, fontsize=FONT_PT + 1)
        ax.set_xlabel("text encoder parameters", fontsize=FONT_PT)
        ax.set_ylabel(f"{metric} ×100", fontsize=FONT_PT)
        ax.tick_params(labelsize=FONT_PT - 1)
        ax.grid(True, alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=FONT_PT - 1, frameon=False)
    return fig


def plot_scaling(store: Store, out: Path, metric: str | None = None, dataset: str | None = None,
                 series: Sequence[str] | None = None) -> list[Panel]:
    """Check the options, draw the figure of the store's finished runs and write it to ``out`` (atomically),
    as its extension asks (.png, .svg, .pdf; PNG without one)."""
    out = Path(out)
    fmt = format_for_path(out, "", FIGURE_FORMATS) if out.suffix else "png"
    if not fmt:
        raise ConfigError(None, "out", f"unknown figure format {out.suffix!r}; write .png, .svg or .pdf")
    metric = metric or DEFAULT_METRIC
    runs = load_runs(store, finished=True, dataset=dataset)
    if series is not None:
        check_fields(series, known_fields(store.result_columns(), runs), "series")
    if not runs:
        raise no_runs(store, dataset)
    check_metric(metric, runs)
    panels = scaling_panels(runs, metric, series)
    if not panels:
        raise TcfError(f"{store.path}: no finished run with lm_params and {metric}: the scaling plot needs "
                       "text-tower runs (their text encoder's parameter count is the x axis)")
    fig = draw_scaling(panels, metric)
    image = io.BytesIO()
    fig.savefig(image, format=fmt)
    write_user_file(out, image.getvalue())
    return panels
