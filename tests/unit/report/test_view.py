"""tcf.report.view (the Results screen's table): best-checkpoint rows, seed groups (mean ± std), varying keys,
baselines, diff, exports, the plot of the shown runs; and the one loader of runs it shares with every table."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from tcf.config import Config
from tcf.jobs.queue import add_jobs
from tcf.report.render import format_for_path
from tcf.report.runs import load_runs, matches, parse_query, record
from tcf.report.view import (
    ABSENT,
    VIEW_FORMATS,
    ViewState,
    build_view,
    cell_text,
    config_diff,
    export,
    next_sort,
    plot_panels,
    varying_keys,
)
from tcf.store.db import Store
from tcf.store.sql import connection as sql
from tcf.tui.widgets.braille_plot import render_plot

OPT_125M, OPT_13B = 125_239_616, 1_315_758_080
# name, dataset, tower, encoder path, unfreeze, seed, lr, test ndcg@10, lm_params, tags, status
RUNS = [
    ("mind-sasrec-id", "mind", "id", None, 0, 1, 0.001, 0.101, None, ("base",), "finished"),
    ("mind-sasrec-id", "mind", "id", "/models/opt-125m", 0, 2, 0.001, 0.097, None, (), "finished"),  # stale section
    ("mind-sasrec-id", "mind", "id", None, 0, 3, 0.001, 0.106, None, (), "finished"),
    ("mind-sasrec-opt-125m-frozen", "mind", "text", "/models/opt-125m", 0, 1, 0.001, 0.112, OPT_125M,
     ("scaling",), "finished"),
    ("mind-sasrec-opt-125m-frozen", "mind", "text", "/mnt/b/opt-125m/", 0, 2, 0.001, 0.109, OPT_125M,
     ("scaling",), "finished"),
    ("mind-sasrec-opt-1.3b-top2", "mind", "text", "/models/opt-1.3b", 2, 1, 0.001, 0.133, OPT_13B,
     ("scaling", "opt"), "finished"),
    ("mind-sasrec-opt-1.3b-top2", "mind", "text", "/models/opt-1.3b", 2, 2, 0.001, 0.129, OPT_13B,
     ("scaling", "opt"), "finished"),
    ("mind-sasrec-opt-1.3b-frozen", "mind", "text", "/models/opt-1.3b", 0, 1, 0.0005, 0.121, OPT_13B,
     (), "finished"),
    ("bili_50k #1 & 50%", "bili_50k", "id", None, 0, 1, 0.001, 0.051, None, (), "finished"),
    ("mind-sasrec-opt-1.3b-top2", "mind", "text", "/models/opt-1.3b", 2, 3, 0.001, None, OPT_13B, (), "failed"),
]
NDCG = "test_ndcg@10"


def config_of(dataset: str, tower: str, encoder: str | None, unfreeze: int, seed: int, lr: float) -> dict:
    text = None if encoder is None else {"model": encoder, "unfreeze": unfreeze}
    return Config.model_validate({"seed": seed, "dataset": {"path": f"/data/{dataset}"},
                                  "model": {"architecture": "sasrec", "item_tower": tower},
                                  "train": {"lr": lr}, "text_encoder": text}).model_dump(mode="json")


def tag_run(store: Store, run_id: int, tags: tuple[str, ...]) -> None:
    """A finished queue job that produced the run (what `tcf queue add --tag` leaves behind)."""
    with store.transaction():
        sql(store).execute(
            "INSERT INTO jobs (kind, name, config_json, spec_json, state, tags_json, created_at, run_id) "
            "VALUES ('train', 'job', '{}', '{}', 'finished', ?, '2025-01-01T00:00:00+00:00', ?)",
            [json.dumps(list(tags)), run_id])


def seed_store(path: Path) -> Store:
    """RUNS, each with 3 epochs whose last validation ndcg (0.5) is not the best one's."""
    store = Store(path)
    for i, (name, dataset, tower, encoder, unfreeze, seed, lr, ndcg, lm, tags, status) in enumerate(RUNS):
        config = config_of(dataset, tower, encoder, unfreeze, seed, lr)
        if i == 0:  # the real path: a queued job's process creates the run, which links it to the job
            cfg = Config.model_validate(config)
            (job_id,) = add_jobs(store, [cfg], tags=list(tags))
            store.job_id = job_id
        run = store.create_run(name=name, config=config, config_hash=str(i), dataset=dataset, architecture="sasrec",
                               item_tower=tower, lm_params=lm)
        store.job_id = None
        if tags and i:
            tag_run(store, run, tags)
        for epoch, valid in enumerate((0.2, 0.3, 0.5), start=1):
            store.log_epoch(run, epoch, train_loss=1.0, seconds=1.0, metrics={"hr@10": valid, "ndcg@10": valid})
        if ndcg is not None:
            store.log_final(run, "valid", {"hr@10": 0.25, "ndcg@10": 0.25}, best_epoch=2, stopped_epoch=3)
            store.log_final(run, "test", {"hr@10": 2 * ndcg, "ndcg@10": ndcg}, best_epoch=2, stopped_epoch=3)
        store.set_status(run, status)
    return store


