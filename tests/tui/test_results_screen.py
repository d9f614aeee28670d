"""The Results screen against a seeded experiments.db: best-checkpoint metrics, filter, sort, seed groups,
baseline deltas, config diff, export of the visible view, the braille scaling plot, refreshes, a snapshot."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable, Input

from tcf.store.db import Store
from tcf.store.sql import connection as sql
from tcf.tui.screens.results import DiffScreen, ExportDialog, PlotScreen, ResultsScreen

pytestmark = pytest.mark.anyio
SIZE = (120, 40)
FIXED_TIME = "2025-01-01T12:00:00+00:00"
OPT_125M, OPT_13B = 125_239_616, 1_315_758_080
# name, dataset, tower, encoder, unfreeze, seed, test ndcg@10, lm_params, tags, status
RUNS = [
    ("mind-sasrec-id", "mind", "id", None, 0, 1, 0.101, None, ("base",), "finished"),
    ("mind-sasrec-id", "mind", "id", None, 0, 2, 0.097, None, ("base",), "finished"),
    ("mind-sasrec-id", "mind", "id", None, 0, 3, 0.106, None, ("base",), "finished"),
    ("mind-sasrec-opt-125m-frozen", "mind", "text", "/models/opt-125m", 0, 1, 0.112, OPT_125M, ("scaling",),
     "finished"),
    ("mind-sasrec-opt-125m-frozen", "mind", "text", "/models/opt-125m", 0, 2, 0.109, OPT_125M, ("scaling",),
     "finished"),
    ("mind-sasrec-opt-1.3b-top2", "mind", "text", "/models/opt-1.3b", 2, 1, 0.133, OPT_13B, ("scaling", "opt"),
     "finished"),
    ("mind-sasrec-opt-1.3b-top2", "mind", "text", "/models/opt-1.3b", 2, 2, 0.129, OPT_13B, ("scaling", "opt"),
     "finished"),
    ("bili-sasrec-id", "bili", "id", None, 0, 1, 0.051, None, (), "finished"),
    ("mind-sasrec-opt-1.3b-top4", "mind", "text", "/models/opt-1.3b", 4, 1, None, OPT_13B, (), "failed"),
]
LAST_EPOCH_NDCG = 0.5  # every run's last validation epoch: never what the table shows


def config_of(dataset: str, tower: str, encoder: str | None, unfreeze: int, seed: int) -> dict:
    text = None if encoder is None else {"model": encoder, "unfreeze": unfreeze, "max_tokens": 30}
    return {"name": None, "seed": seed, "dataset": {"path": f"/data/{dataset}"},
            "model": {"architecture": "sasrec", "item_tower": tower, "embedding_dim": 64},
            "train": {"lr": 0.001, "epochs": 3}, "text_encoder": text}


def add_run(store: Store, i: int, spec: tuple) -> int:
    name, dataset, tower, encoder, unfreeze, seed, ndcg, lm, tags, status = spec
    run = store.create_run(name=name, config=config_of(dataset, tower, encoder, unfreeze, seed),
                           config_hash=f"h{i}", dataset=dataset, architecture="sasrec", item_tower=tower, lm_params=lm)
    for epoch, valid in enumerate((0.2, 0.3, LAST_EPOCH_NDCG), start=1):
        store.log_epoch(run, epoch, train_loss=1.0, seconds=1.0, metrics={"hr@10": valid, "ndcg@10": valid})
    if ndcg is not None:
        store.log_final(run, "valid", {"hr@10": 0.25, "ndcg@10": 0.25}, best_epoch=2, stopped_epoch=3)
        store.log_final(run, "test", {"hr@10": 2 * ndcg, "ndcg@10": ndcg}, best_epoch=2, stopped_epoch=3)
    store.set_status(run, status)
    with store.transaction():  # fixed times and host: nothing depends on when or where the test runs
        sql(store).execute("UPDATE runs SET created_at = ?, started_at = ?, finished_at = ?, host = 'gpu-node-1', "
                           "git_commit = NULL WHERE id = ?", [FIXED_TIME, FIXED_TIME, FIXED_TIME, run])
        if tags:
            sql(store).execute(
                "INSERT INTO jobs (kind, name, config_json, spec_json, state, tags_json, created_at, run_id) "
                "VALUES ('train', ?, '{}', '{}', 'finished', ?, ?, ?)", [name, json.dumps(list(tags)), FIXED_TIME, run])
    return run


@pytest.fixture
def results_db(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.db"
    store = Store(path)
    for i, spec in enumerate(RUNS):
        add_run(store, i, spec)
    store.close()
    return path


class ResultsApp(App[None]):
    """The smallest host of the screen: what it needs from an app is ``db_path`` and, as TcfApp gives every
    data screen, a tick every ``refresh_s`` seconds (0: never) that asks the current screen to ``reload()``."""

    def __init__(self, db_path: Path, refresh_s: float = 0) -> None:
        super().__init__()
        self.db_path, self.refresh_s = db_path, refresh_s

    def on_mount(self) -> None:
        self.push_screen(ResultsScreen())
        if self.refresh_s > 0:
            self.set_interval(self.refresh_s, self.tick)

    def tick(self) -> None:
        if isinstance(self.screen, ResultsScreen):
            self.screen.reload()


async def loaded(pilot, loads: int = 1) -> ResultsScreen:
    for _ in range(300):
        screen = pilot.app.screen
        if isinstance(screen, ResultsScreen) and screen.loads >= loads:
            await pilot.pause()
            return screen
        await pilot.pause(0.02)
    raise AssertionError("the Results screen never loaded")


def table_of(screen) -> DataTable:
    return screen.query_one(DataTable)


def cells(screen) -> list[list[str]]:
    table = table_of(screen)
    return [[str(getattr(c, "plain", c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


def headers(screen) -> list[str]:
    return [str(c.label.plain) for c in table_of(screen).columns.values()]


def column(screen, label: str) -> list[str]:
    i = [h.split(" ")[0] for h in headers(screen)].index(label)
    return [row[i] for row in cells(screen)]


def goto(screen, run_id: int | None = None, label: str | None = None) -> None:
    table = table_of(screen)
    row = table.cursor_row if run_id is None else next(
        i for i, r in enumerate(screen.view.rows) if run_id in r.run_ids)
    col = table.cursor_column if label is None else [h.split(" ")[0] for h in headers(screen)].index(label)
    table.move_cursor(row=row, column=col, animate=False)


def pct(x: float) -> str:
    return f"{x * 100:.2f}"


async def test_table_shows_each_runs_best_checkpoint_test_metrics(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        # the metrics right after the name, visible at 120 columns without scrolling
        assert headers(screen)[:10] == ["id", "name", "HR@10", "NDCG@10", "dataset", "arch", "tower", "encoder",
                                        "lm_params", "tags"]
        assert "seed" in headers(screen) and "text_encoder.unfreeze" in headers(screen)
        assert column(screen, "id") == [str(i) for i in range(1, 9)]  # finished runs only
        assert column(screen, "NDCG@10") == [pct(r[6]) for r in RUNS[:8]]
        assert column(screen, "HR@10") == [pct(2 * r[6]) for r in RUNS[:8]]
        assert pct(LAST_EPOCH_NDCG) not in {c for row in cells(screen) for c in row}
        assert column(screen, "encoder")[5] == "opt-1.3b" and column(screen, "lm_params")[5] == "1.3B"
        assert column(screen, "tags")[5] == "scaling opt" and column(screen, "encoder")[0] == "-"
        await pilot.press("a")  # all statuses: the failed run shows, without metrics
        assert column(screen, "id")[-1] == "9" and column(screen, "status")[-1] == "failed"
        assert column(screen, "NDCG@10")[-1] == "-"
        await pilot.press("c")  # every config key, not only the varying ones
        assert {"train.lr", "model.embedding_dim", "text_encoder.max_tokens"} <= set(headers(screen))


async def test_slash_filters_by_words_dataset_and_tag(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("slash", *"tag:scaling")
        assert screen.query_one("#results-filter", Input).has_focus
        assert column(screen, "id") == ["4", "5", "6", "7"]
        await pilot.press(*" opt-1.3b", "enter")
        assert column(screen, "id") == ["6", "7"] and table_of(screen).has_focus
        box = screen.query_one("#results-filter", Input)
        box.value = "dataset:bili"
        await pilot.pause()
        assert column(screen, "id") == ["8"]
        await pilot.press("escape")  # clears the filter
        assert len(column(screen, "id")) == 8 and box.value == ""


async def test_s_sorts_by_the_cursor_column_and_cycles(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        goto(screen, label="NDCG@10")
        await pilot.press("s")
        by_ndcg = sorted(range(8), key=lambda i: -RUNS[i][6])
        assert column(screen, "id") == [str(i + 1) for i in by_ndcg]
        assert "NDCG@10 ▼" in headers(screen)
        assert table_of(screen).cursor_column == headers(screen).index("NDCG@10 ▼")  # the cursor stays put
        await pilot.press("s")
        assert column(screen, "id") == [str(i + 1) for i in reversed(by_ndcg)] and "NDCG@10 ▲" in headers(screen)
        await pilot.press("s")
        assert column(screen, "id") == [str(i) for i in range(1, 9)] and "NDCG@10" in headers(screen)
        goto(screen, label="name")
        await pilot.press("s")
        assert column(screen, "id") == ["8", "1", "2", "3", "4", "5", "6", "7"]  # natural: opt-125m before opt-1.3b
        table = table_of(screen)  # a click on a header sorts by that column too
        index = headers(screen).index("lm_params")
        x = sum(c.get_render_width(table) for c in list(table.columns.values())[:index])
        await pilot.click("#results-table", offset=(x + 2, 0))
        assert "lm_params ▲" in headers(screen)
        assert column(screen, "id") == ["4", "5", "6", "7", "1", "2", "3", "8"]  # 125M, 1.3B, then ID runs


async def test_g_groups_seeds_into_mean_std_and_b_marks_a_baseline(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("g")
        assert column(screen, "id") == ["1,2,3", "4,5", "6,7", "8"]
        assert column(screen, "n") == ["3", "2", "2", "1"] and "seed" not in headers(screen)
        groups = [[0, 1, 2], [3, 4], [5, 6], [7]]
        expected = []
        for g in groups:
            xs = [RUNS[i][6] for i in g]
            expected.append(pct(statistics.fmean(xs)) + (f" ± {pct(statistics.stdev(xs))}" if len(xs) > 1 else ""))
        assert column(screen, "NDCG@10") == expected
        assert expected[0] == "10.13 ± 0.45"

        goto(screen, run_id=1)
        await pilot.press("b")
        base = statistics.fmean(RUNS[i][6] for i in groups[0])
        assert column(screen, "name")[0] == "mind-sasrec-id (baseline)"
        deltas = [f" ({(statistics.fmean(RUNS[i][6] for i in g) - base) * 100:+.2f})" for g in groups[1:]]
        assert column(screen, "NDCG@10") == [expected[0]] + [e + d for e, d in zip(expected[1:], deltas, strict=True)]
        assert column(screen, "NDCG@10")[3].endswith("(-5.03)")
        await pilot.press("g")  # ungrouped, the group's runs stay the baseline
        assert [n.endswith("(baseline)") for n in column(screen, "name")] == [True] * 3 + [False] * 5
        assert column(screen, "NDCG@10")[3] == f"{pct(0.112)} ({(0.112 - base) * 100:+.2f})"
        goto(screen, run_id=2)
        await pilot.press("b")  # b on a baseline row unmarks it
        assert column(screen, "NDCG@10") == [pct(r[6]) for r in RUNS[:8]]


async def test_m_then_d_opens_a_diff_of_the_two_configs(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("d")
        assert not isinstance(pilot.app.screen, DiffScreen)  # nothing marked yet
        goto(screen, run_id=4)
        await pilot.press("m")
        goto(screen, run_id=7)
        await pilot.press("d")
        diff = pilot.app.screen
        assert isinstance(diff, DiffScreen)
        table = diff.query_one(DataTable)
        rows = [[c.plain for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows == [["seed", "1", "2"], ["text_encoder.model", "/models/opt-125m", "/models/opt-1.3b"],
                        ["text_encoder.unfreeze", "0", "2"]]
        assert "3 of" in str(diff.query_one("#diff-title").content)
        await pilot.press("a")  # every key, the same ones highlighted
        keys = [table.get_row_at(i)[0].plain for i in range(table.row_count)]
        assert {"train.lr", "dataset.path", "seed"} <= set(keys) and len(keys) > 3
        await pilot.press("escape")
        assert pilot.app.screen is screen


async def test_e_exports_the_visible_view(results_db, tmp_path):
    app = ResultsApp(results_db)
    notes: list[str] = []
    original = app.notify

    def notify(message: str, *args, **kwargs) -> None:
        notes.append(str(message))
        original(message, *args, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        await pilot.press("g")
        goto(screen, run_id=1)
        await pilot.press("b")
        goto(screen, label="NDCG@10")
        await pilot.press("s")
        visible = cells(screen)

        await pilot.press("e")
        dialog = pilot.app.screen
        assert isinstance(dialog, ExportDialog)
        box = dialog.query_one("#export-path", Input)
        assert box.value == "results.tex"
        box.value = str(tmp_path / "table.tex")
        await pilot.click("#format-md")  # the extension follows the format
        assert box.value == str(tmp_path / "table.md")
        await pilot.press("enter")
        assert pilot.app.screen is screen
        assert notes[-1].startswith(f"wrote {tmp_path / 'table.md'} (Markdown")
        md = (tmp_path / "table.md").read_text().splitlines()
        assert md[0] == "| " + " | ".join(headers(screen)).replace(" ▼", "") + " |"
        assert md[2:2 + len(visible)] == ["| " + " | ".join(row) + " |" for row in visible]

        await pilot.press("e")
        box = pilot.app.screen.query_one("#export-path", Input)
        assert box.value == str(tmp_path / "table.md")  # the last name is remembered
        box.value = str(tmp_path / "table.csv")  # a typed extension picks its format
        await pilot.press("enter")
        rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
        assert [r["run_ids"] for r in rows] == [row[0].replace(",", " ") for row in visible]
        ndcg = [h.split(" ")[0] for h in headers(screen)].index("NDCG@10")  # the header carries the sort arrow
        assert [pct(float(r["test_ndcg@10"])) for r in rows] == [row[ndcg].split(" ")[0] for row in visible]

        await pilot.press("e")
        pilot.app.screen.query_one("#export-path", Input).value = str(tmp_path / "table.tex")
        await pilot.press("enter")
        tex = (tmp_path / "table.tex").read_text()
        assert "\\toprule" in tex and "10.13 $\\pm$ 0.45" in tex and tex.count(" \\\\\n") == len(visible) + 1


async def test_p_plots_the_metric_against_model_size(results_db):
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        goto(screen, label="HR@10")  # the cursor's metric is the one plotted
        await pilot.press("p")
        plot = pilot.app.screen
        assert isinstance(plot, PlotScreen) and plot.metric == "test_hr@10"
        text = plot.text.plain
        assert "HR@10 ×100 vs text encoder parameters" in text
        assert f"frozen: 125M {pct(2 * 0.1105)} ± {pct(statistics.stdev([0.224, 0.218]))}" in text
        assert "top-2 fine-tuned: 1.3B" in text and "ID sasrec (baseline)" in text
        assert any(0x2800 < ord(c) <= 0x28FF for c in text)
        await pilot.press("escape")
        goto(screen, label="name")
        await pilot.press("p")  # not on a metric: NDCG@10
        assert pilot.app.screen.metric == "test_ndcg@10"


async def test_the_plots_baseline_is_the_one_marked(results_db):
    """Reported (issue 22, 3): the plot's baseline ignored the run marked with b and mixed in other runs."""
    async with ResultsApp(results_db).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        goto(screen, run_id=1)
        await pilot.press("b")  # one seed of the ID runs, not their mean over three
        goto(screen, label="HR@10")
        await pilot.press("p")
        text = pilot.app.screen.text.plain
        assert f"baseline (run 1): {pct(2 * 0.101)}" in text and "ID sasrec (baseline)" not in text


