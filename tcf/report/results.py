"""``tcf results``: one row per run, the `results` view's columns, in every format of tcf.report.render.

Human formats (table, md, latex) show metrics x100 with 2 decimals, as papers report HR/NDCG;
csv keeps the stored fractions, and json is the view's rows exactly (all columns, fractions)::

    rows = [run.row for run in load_runs(Store("experiments.db"), dataset="mind")]
    print(render(results_table(rows), "latex"))

Pivot tables (mean ± std over seeds, deltas against a baseline) live in tcf.report.pivot.
"""

from __future__ import annotations

from typing import Any

from tcf.report.render import Grid, GridColumn, Shown, Table, label, pct
from tcf.store.schema import is_metric_column, metric_key

LEADING_COLUMNS = ("run_id", "name", "status", "dataset", "architecture", "item_tower", "protocol", "best_epoch")


def result_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Leading run columns, then test metrics, then valid metrics; columns empty in every row dropped."""
    if not rows:
        return list(LEADING_COLUMNS)
    present = {key for row in rows for key, value in row.items() if value is not None}
    metrics = sorted((c for c in present if is_metric_column(c)), key=metric_key)
    return [c for c in LEADING_COLUMNS if c in present] + metrics


IDENTITY_COLUMNS = ("run_id", "name", "status")  # which run a row is: shown at any terminal width
MAIN_METRICS = ("test_hr@10", "test_ndcg@10")


def _drop(name: str) -> int:
    """Which columns a narrow terminal leaves out first (highest first; 0 never): validation and per-bucket
    metrics, then the best epoch, other cut-offs and the protocol, then what describes the run, then the
    main metrics; never the run's id, name and status."""
    if name in IDENTITY_COLUMNS:
        return 0
    if name in MAIN_METRICS:
        return 1
    if name in ("dataset", "architecture", "item_tower"):
        return 2
    if name == "protocol" or (name.startswith("test_") and not name.startswith("test_pop")):
        return 3
    return 4 if name == "best_epoch" else 5


def _column(name: str) -> GridColumn:
    if is_metric_column(name):  # metric headers stay whole; the run name folds only when nothing else can go
        return GridColumn((name,), numeric=True, fit="whole", drop=_drop(name))
    return GridColumn((name,), numeric=name in ("run_id", "best_epoch"), fit="fold" if name == "name" else "ellipsis",
                      drop=_drop(name))


def _shown(value: Any, column: str) -> Shown:
    if value is None:
        return Shown("", "")
    return label(pct(float(value)) if is_metric_column(column) else str(value))


def results_table(rows: list[dict[str, Any]]) -> Table:
    """`results` view rows as a Table: the columns of :func:`result_columns`; json keeps every column."""
    columns = result_columns(rows)
    grid = Grid(columns=tuple(_column(c) for c in columns),
                rows=tuple(tuple(_shown(row.get(c), c) for c in columns) for row in rows),
                caption="metrics x 100")
    return Table(grid, tuple(columns), tuple(tuple(row.get(c) for c in columns) for row in rows), json=rows)