@pytest.fixture()
def runs(tmp_path):
    store = seed_store(tmp_path / "experiments.db")
    try:
        yield load_runs(store)
    finally:
        store.close()


def values(*indices: int) -> list[float]:
    return [RUNS[i][7] for i in indices]


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def row_of(view, run_id: int):
    return next(r for r in view.rows if run_id in r.run_ids)


def col(view, column_id: str):
    return next(c for c in view.columns if c.id == column_id)


def test_rows_show_the_best_checkpoints_test_metrics_not_the_last_epoch(runs):
    view = build_view(runs, ViewState())
    assert [r.run_ids for r in view.rows] == [(i,) for i in range(1, 10)]  # the failed run is hidden
    for row in view.rows:
        ndcg = RUNS[row.run_ids[0] - 1][7]
        assert row.metrics[NDCG].mean == pytest.approx(ndcg)
        assert cell_text(view, row, col(view, NDCG)) == f"{ndcg * 100:.2f}"
    assert [c.id for c in view.columns if c.kind == "metric"] == ["test_hr@10", NDCG]  # no valid_*, no epoch rows
    row = row_of(view, 6)
    assert [cell_text(view, row, col(view, c)) for c in ("encoder", "lm_params", "tags", "dataset")] == \
        ["opt-1.3b", "1.3B", "scaling opt", "mind"]
    assert cell_text(view, row_of(view, 1), col(view, "encoder")) == "-"
    assert cell_text(view, row_of(view, 1), col(view, "tags")) == "base"  # linked through the job's process
    everything = build_view(runs, ViewState(show_all_runs=True))
    assert len(everything.rows) == 10 and "status" in [c.id for c in everything.columns]
    assert cell_text(everything, row_of(everything, 10), col(everything, NDCG)) == "-"


def test_groups_fold_seeds_into_mean_and_sample_std(runs):
    view = build_view(runs, ViewState(grouped=True))
    assert [r.run_ids for r in view.rows] == [(1, 2, 3), (4, 5), (6, 7), (8,), (9,)]
    for ids in [(1, 2, 3), (4, 5), (6, 7)]:
        row = row_of(view, ids[0])
        m, s = mean_std(values(*(i - 1 for i in ids)))
        cell = row.metrics[NDCG]
        assert (cell.n, cell.mean, cell.std) == (len(ids), pytest.approx(m), pytest.approx(s))
        assert cell_text(view, row, col(view, NDCG)) == f"{m * 100:.2f} ± {s * 100:.2f}"
        assert cell_text(view, row, col(view, "n")) == str(len(ids))
        assert cell_text(view, row, col(view, "run_id")) == ",".join(map(str, ids))
    single = row_of(view, 8)
    assert single.metrics[NDCG].std is None and cell_text(view, single, col(view, NDCG)) == "12.10"
    # a failed seed of a group counts in n but has no metric: the cell says over how many runs it is
    everything = build_view(runs, ViewState(grouped=True, show_all_runs=True))
    top2 = row_of(everything, 10)
    assert top2.run_ids == (6, 7, 10) and cell_text(everything, top2, col(everything, "n")) == "3"
    m, s = mean_std(values(5, 6))
    assert cell_text(everything, top2, col(everything, NDCG)) == f"{m * 100:.2f} ± {s * 100:.2f} [n=2]"
    assert cell_text(everything, top2, col(everything, "status")) == "failed,finished"