async def test_refresh_keeps_cursor_sort_and_filter(results_db):
    async with ResultsApp(results_db, refresh_s=0.1).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        goto(screen, label="NDCG@10")
        await pilot.press("s", "slash", *"dataset:mind", "enter")
        goto(screen, run_id=5)
        before = screen.loads
        store = Store(results_db)
        add_run(store, 20, ("mind-sasrec-opt-13b-frozen", "mind", "text", "/models/opt-13b", 0, 1, 0.150,
                            12_853_770_240, (), "finished"))
        add_run(store, 21, ("bili-sasrec-id", "bili", "id", None, 0, 2, 0.9, None, (), "finished"))
        store.close()
        for _ in range(200):
            if len(screen.view.rows) == 8:
                break
            await pilot.pause(0.02)
        assert screen.loads > before
        assert column(screen, "id") == ["10", "6", "7", "4", "5", "3", "1", "2"]  # sorted, filtered, new run first
        assert screen.view.rows[table_of(screen).cursor_row].run_ids == (5,)  # the cursor followed its run
        assert headers(screen)[table_of(screen).cursor_column] == "NDCG@10 ▼"


def test_snapshot_grouped_and_sorted(results_db, snap_compare):
    async def run_before(pilot) -> None:
        screen = await loaded(pilot)
        await pilot.press("g")
        goto(screen, run_id=1, label="NDCG@10")
        await pilot.press("b", "s")
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(ResultsApp(results_db), terminal_size=SIZE, run_before=run_before)


