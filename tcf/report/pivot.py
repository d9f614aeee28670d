"""Pivot tables for papers: finished runs grouped by any fields, seeds folded into mean ± std.

A paper's results table is a pivot of runs: rows are model variants (item tower, language model,
fine-tuned blocks), columns are datasets, and runs that differ only by seed share a cell. Fields are
those of tcf.report.runs (view columns or dotted config keys)::

    store = Store("experiments.db")
    pivot = pivot_from_store(store, "item_tower,text_encoder.model:dataset",
                             metric="test_ndcg@10", baseline="item_tower=id")
    print(render(pivot_table(pivot), "latex"))

Human formats (table, md, latex) show metrics x100 with 2 decimals; csv (one line per cell, with
mean, std, n, baseline and delta columns) and json keep fractions at full precision.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tcf.errors import ConfigError
from tcf.report.render import Cell, Grid, GridColumn, Table, label, number
from tcf.report.runs import (
    DEFAULT_METRIC,
    RunRecord,
    check_fields,
    check_metric,
    differing_keys,
    display,
    field_value,
    key_field,
    known_fields,
    load_runs,
    no_runs,
    parse_fields,
    parse_selector,
    selects,
    sort_key,
    split_fields,
)
from tcf.store.db import Store

Key = tuple[Any, ...]
PROTOCOL = "protocol"  # the `results` column that says which evaluation protocol made a run's test metrics


def parse_pivot_spec(spec: str) -> tuple[list[str], list[str]]:
    """``ROWS:COLS`` -> (row fields, column fields); COLS may be empty (one column)."""
    if spec.count(":") != 1 or not spec.split(":")[0].strip():
        raise ConfigError(None, "pivot", f"must be ROWS:COLS (comma-separated fields), e.g. "
                                         f"item_tower,text_encoder.model:dataset; got {spec!r}")
    rows_text, cols_text = spec.split(":")
    rows = parse_fields(rows_text, "pivot")
    cols = parse_fields(cols_text, "pivot") if cols_text.strip() else []
    both = sorted(set(rows) & set(cols))
    if both:
        raise ConfigError(None, "pivot", f"{both[0]!r} is both a row and a column field in {spec!r}")
    return rows, cols


@dataclass
class Pivot:
    """Row keys x column keys -> Cell; keys are tuples of normalized field values."""

    metric: str
    row_fields: list[str]
    col_fields: list[str]
    row_keys: list[Key]
    col_keys: list[Key]
    cells: dict[tuple[Key, Key], Cell]
    baseline: str | None = None
    column_baselines: dict[Key, float] = field(default_factory=dict)
    split_by: list[str] = field(default_factory=list)  # row fields added because a cell's runs differed in them


def _column_baselines(grouped: dict[tuple[Key, Key], list[RunRecord]], metric: str, baseline: str,
                      selector: dict[str, str], col_fields: Sequence[str]) -> dict[Key, float]:
    """Each column's baseline: the mean of the runs the selector picks there, which must be one model over its
    seeds (a ConfigError naming the keys they differ in, and a narrower selector, otherwise)."""
    per_column: dict[Key, list[RunRecord]] = {}
    for (_, col), members in grouped.items():
        per_column.setdefault(col, []).extend(r for r in members if selects(r, selector))
    for col, chosen in per_column.items():
        keys = differing_keys(chosen)
        if keys:
            first = key_field(keys[0], ())
            narrower = f"{baseline},{first}={display(first, field_value(chosen[0], first))}"
            where = f" in column {', '.join(map(str, col))}" if col_fields else ""
            raise ConfigError(None, "baseline", f"{baseline!r} picks runs that differ in {', '.join(keys)} "
                              f"(runs {', '.join(str(r.run_id) for r in chosen)}){where}: a baseline is one model "
                              f"over its seeds; narrow it, e.g. {narrower}")
    return {col: statistics.fmean(r.metrics[metric] for r in chosen) for col, chosen in per_column.items() if chosen}


def _group(runs: Sequence[RunRecord], metric: str, row_fields: Sequence[str],
           col_fields: Sequence[str]) -> dict[tuple[Key, Key], list[RunRecord]]:
    grouped: dict[tuple[Key, Key], list[RunRecord]] = {}
    for run in runs:
        if metric in run.metrics:
            row = tuple(field_value(run, f) for f in row_fields)
            col = tuple(field_value(run, f) for f in col_fields)
            grouped.setdefault((row, col), []).append(run)
    return grouped


def split_protocols(runs: Sequence[RunRecord], row_fields: Sequence[str], col_fields: Sequence[str]) -> list[str]:
    """The column fields, led by ``protocol`` when the runs come from several evaluation protocols and neither
    fields name it: a cold-start number and a full-ranking one never share a cell, column or baseline."""
    named = {"protocol", "eval.protocol"} & {*row_fields, *col_fields}
    if named or len({run.protocol for run in runs}) < 2:
        return list(col_fields)
    return [PROTOCOL, *col_fields]


def build_pivot(runs: Sequence[RunRecord], row_fields: Sequence[str], col_fields: Sequence[str],
                metric: str = DEFAULT_METRIC, baseline: str | None = None) -> Pivot:
    """Group ``runs`` into cells; runs without the metric (or with it not applicable: NULL) are left out.

    Only runs that differ in their seed alone share a cell: any other key that varies among a cell's runs
    (the architecture of pop, SASRec and DSSM under one ``item_tower=id``, a pooling, a learning rate) becomes
    a further row field (``Pivot.split_by``, :func:`tcf.report.runs.split_fields`). With a baseline selector,
    each column's baseline is the mean over the matching runs in that column, which must be one model over
    its seeds, and every other cell of the column carries its delta from it. Runs of several protocols are
    split by a leading ``protocol`` column level (:func:`split_protocols`).
    """
    selector = parse_selector(baseline) if baseline else None
    col_fields = split_protocols([r for r in runs if metric in r.metrics], row_fields, col_fields)
    grouped = _group(runs, metric, row_fields, col_fields)
    split_by = split_fields(grouped.values(), [*row_fields, *col_fields], "pivot")
    if split_by:  # only seeds are ever averaged: whatever else varies in a cell becomes part of its row
        row_fields = [*row_fields, *split_by]
        grouped = _group(runs, metric, row_fields, col_fields)
    column_baselines = (_column_baselines(grouped, metric, baseline, selector, col_fields)
                        if selector is not None and baseline is not None else {})
    if selector is not None and not column_baselines:
        raise ConfigError(None, "baseline", f"{baseline!r} matches no finished run with {metric}")
    cells = {key: Cell(run_ids=tuple(r.run_id for r in members), values=tuple(r.metrics[metric] for r in members),
                       baseline=column_baselines.get(key[1]),
                       is_baseline=selector is not None and all(selects(r, selector) for r in members))
             for key, members in grouped.items()}

    def order(keys: Iterable[Key]) -> list[Key]:
        return sorted(set(keys), key=lambda k: tuple(sort_key(v) for v in k))

    return Pivot(metric=metric, row_fields=list(row_fields), col_fields=list(col_fields),
                 row_keys=order(r for r, _ in cells), col_keys=order(c for _, c in cells),
                 cells=cells, baseline=baseline, column_baselines=column_baselines, split_by=split_by)


def pivot_from_store(store: Store, spec: str, metric: str | None = None, baseline: str | None = None,
                     dataset: str | None = None, name_glob: str | None = None) -> Pivot:
    """Parse ``ROWS:COLS``, check every field and the metric, and pivot the finished runs."""
    row_fields, col_fields = parse_pivot_spec(spec)
    metric = metric or DEFAULT_METRIC
    runs = load_runs(store, finished=True, dataset=dataset, name_glob=name_glob)
    known = known_fields(store.result_columns(), runs)
    check_fields([*row_fields, *col_fields], known, "pivot")
    if baseline is not None:
        check_fields(list(parse_selector(baseline)), known, "baseline")
    if not runs:
        raise no_runs(store, dataset, name_glob)
    check_metric(metric, runs)
    return build_pivot(runs, row_fields, col_fields, metric, baseline)


# -- as a table --------------------------------------------------------------------------------

def _uniform_n(p: Pivot) -> int | None:
    """The run count shared by every multi-run cell (1 if none has several); None if they differ."""
    ns = {cell.n for cell in p.cells.values() if cell.n > 1} or {1}
    return ns.pop() if len(ns) == 1 else None


def _note(p: Pivot) -> str:
    n = _uniform_n(p)
    runs = ("one run per cell" if n == 1 else f"mean ± sample std over {n or '[n=k]'} runs "
            "(a cell of one run shows its value alone)")
    text = f"{p.metric} ×100; {runs}"
    if p.split_by:
        them = "them" if len(p.split_by) > 1 else "it"
        text += (f"; rows also split by {', '.join(p.split_by)}: runs differed in {them} (only runs that differ in "
                 "seed alone are averaged)")
    if p.baseline:
        text += f"; (+d): difference from the mean of {p.baseline} in the same column"
    return text


def _grid(p: Pivot) -> Grid:
    stated = {1, _uniform_n(p) or 1}  # the note states the count when all cells share it
    rows = tuple(tuple([*(label(display(f, v)) for f, v in zip(p.row_fields, row, strict=True)),
                        *(number(p.cells.get((row, col)), stated) for col in p.col_keys)])
                 for row in p.row_keys)
    # a narrow terminal leaves out columns from the right but keeps the first: the row labels fold around it
    data = [GridColumn(tuple(display(f, v) for f, v in zip(p.col_fields, col, strict=True)) or (p.metric,),
                       numeric=True, fit="whole", drop=min(i, 1)) for i, col in enumerate(p.col_keys)]
    title = f"{p.metric} by {', '.join(p.row_fields)}" + (f" x {', '.join(p.col_fields)}" if p.col_fields else "")
    return Grid(columns=(*(GridColumn((f,), fit="fold") for f in p.row_fields), *data), rows=rows,
                note=_note(p), title=title, stub=len(p.row_fields), levels=tuple(p.col_fields))


def _cells(p: Pivot) -> Iterable[tuple[Key, Key, Cell]]:
    for row in p.row_keys:
        for col in p.col_keys:
            if (row, col) in p.cells:
                yield row, col, p.cells[(row, col)]


def pivot_table(p: Pivot) -> Table:
    """The pivot in every format: csv and json have one entry per cell with mean, std, n, baseline and deltas."""
    header = (*p.row_fields, *p.col_fields, "metric", "mean", "std", "n", "baseline", "delta", "delta_pct",
              "run_ids")
    csv_rows = tuple((*row, *col, p.metric, cell.mean, cell.std, cell.n, None if cell.is_baseline else cell.baseline,
                      cell.delta, cell.delta_pct, " ".join(map(str, cell.run_ids))) for row, col, cell in _cells(p))
    cells = [{"row": dict(zip(p.row_fields, row, strict=True)), "column": dict(zip(p.col_fields, col, strict=True)),
              "mean": cell.mean, "std": cell.std, "n": cell.n, "run_ids": list(cell.run_ids),
              "values": list(cell.values), "is_baseline": cell.is_baseline,
              "baseline": None if cell.is_baseline else cell.baseline, "delta": cell.delta,
              "delta_pct": cell.delta_pct} for row, col, cell in _cells(p)]
    document = {"value": p.metric, "rows": p.row_fields, "columns": p.col_fields, "baseline": p.baseline,
                "cells": cells}
    return Table(_grid(p), header, csv_rows, document)
