"""tcf.report.pivot and `tcf results --pivot`: seeds fold into mean ± std, baselines give deltas, every format."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from helpers import tcf

from tcf.errors import ConfigError, TcfError
from tcf.report.pivot import Pivot, build_pivot, pivot_from_store, pivot_table
from tcf.report.render import render
from tcf.report.runs import human_count, load_runs
from tcf.store.db import Store


def format_pivot(p: Pivot, fmt: str) -> str:
    return render(pivot_table(p), fmt)


def finished_runs(store: Store):
    return load_runs(store, finished=True)

# dataset, item tower, text encoder path (None: ID tower), unfreeze, seed, test ndcg@10, lm_params
RUNS = [
    ("mind", "id", None, 0, 1, 0.101, None),
    ("mind", "id", None, 0, 2, 0.097, None),
    ("mind", "id", None, 0, 3, 0.106, None),
    ("mind", "text", "/models/a/opt-125m", 0, 1, 0.112, 125_239_616),
    ("mind", "text", "/mnt/b/opt-125m/", 0, 2, 0.109, 125_239_616),  # same model, other folder
    ("mind", "text", "/models/opt-1.3b", 0, 1, 0.121, 1_315_758_080),
    ("mind", "text", "/models/opt-1.3b", 0, 2, 0.127, 1_315_758_080),
    ("mind", "text", "/models/opt-1.3b", 2, 1, 0.133, 1_315_758_080),
    ("mind", "text", "/models/opt-1.3b", 2, 2, 0.129, 1_315_758_080),
    ("mind", "text", "/models/opt-13b", 0, 1, 0.125, 12_853_770_240),
    ("bili_50k", "id", None, 0, 1, 0.051, None),
    ("bili_50k", "id", None, 0, 2, 0.055, None),
    ("bili_50k", "text", "/models/opt-125m", 0, 1, 0.062, 125_239_616),
    ("bili_50k", "text", "/models/opt-125m", 0, 2, 0.058, 125_239_616),
    ("bili_50k", "text", "/models/opt-1.3b", 0, 1, 0.071, 1_315_758_080),
]


def seed_store(db: Path, runs=RUNS) -> None:
    """Finished runs from ``runs`` plus a failed and a running run whose metrics must be ignored."""
    store = Store(db)
    for i, (dataset, tower, model, unfreeze, seed, ndcg, lm_params) in enumerate(runs):
        text = None if model is None else {"model": model, "unfreeze": unfreeze}
        if tower == "id" and i % 2 == 0:  # a config that sets text_encoder for all its runs, ID ones too
            text = {"model": "/models/opt-125m", "unfreeze": 0}
        config = {"seed": seed, "dataset": {"path": f"/data/{dataset}"},
                  "model": {"architecture": "sasrec", "item_tower": tower}, "train": {"lr": 0.001},
                  "text_encoder": text}
        run = store.create_run(name=f"{dataset}-{tower}-{i}", config=config, config_hash=str(i), dataset=dataset,
                               architecture="sasrec", item_tower=tower, lm_params=lm_params)
        store.log_final(run, "valid", {"hr@10": 2 * ndcg}, best_epoch=3, stopped_epoch=6)
        store.log_final(run, "test", {"hr@10": 2 * ndcg, "ndcg@10": ndcg}, best_epoch=3, stopped_epoch=6)
        store.set_status(run, "finished")
    for status in ("failed", "running"):
        config = {"seed": 9, "dataset": {"path": "/data/mind"}, "model": {"item_tower": "text"},
                  "text_encoder": {"model": "/models/opt-125m", "unfreeze": 0}}
        run = store.create_run(name=status, config=config, config_hash=status, dataset="mind",
                               architecture="sasrec", item_tower="text", lm_params=125_239_616)
        store.log_final(run, "test", {"ndcg@10": 0.9}, best_epoch=1, stopped_epoch=1)
        store.set_status(run, status)
    store.close()


def expected_values(dataset: str, model: str | None, unfreeze: int | None = None) -> list[float]:
    """The seeded ndcg values of one cell, found by base name as the pivot should."""
    def base(path):
        return None if path is None else Path(path.rstrip("/")).name
    return [r[5] for r in RUNS if r[0] == dataset and base(r[2]) == model and (unfreeze is None or r[3] == unfreeze)]


@pytest.fixture()
def db(tmp_path) -> Path:
    path = tmp_path / "experiments.db"
    seed_store(path)
    return path


def test_cells_fold_seeds_into_mean_std_n(db):
    store = Store(db)
    p = pivot_from_store(store, "item_tower,text_encoder.model,text_encoder.unfreeze:dataset")
    assert p.col_keys == [("bili_50k",), ("mind",)]
    assert p.row_keys == [("id", None, None), ("text", "opt-125m", 0), ("text", "opt-1.3b", 0),
                          ("text", "opt-1.3b", 2), ("text", "opt-13b", 0)]  # sizes in order, paths as base names
    # ID runs never use the encoder: text_encoder.* is "-" even where their config has the section
    checked = 0
    for (row, (dataset,)), cell in p.cells.items():
        values = expected_values(dataset, row[1], row[2])
        assert cell.n == len(values)  # the failed and running runs (0.9) are left out
        assert math.isclose(cell.mean, sum(values) / len(values))
        if len(values) > 1:
            assert math.isclose(cell.std, statistics.stdev(values))
        else:
            assert cell.std is None
        checked += 1
    assert checked == 8  # mind: 5 rows; bili_50k: no fine-tuned and no 13b run
    assert (("text", "opt-1.3b", 2), ("bili_50k",)) not in p.cells
    two_folders = p.cells[(("text", "opt-125m", 0), ("mind",))]
    assert two_folders.n == 2 and sorted(two_folders.values) == [0.109, 0.112]


def test_baseline_is_the_column_mean_of_matching_runs(db):
    p = pivot_from_store(Store(db), "item_tower,text_encoder.model:dataset", baseline="item_tower=id")
    assert p.split_by == ["text_encoder.unfreeze"]  # frozen and fine-tuned opt-1.3b never share a cell
    for dataset in ("mind", "bili_50k"):
        ids = expected_values(dataset, None)
        assert math.isclose(p.column_baselines[(dataset,)], sum(ids) / len(ids))
        base_cell = p.cells[(("id", None, None), (dataset,))]
        assert base_cell.is_baseline and base_cell.delta is None
        cell = p.cells[(("text", "opt-125m", 0), (dataset,))]
        values = expected_values(dataset, "opt-125m")
        want = sum(values) / len(values) - sum(ids) / len(ids)
        assert math.isclose(cell.delta, want)
        assert math.isclose(cell.delta_pct, 100 * want / (sum(ids) / len(ids)))
    md = format_pivot(p, "md")
    mind_ids = expected_values("mind", None)
    mind_13b = expected_values("mind", "opt-13b")[0]
    delta = (mind_13b - statistics.fmean(mind_ids)) * 100
    assert f"| text | opt-13b | 0 | - | {mind_13b * 100:.2f} ({delta:+.2f}) |" in md
    assert "rows also split by text_encoder.unfreeze" in md


def test_baseline_matches_paths_by_base_name_or_full_path(db):
    runs = finished_runs(Store(db))
    by_name = build_pivot(runs, ["text_encoder.model"], ["dataset"], baseline="text_encoder.model=opt-125m")
    by_path = build_pivot(runs, ["text_encoder.model"], ["dataset"], baseline="text_encoder.model=/models/opt-125m")
    mind_125m = expected_values("mind", "opt-125m")
    assert math.isclose(by_name.column_baselines[("mind",)], statistics.fmean(mind_125m))
    assert by_path.column_baselines[("bili_50k",)] == by_name.column_baselines[("bili_50k",)]
    assert ("mind",) not in by_path.column_baselines  # no mind run lives in /models/opt-125m itself
    with pytest.raises(TcfError, match="matches no finished run"):
        build_pivot(runs, ["item_tower"], ["dataset"], baseline="item_tower=bert")


def test_config_keys_and_view_columns_as_fields(db):
    p = pivot_from_store(Store(db), "lm_params:seed", metric="valid_hr@10", dataset="mind")
    assert p.split_by == ["text_encoder.unfreeze"]  # never the mean of frozen and fine-tuned 1.3B
    assert p.row_keys == [(125_239_616, 0), (1_315_758_080, 0), (1_315_758_080, 2), (12_853_770_240, 0),
                          (None, None)]
    assert p.col_keys == [(1,), (2,), (3,)]
    frozen, tuned = p.cells[((1_315_758_080, 0), (2,))], p.cells[((1_315_758_080, 2), (2,))]
    assert (frozen.values, tuned.values) == ((2 * 0.127,), (2 * 0.129,))
    assert "1.3B" in format_pivot(p, "md") and human_count(12_853_770_240) == "13B"


@pytest.mark.parametrize(("spec", "kwargs", "param", "message"), [
    ("item_tower", {}, "pivot", "must be ROWS:COLS"),
    ("item_tower:dataset:seed", {}, "pivot", "must be ROWS:COLS"),
    ("item_tower,:dataset", {}, "pivot", "empty field"),
    ("item_tower:item_tower", {}, "pivot", "'item_tower' is both a row and a column"),
    ("item_tower:text_encoder.modle", {}, "pivot", "unknown field 'text_encoder.modle'"),
    ("item_tower:dataset", {"metric": "test_ndcg@20"}, "metric", "unknown metric 'test_ndcg@20'; available: "
                                                                  "test_hr@10, test_ndcg@10, valid_hr@10"),
    ("item_tower:dataset", {"baseline": "tower=id"}, "baseline", "unknown field 'tower'"),
    ("item_tower:dataset", {"baseline": "item_tower"}, "baseline", "must be key=value"),
    ("item_tower:dataset", {"baseline": "item_tower=bert"}, "baseline", "matches no finished run"),
])
def test_bad_options_name_the_parameter_not_a_flag(db, spec, kwargs, param, message):
    with pytest.raises(ConfigError) as e:
        pivot_from_store(Store(db), spec, **kwargs)
    assert e.value.key == param and message in e.value.message
    assert "--" not in str(e.value)  # the engine knows parameters; the CLI names the flag that was typed


# -- through the CLI --------------------------------------------------------------------------

PIVOT = ["results", "--pivot", "item_tower,text_encoder.model,text_encoder.unfreeze:dataset",
         "--baseline", "item_tower=id"]


def test_cli_csv_and_json_keep_fractions(db, tmp_path):
    r = tcf(*PIVOT, "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0])[:4] == ["item_tower", "text_encoder.model", "text_encoder.unfreeze", "dataset"]
    cell = next(row for row in rows if row["text_encoder.model"] == "opt-125m" and row["dataset"] == "mind")
    values, ids = expected_values("mind", "opt-125m"), expected_values("mind", None)
    assert float(cell["mean"]) == statistics.fmean(values) and int(cell["n"]) == 2
    assert math.isclose(float(cell["std"]), statistics.stdev(values))
    assert math.isclose(float(cell["delta"]), statistics.fmean(values) - statistics.fmean(ids))
    base = next(row for row in rows if row["item_tower"] == "id" and row["dataset"] == "mind")
    assert base["delta"] == "" and base["text_encoder.model"] == ""

    r = tcf(*PIVOT, "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["rows"] == ["item_tower", "text_encoder.model", "text_encoder.unfreeze"]
    single = next(c for c in data["cells"] if c["row"]["text_encoder.model"] == "opt-13b")
    assert single["n"] == 1 and single["std"] is None and single["values"] == [0.125]


def test_cli_md_and_output_file(db, tmp_path):
    r = tcf(*PIVOT, "--format", "md", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    values = expected_values("bili_50k", "opt-125m")
    assert f"{statistics.fmean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}" in r.stdout
    out = tmp_path / "table.md"
    written = tcf(*PIVOT, "--format", "md", "--output", str(out), cwd=tmp_path)
    assert written.returncode == 0 and written.stdout == ""
    assert out.read_text() == r.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize(("args", "message"), [
    (["--pivot", "item_tower:datasett"], "error: --pivot: unknown field 'datasett'"),
    (["--pivot", "item_tower"], "error: --pivot: must be ROWS:COLS"),
    (["--pivot", "item_tower:dataset", "--value", "ndcg"],
     "error: --value: unknown metric 'ndcg'; available: test_hr@10, test_ndcg@10, valid_hr@10"),
    (["--pivot", "item_tower:dataset", "--metric", "ndcg"],
     "error: --metric: unknown metric 'ndcg'; available: test_hr@10, test_ndcg@10, valid_hr@10"),
    (["--pivot", "item_tower:dataset", "--metric", "test_hr@10", "--value", "test_hr@10"],
     "error: --value is the old name of --metric: give one of them"),
    (["--pivot", "item_tower:dataset", "--baseline", "tower=id"], "error: --baseline: unknown field 'tower'"),
    (["--baseline", "item_tower=id"], "error: --baseline only applies with --pivot"),
    (["--metric", "test_hr@10"], "error: --metric only applies with --pivot"),
    (["--pivot", "item_tower:dataset", "--dataset", "nope"], "error: "),
])
def test_cli_bad_options_exit_2_with_one_error_line(db, tmp_path, args, message):
    r = tcf("results", *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(message)


def test_cli_metric_and_its_old_name_value_give_the_same_pivot(db, tmp_path):
    """--metric is the flag of `tcf results --pivot` and `tcf plot`; --value, its old name, still works."""
    spec = ["results", "--pivot", "item_tower:dataset", "--format", "json"]
    by_metric = tcf(*spec, "--metric", "test_hr@10", cwd=tmp_path)
    by_value = tcf(*spec, "--value", "test_hr@10", cwd=tmp_path)
    assert by_metric.returncode == 0 and by_value.returncode == 0, by_metric.stderr + by_value.stderr
    assert by_metric.stdout == by_value.stdout
    assert json.loads(by_metric.stdout)["value"] == "test_hr@10"
    default = json.loads(tcf(*spec, cwd=tmp_path).stdout)
    assert default["value"] == "test_ndcg@10" and default != json.loads(by_metric.stdout)
    assert "--value" not in tcf("results", "--help", cwd=tmp_path).stdout  # hidden: one name per concept


def test_cli_output_extension_picks_the_format(db, tmp_path):
    r = tcf(*PIVOT, "--output", "table.tex", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    latex = tcf(*PIVOT, "--format", "latex", cwd=tmp_path).stdout
    assert (tmp_path / "table.tex").read_text() == latex and r"\toprule" in latex
    assert tcf(*PIVOT, "--format", "md", "--output", "t.tex", cwd=tmp_path).returncode == 0
    assert (tmp_path / "t.tex").read_text().startswith("| item_tower")  # --format wins over the extension


def test_cli_latex(db, tmp_path):
    table = tmp_path / "table.tex"
    r = tcf(*PIVOT, "--format", "latex", "--dataset", "mind", "--output", str(table), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tex = table.read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"text\_encoder.model" in tex and r"$\pm$" in tex and "bili" not in tex  # --dataset still filters
    ids = expected_values("mind", None)
    assert f"{statistics.fmean(ids) * 100:.2f} $\\pm$ {statistics.stdev(ids) * 100:.2f}" in tex


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles_with_pdflatex(db, tmp_path):
    runs = finished_runs(Store(db))
    tables = {  # ± with positive deltas; negative deltas ($-$); stacked column headers with \multicolumn
        "table": build_pivot(runs, ["item_tower", "text_encoder.model", "text_encoder.unfreeze"], ["dataset"],
                             baseline="item_tower=id"),
        "negative": build_pivot(runs, ["text_encoder.model"], ["dataset"], baseline="text_encoder.model=opt-13b"),
        "stacked": build_pivot(runs, ["text_encoder.model", "name"], ["dataset", "text_encoder.unfreeze"]),
    }
    for name, pivot in tables.items():
        (tmp_path / f"{name}.tex").write_text(format_pivot(pivot, "latex"))
    assert "($-$" in (tmp_path / "negative.tex").read_text()
    assert r"\multicolumn" in (tmp_path / "stacked.tex").read_text()
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + "\n\n".join(f"\\input{{{name}.tex}}" for name in tables) + "\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").read_bytes()[:5] == b"%PDF-"


def _cold_runs(db: Path) -> None:
    """Cold-protocol runs on mind next to the seeded full ones: two text runs and an ID run whose metrics are
    NULL (not applicable)."""
    store = Store(db)
    for seed, tower, ndcg in ((1, "text", 0.031), (2, "text", 0.035), (1, "id", None)):
        config = {"seed": seed, "dataset": {"path": "/data/mind"}, "eval": {"protocol": "cold"},
                  "model": {"architecture": "sasrec", "item_tower": tower},
                  "text_encoder": {"model": "/models/opt-125m", "unfreeze": 0} if tower == "text" else None}
        run = store.create_run(name=f"cold-{tower}-{seed}", config=config, config_hash=f"c{seed}{tower}",
                               dataset="mind", architecture="sasrec", item_tower=tower, protocol="cold",
                               lm_params=125_239_616 if tower == "text" else None)
        store.log_final(run, "test", {"hr@10": None if ndcg is None else 2 * ndcg, "ndcg@10": ndcg},
                        best_epoch=2, stopped_epoch=4)
        store.set_status(run, "finished")
    store.close()


def test_runs_of_two_protocols_never_share_a_cell(tmp_path):
    db = tmp_path / "e.db"
    seed_store(db)
    _cold_runs(db)
    p = pivot_from_store(Store(db, readonly=True), "item_tower,text_encoder.model:dataset", baseline="item_tower=id")
    assert p.col_fields == ["protocol", "dataset"]  # added, since the runs come from two protocols
    assert set(p.col_keys) == {("cold", "mind"), ("full", "mind"), ("full", "bili_50k")}
    cold = p.cells[(("text", "opt-125m", 0), ("cold", "mind"))]
    assert cold.values == (0.031, 0.035)  # not folded into the full runs of the same model
    assert p.cells[(("text", "opt-125m", 0), ("full", "mind"))].values == tuple(expected_values("mind", "opt-125m"))
    assert (("id", None, None), ("cold", "mind")) not in p.cells  # the ID run's cold metric does not apply
    assert ("cold", "mind") not in p.column_baselines  # so the cold column has no baseline to compare with
    assert p.column_baselines[("full", "mind")] == pytest.approx(statistics.fmean(expected_values("mind", None)))
    table = format_pivot(p, "md")
    assert "cold / mind" in table and "full / mind" in table
    header = table.splitlines()[0].strip("| ").split(" | ")
    row = next(line for line in table.splitlines() if line.startswith("| id |")).strip("| ").split(" | ")
    assert row[header.index("cold / mind")] == "-"  # the ID row's cold cell shows as missing
    assert row[header.index("full / mind")].startswith(f"{100 * statistics.fmean(expected_values('mind', None)):.2f}")

    named = pivot_from_store(Store(db, readonly=True), "protocol,item_tower:dataset")
    assert named.col_fields == ["dataset"] and ("cold", "text", "opt-125m", 0) in named.row_keys  # the user placed it
    assert named.split_by == ["text_encoder.model", "text_encoder.unfreeze"]  # never the mean of two encoders
    only_full = pivot_from_store(Store(db, readonly=True), "item_tower:dataset", metric="test_ndcg@10",
                                 name_glob="mind-*")
    assert only_full.col_fields == ["dataset"]  # one protocol: nothing added


def _models_store(db: Path) -> dict[str, list[float]]:
    """pop, ID-SASRec, ID-DSSM (another batch size and lr) and text SASRec with two poolings, in one dataset."""
    variants = {  # name -> (architecture, item tower, config changes, ndcg per seed)
        "pop": ("pop", "id", {}, [0.04, 0.04]),
        "sasrec": ("sasrec", "id", {}, [0.50, 0.52, 0.51]),
        "dssm": ("dssm", "id", {"train": {"lr": 0.003, "batch_size": 1024}}, [0.07, 0.08]),
        "text-mean": ("sasrec", "text", {"text_encoder": {"model": "/m/opt", "pooling": "mean"}}, [0.31, 0.33]),
        "text-first": ("sasrec", "text", {"text_encoder": {"model": "/m/opt", "pooling": "first"}}, [0.21]),
    }
    store = Store(db)
    for name, (arch, tower, changes, values) in variants.items():
        for seed, ndcg in enumerate(values, start=1):
            config = {"seed": seed, "name": f"{name}-{seed}", "dataset": {"path": "/data/demo"},
                      "model": {"architecture": arch, "item_tower": tower},
                      "train": {"lr": 0.001, "batch_size": 128, "device": "cpu" if seed % 2 else "auto"},
                      "text_encoder": None, **changes}
            run = store.create_run(name=f"{name}-{seed}", config=config, config_hash=f"{name}{seed}", dataset="demo",
                                   architecture=arch, item_tower=tower, lm_params=1000 if tower == "text" else None)
            store.log_final(run, "test", {"hr@10": 2 * ndcg, "ndcg@10": ndcg}, best_epoch=1, stopped_epoch=2)
            store.set_status(run, "finished")
    store.close()
    return {name: v[3] for name, v in variants.items()}


def test_runs_that_differ_in_more_than_their_seed_are_never_averaged(tmp_path):
    """Reported (issue 22, 3): an `id` row averaged pop, SASRec and DSSM as if they were seeds. Whatever else varies
    in a cell joins the row; the seed (and how a run was computed: train.device) alone is folded."""
    from tcf.report.runs import differing_keys

    values = _models_store(tmp_path / "e.db")
    p = pivot_from_store(Store(tmp_path / "e.db"), "item_tower:dataset")
    assert p.split_by == ["architecture", "text_encoder.pooling"]
    by_row = {row: cell for (row, _), cell in p.cells.items()}
    assert {row: list(cell.values) for row, cell in by_row.items()} == {
        ("id", "dssm", None): values["dssm"], ("id", "pop", None): values["pop"],
        ("id", "sasrec", None): values["sasrec"], ("text", "sasrec", "first"): values["text-first"],
        ("text", "sasrec", "mean"): values["text-mean"]}
    runs = {r.run_id: r for r in finished_runs(Store(tmp_path / "e.db"))}
    assert all(differing_keys([runs[i] for i in cell.run_ids]) == [] for cell in p.cells.values())
    assert "rows also split by architecture, text_encoder.pooling" in format_pivot(p, "md")

    with pytest.raises(ConfigError) as e:  # a baseline of three models is refused, naming what they differ in
        pivot_from_store(Store(tmp_path / "e.db"), "item_tower:dataset", baseline="item_tower=id")
    assert e.value.key == "baseline" and e.value.message.startswith(
        "'item_tower=id' picks runs that differ in model.architecture, train.batch_size, train.lr (runs 1, 2, 3, 4, "
        "5, 6, 7)")
    assert e.value.message.endswith("narrow it, e.g. item_tower=id,architecture=pop")
    p = pivot_from_store(Store(tmp_path / "e.db"), "architecture,item_tower:dataset",
                         baseline="architecture=sasrec,item_tower=id")
    base = statistics.fmean(values["sasrec"])
    assert p.column_baselines[("demo",)] == pytest.approx(base)
    assert p.cells[(("sasrec", "text", "mean"), ("demo",))].delta == pytest.approx(
        statistics.fmean(values["text-mean"]) - base)