async def test_a_missing_database_is_reported_not_created(tmp_path):
    path = tmp_path / "nothing" / "experiments.db"
    async with ResultsApp(path).run_test(size=SIZE) as pilot:
        screen = await loaded(pilot)
        assert f"no tcf result store at {path} (nor the folder {path.parent})" in str(
            screen.query_one("#results-status").content)
        assert table_of(screen).row_count == 0
        await pilot.press("g", "b", "m", "d", "p", "e")  # nothing to act on: no crash, no dialog
        assert pilot.app.screen is screen
    assert not path.parent.exists()


async def test_a_store_that_appears_later_replaces_the_error(tmp_path):
    path = tmp_path / "experiments.db"
    app = ResultsApp(path, refresh_s=0.1)
    errors: list[str] = []
    original = app.notify

    def notify(message: str, *args, **kwargs) -> None:
        if kwargs.get("severity") == "error":
            errors.append(str(message))
        original(message, *args, **kwargs)

    app.notify = notify  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, loads=3)  # three failed reads, one notification
        status = screen.query_one("#results-status")
        assert f"no tcf result store at {path}: check --db" in str(status.content)
        assert len(errors) == 1 and "no tcf result store at" in errors[0]
        store = Store(path)
        add_run(store, 0, RUNS[0])
        store.close()
        for _ in range(200):
            if screen.view is not None and screen.view.rows:
                break
            await pilot.pause(0.02)
        assert column(screen, "id") == ["1"]
        assert str(status.content).startswith("1 of 1 finished runs")  # the error is gone from the status line
