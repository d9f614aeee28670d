"""tcf.report.results: every format of tcf.report.render renders rows of the real `results` view."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from rich.console import Console

from tcf.cli import _rich_table
from tcf.errors import ConfigError
from tcf.report.render import TABLE_FORMATS, render
from tcf.report.results import result_columns, results_table
from tcf.report.runs import load_runs
from tcf.store.db import Store


def format_results(rows: list[dict], fmt: str) -> str:
    return render(results_table(rows), fmt)


@pytest.fixture()
def rows(tmp_path) -> list[dict]:
    store = Store(tmp_path / "experiments.db")
    a = store.create_run(name="mind_sasrec 5%", config={}, config_hash="h1", dataset="mind",
                         architecture="sasrec", item_tower="opt_125m")
    store.log_final(a, "valid", {"hr@10": 0.1111}, best_epoch=4, stopped_epoch=9)
    store.log_final(a, "test", {"hr@10": 0.1234, "ndcg@10": 0.0567}, best_epoch=4, stopped_epoch=9)
    store.set_status(a, "finished")
    b = store.create_run(name="[pop]|base", config={}, config_hash="h2", dataset="mind",
                         architecture="pop", item_tower="none")
    store.log_final(b, "test", {"hr@10": 0.05}, best_epoch=None, stopped_epoch=None)
    result = [run.row for run in load_runs(store)]
    store.close()
    return result


EXPECTED_COLUMNS = ["run_id", "name", "status", "dataset", "architecture", "item_tower", "protocol", "best_epoch",
                    "test_hr@10", "test_ndcg@10", "valid_hr@10"]


def test_columns_order_and_empty_columns_dropped(rows):
    assert result_columns(rows) == EXPECTED_COLUMNS  # stopped_epoch/created_at are not shown
    assert "best_epoch" not in result_columns(rows[1:])  # pop has no best epoch
    assert "valid_hr@10" not in result_columns(rows[1:])


def test_csv_parses_back_with_fractions(rows):
    text = format_results(rows, "csv")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == EXPECTED_COLUMNS
    assert parsed[0]["name"] == "mind_sasrec 5%"
    assert float(parsed[0]["test_hr@10"]) == 0.1234
    assert parsed[1]["valid_hr@10"] == "" and parsed[1]["name"] == "[pop]|base"


def test_json_is_only_the_array_of_view_rows(rows):
    parsed = json.loads(format_results(rows, "json"))
    assert parsed == rows
    assert parsed[0]["test_ndcg@10"] == 0.0567  # fractions, all view keys kept
    assert "created_at" in parsed[0] and "config" not in parsed[0] and "tags" not in parsed[0]


def test_latex_booktabs_escaped_percent(rows):
    text = format_results(rows, "latex")
    lines = text.splitlines()
    assert lines[0] == r"\begin{tabular}{rllllllrrrr}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"test\_hr@10" in lines[2]
    assert r"mind\_sasrec 5\%" in text and r"opt\_125m" in text
    assert "12.34 & 5.67 & 11.11" in text  # x100, two decimals
    assert re.search(r"(?<!\\)_", text) is None  # no unescaped underscore anywhere
    assert "\n2 & {}[pop]" in text  # a row that starts with [ is not read as an argument of the \\ above


def test_markdown_header_separator_and_pipes(rows):
    lines = format_results(rows, "md").splitlines()
    assert lines[0] == "| " + " | ".join(EXPECTED_COLUMNS) + " |"
    assert lines[1] == "|---:|---|---|---|---|---|---|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(rows)
    assert r"[pop]\|base" in lines[3] and "| 5.00 |" in lines[3]
    assert "| 12.34 | 5.67 | 11.11 |" in lines[2]


def test_rich_table_shows_percentages(rows):
    table = _rich_table(results_table(rows).grid)  # the CLI draws the plain grid
    assert [str(c.header) for c in table.columns] == EXPECTED_COLUMNS
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    assert "12.34" in text and "0.1234" not in text
    assert "mind_sasrec 5%" in text
    assert "[pop]|base" in text  # cells are text, never rich markup
    assert "metrics x 100" in text


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_every_format_handles_no_rows(fmt):
    if fmt == "table":
        assert results_table([]).grid.rows == () and _rich_table(results_table([]).grid).row_count == 0
        return
    out = format_results([], fmt)
    if fmt == "json":
        assert json.loads(out) == []
    elif fmt == "csv":
        assert next(csv.reader(io.StringIO(out))) == list(result_columns([]))
    else:
        assert ("run\\_id" if fmt == "latex" else "run_id") in out


def test_unknown_format_is_a_user_error_about_the_format(rows):
    with pytest.raises(ConfigError, match="must be one of md, csv, latex, json, got 'xlsx'") as e:
        format_results(rows, "xlsx")
    assert e.value.key == "format"


def test_one_metric_order_for_every_table():
    """tcf.store.db.metric_key orders view columns, tables, the TUI and messages alike: test before valid,
    then by name, then K as a number (hr@5 before hr@10, which a string sort gets wrong)."""
    from tcf.store.schema import metric_key

    columns = ["valid_hr@10", "test_ndcg@10", "test_hr@10", "test_mrr", "test_hr@5", "valid_hr@5"]
    assert sorted(columns, key=metric_key) == ["test_hr@5", "test_hr@10", "test_mrr", "test_ndcg@10",
                                               "valid_hr@5", "valid_hr@10"]
    assert sorted(["ndcg@10", "hr@20", "hr@5"], key=metric_key) == ["hr@5", "hr@20", "ndcg@10"]  # bare names too
    rows = [{"run_id": 1, "name": "a", "test_hr@20": 0.2, "test_hr@5": 0.1, "valid_hr@5": 0.3}]
    assert result_columns(rows) == ["run_id", "name", "test_hr@5", "test_hr@20", "valid_hr@5"]


def test_a_narrow_terminal_leaves_out_metrics_before_the_runs_identity(rows):
    from tcf.report.render import column_width, fit_grid, table_width

    grid = results_table(rows).grid
    for width, kept in [(1000, None), (70, ["run_id", "name", "status", "test_hr@10", "test_ndcg@10"]),
                        (20, ["run_id", "name", "status"])]:
        fitted, left_out = fit_grid(grid, width)
        labels = [c.label[0] for c in fitted.columns]
        assert labels == (kept or [c.label[0] for c in grid.columns])
        assert sorted(labels + left_out) == sorted(c.label[0] for c in grid.columns)
        widths = [column_width([*c.label, *(row[i].text for row in fitted.rows)])
                  for i, c in enumerate(fitted.columns)]
        # what fits is drawn whole; identity alone too wide for the terminal folds rather than go
        assert all(c.fit == "whole" for c in fitted.columns) == (table_width(widths) <= width)