def test_varying_keys_are_the_shown_runs_config_differences(runs):
    finished = [r for r in runs if r.status == "finished"]
    assert varying_keys(finished) == ["dataset.path", "model.item_tower", "name", "seed", "text_encoder.model",
                                      "text_encoder.unfreeze", "train.lr"]
    view = build_view(runs, ViewState())
    config = [c.id for c in view.columns if c.kind == "config"]
    assert config == ["seed", "text_encoder.unfreeze", "train.lr"]  # the rest already have a run column
    assert [c.id for c in build_view(runs, ViewState(grouped=True)).columns if c.kind == "config"] == \
        ["text_encoder.unfreeze", "train.lr"]
    assert [c.id for c in build_view(runs, ViewState(query="tag:opt")).columns if c.kind == "config"] == ["seed"]
    every = [c.id for c in build_view(runs, ViewState(show_all_config=True)).columns if c.kind == "config"]
    assert {"train.epochs", "model.embedding_dim", "text_encoder.max_tokens", "seed"} <= set(every)
    assert "text_encoder" not in every and "model.item_tower" not in every  # no section, no duplicate
    # text_encoder.max_tokens is 30 for text runs and absent for ID runs: not a difference worth a column
    assert "text_encoder.max_tokens" not in varying_keys(finished)


def test_baseline_deltas_against_a_group_and_a_run(runs):
    view = build_view(runs, ViewState(grouped=True, baseline=frozenset({2})))  # a run of the group marks it
    assert view.baseline_ids == (1, 2, 3)
    base_mean, _ = mean_std(values(0, 1, 2))
    base_row = row_of(view, 1)
    assert base_row.is_baseline and cell_text(view, base_row, col(view, "name")) == "mind-sasrec-id (baseline)"
    assert "(" not in cell_text(view, base_row, col(view, NDCG))
    m, s = mean_std(values(3, 4))
    d = (m - base_mean) * 100
    assert cell_text(view, row_of(view, 4), col(view, NDCG)) == f"{m * 100:.2f} ± {s * 100:.2f} ({d:+.2f})"
    bili = row_of(view, 9)
    assert cell_text(view, bili, col(view, NDCG)).endswith(f"({(values(8)[0] - base_mean) * 100:+.2f})")
    assert cell_text(view, bili, col(view, NDCG)).endswith(")") and "(-" in cell_text(view, bili, col(view, NDCG))

    # the baseline stays when the `/` filter hides it; ungrouped, the marked run alone is the baseline
    filtered = build_view(runs, ViewState(baseline=frozenset({1}), query="opt-1.3b"))
    assert 1 not in [i for r in filtered.rows for i in r.run_ids]
    run6 = row_of(filtered, 6)
    assert cell_text(filtered, run6, col(filtered, NDCG)) == f"13.30 ({(0.133 - 0.101) * 100:+.2f})"


def test_sort_cycles_and_keeps_missing_values_last(runs):
    view = build_view(runs, ViewState(show_all_runs=True))
    ndcg = col(view, NDCG)
    assert next_sort(None, ndcg) == (NDCG, True)  # metrics: best first
    assert next_sort((NDCG, True), ndcg) == (NDCG, False)
    assert next_sort((NDCG, False), ndcg) is None
    assert next_sort(None, col(view, "name")) == ("name", False)
    by_value = sorted(range(9), key=lambda i: -RUNS[i][7])
    desc = build_view(runs, ViewState(show_all_runs=True, sort=(NDCG, True)))
    assert [r.run_ids[0] for r in desc.rows] == [i + 1 for i in by_value] + [10]
    asc = build_view(runs, ViewState(show_all_runs=True, sort=(NDCG, False)))
    assert [r.run_ids[0] for r in asc.rows] == [i + 1 for i in reversed(by_value)] + [10]
    by_size = build_view(runs, ViewState(sort=("lm_params", False)))
    assert [r.run_ids[0] for r in by_size.rows] == [4, 5, 6, 7, 8, 1, 2, 3, 9]  # ties by id, ID runs last


def test_filter_words_and_fields(runs):
    def ids(query: str) -> list[int]:
        return [r.run_id for r in runs if r.status == "finished" and matches(r, parse_query(query))]

    assert ids("dataset:mind tag:scaling") == [4, 5, 6, 7]
    assert ids("DATASET:bili*") == [9]
    assert ids("dataset:min") == []  # a field matches whole values (or globs), not substrings
    assert ids("opt-1.3b") == [6, 7, 8]  # the encoder's base name
    assert ids("top2 tag:opt") == [6, 7]
    assert ids("tag:base tag:opt") == [1, 6, 7]  # several patterns of one field: any of them
    assert ids("nothing:here") == []  # an unknown field is a free word
    assert [r.run_ids for r in build_view(runs, ViewState(query="tower:id dataset:mind")).rows] == [(1,), (2,), (3,)]


def test_config_diff_lists_every_key_and_marks_differences(runs):
    by_id = {r.run_id: r for r in runs}
    diff = config_diff(by_id[4].raw_config, by_id[8].raw_config)
    differing = {d.key: (d.left, d.right) for d in diff if d.differs}
    assert differing == {"text_encoder.model": ("/models/opt-125m", "/models/opt-1.3b"),
                         "train.lr": ("0.001", "0.0005")}
    assert {d.key for d in diff} == set(_flat_keys(by_id[4].raw_config))
    id_vs_text = {d.key: (d.left, d.right) for d in config_diff(by_id[1].raw_config, by_id[6].raw_config)
                  if d.differs}
    assert id_vs_text["text_encoder"] == ("null", ABSENT)
    assert id_vs_text["text_encoder.unfreeze"] == (ABSENT, "2")
    assert id_vs_text["model.item_tower"] == ("id", "text")


def _flat_keys(config: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_csv_export_parses_back_to_the_view(runs):
    view = build_view(runs, ViewState(grouped=True, baseline=frozenset({1}), sort=(NDCG, True)))
    rows = list(csv.DictReader(io.StringIO(export(view, "csv"))))
    assert [r["run_ids"] for r in rows] == [" ".join(map(str, r.run_ids)) for r in view.rows]
    for line, row in zip(rows, view.rows, strict=True):
        cell = row.metrics[NDCG]
        assert float(line[NDCG]) == cell.mean  # full precision fractions
        assert line[f"{NDCG}_n"] == str(cell.n)
        assert (line[f"{NDCG}_std"] == "") == (cell.std is None)
        assert line["baseline"] == ("true" if row.is_baseline else "false")
        if not row.is_baseline:
            assert float(line[f"{NDCG}_delta"]) == pytest.approx(cell.mean - mean_std(values(0, 1, 2))[0])
    assert rows[0]["lm_params"] == str(OPT_13B) and rows[0]["encoder"] == "opt-1.3b"


def test_markdown_export_is_the_table_on_screen(runs):
    view = build_view(runs, ViewState(grouped=True, baseline=frozenset({1})))
    lines = export(view, "md").splitlines()
    assert lines[0] == "| " + " | ".join(c.label for c in view.columns) + " |"
    assert len([line for line in lines if line.startswith("|")]) == len(view.rows) + 2
    for line, row in zip(lines[2:2 + len(view.rows)], view.rows, strict=True):
        assert line == "| " + " | ".join(cell_text(view, row, c) for c in view.columns) + " |"
    assert "mean ± sample std" in lines[-1] and "baseline (run 1,2,3)" in lines[-1]


def test_latex_export_escapes_and_compiles(runs, tmp_path):
    view = build_view(runs, ViewState(grouped=True, baseline=frozenset({6})))
    tex = export(view, "latex")
    assert "\\toprule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex and "±" not in tex
    assert r"bili\_50k \#1 \& 50\%" in tex and r"lm\_params" in tex
    assert "($-$" in tex  # negative deltas as a real minus
    assert tex.count(" \\\\\n") == len(view.rows) + 1
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: the LaTeX text was checked, not compiled")
    doc = tmp_path / "table.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=5mm,landscape]{geometry}\n"
                   "\\begin{document}\n\\tiny\n" + tex + "\\end{document}\n")
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    assert (tmp_path / "table.pdf").stat().st_size > 0


def test_export_format_follows_the_file_name():
    def fmt(path: str, default: str = "latex") -> str:
        return format_for_path(path, default, VIEW_FORMATS)

    assert [fmt(p) for p in ("a.csv", "b.MD", "c.tex", "d.txt", "e.json")] == ["csv", "md", "latex", "latex", "latex"]
    assert fmt("d.txt", "csv") == "csv"
    assert format_for_path("d.txt", "md") == "table" and format_for_path("e.json", "md") == "json"  # `tcf results`
    with pytest.raises(ValueError):
        export(build_view([], ViewState()), "json")


def test_plot_series_come_from_the_shown_runs(runs):
    view = build_view(runs, ViewState())
    panels = plot_panels(view, NDCG)
    assert [p.dataset for p in panels] == ["mind"]  # bili_50k has no text runs
    series = {s.label: s.points for s in panels[0].series}
    assert set(series) == {"frozen", "top-2 fine-tuned"}
    frozen = {p.x: p for p in series["frozen"]}
    m, s = mean_std(values(3, 4))
    assert (frozen[OPT_125M].mean, frozen[OPT_125M].std, frozen[OPT_125M].n) == (pytest.approx(m), pytest.approx(s), 2)
    assert frozen[OPT_13B].mean == pytest.approx(0.121)
    text = render_plot(panels, NDCG, width=80, height=10).plain
    assert "frozen: 125M 11.05 ± 0.21  1.3B 12.10" in text
    assert "top-2 fine-tuned: 1.3B 13.10 ± 0.28" in text
    assert f"ID sasrec (baseline): {mean_std(values(0, 1, 2))[0] * 100:.2f}" in text
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in text)  # braille dots were drawn
    assert "125M" in text.split("└")[1] and "1.3B" in text.split("└")[1]  # x ticks on the axis
    only_id = build_view(runs, ViewState(query="tower:id"))
    assert render_plot(plot_panels(only_id, NDCG), NDCG).plain.startswith("Nothing to plot")


def test_record_reads_a_store_row_with_its_config_and_tags():
    row = {"run_id": 3, "name": "x", "status": "finished", "dataset": "mind", "architecture": "sasrec",
           "item_tower": "id", "lm_params": None, "test_hr@10": 0.5, "valid_hr@10": 0.9, "test_ndcg@10": None,
           "config": {"seed": 1, "text_encoder": {"model": "/m/opt", "unfreeze": 0}}, "tags": ("a",)}
    rec = record(row)
    assert rec.metrics == {"test_hr@10": 0.5, "valid_hr@10": 0.9} and rec.tags == ("a",)
    assert rec.encoder is None and rec.config["text_encoder.model"] is None  # an ID run never used the encoder
    assert rec.raw_config["text_encoder"]["model"] == "/m/opt"  # the diff shows what is stored
    assert "config" not in rec.row and "tags" not in rec.row and rec.row["test_hr@10"] == 0.5


def test_one_read_gives_runs_with_tags_and_filters(tmp_path):
    store = seed_store(tmp_path / "experiments.db")
    try:
        rows = store.runs()
        assert [r["run_id"] for r in rows] == list(range(1, 11))
        assert rows[0]["tags"] == ("base",) and rows[5]["tags"] == ("scaling", "opt") and rows[1]["tags"] == ()
        assert rows[0]["config"]["seed"] == 1 and "config_json" not in rows[0]
        finished = load_runs(store, finished=True)
        assert [r.run_id for r in finished] == list(range(1, 10))  # the failed run 10 is left out
        assert [r.run_id for r in load_runs(store, dataset="bili_50k")] == [9]
        assert [r.run_id for r in load_runs(store, name_glob="*-top2")] == [6, 7, 10]
        tag_run(store, 6, ("retagged",))  # a later job of the same run: its tags win
        assert store.runs(name_glob="*-top2", finished=True)[0]["tags"] == ("retagged",)
    finally:
        store.close()
