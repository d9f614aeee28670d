"""tcf.report.plot and `tcf plot`: the scaling figure shows every seeded series, point and baseline."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from helpers import tcf

from tcf.errors import ConfigError, TcfError
from tcf.report.plot import DPI, FONT_PT, PANEL_INCHES, dodge, draw_scaling, plot_scaling
from tcf.store.db import Store

# dataset, architecture, item tower, unfreeze, lm_params, seed, test ndcg@10
RUNS = [
    ("mind", "sasrec", "id", 0, None, 1, 0.100),
    ("mind", "sasrec", "id", 0, None, 2, 0.104),
    ("mind", "pop", "id", 0, None, 1, 0.020),  # no text pop run: not a baseline line
    ("mind", "sasrec", "text", 0, 125_000_000, 1, 0.110),
    ("mind", "sasrec", "text", 0, 125_000_000, 2, 0.114),
    ("mind", "sasrec", "text", 0, 1_300_000_000, 1, 0.121),
    ("mind", "sasrec", "text", 0, 1_300_000_000, 2, 0.125),
    ("mind", "sasrec", "text", 0, 6_700_000_000, 1, 0.131),
    ("mind", "sasrec", "text", 2, 125_000_000, 1, 0.118),
    ("mind", "sasrec", "text", 2, 1_300_000_000, 1, 0.135),
    ("hm", "sasrec", "id", 0, None, 1, 0.060),
    ("hm", "sasrec", "text", 0, 125_000_000, 1, 0.070),
    ("hm", "sasrec", "text", 0, 1_300_000_000, 1, 0.075),
    ("ml", "sasrec", "id", 0, None, 1, 0.300),  # only ID runs: no panel
]


def seed(db: Path, runs=RUNS) -> None:
    store = Store(db)
    for i, (dataset, arch, tower, unfreeze, lm_params, seed_, ndcg) in enumerate(runs):
        text = None if lm_params is None else {"model": f"/models/lm-{lm_params}", "unfreeze": unfreeze}
        config = {"seed": seed_, "dataset": {"path": f"/data/{dataset}"},
                  "model": {"architecture": arch, "item_tower": tower}, "text_encoder": text}
        run = store.create_run(name=f"run-{i}", config=config, config_hash=str(i), dataset=dataset,
                               architecture=arch, item_tower=tower, lm_params=lm_params)
        store.log_final(run, "test", {"ndcg@10": ndcg, "hr@10": 2 * ndcg}, best_epoch=1, stopped_epoch=2)
        store.set_status(run, "finished")
    store.close()


def expected_lines(dataset: str) -> dict[int, dict[int, list[float]]]:
    """unfreeze -> lm_params -> seeded values, straight from RUNS."""
    lines: dict[int, dict[int, list[float]]] = {}
    for d, _, _, unfreeze, lm_params, _, ndcg in RUNS:
        if d == dataset and lm_params is not None:
            lines.setdefault(unfreeze, {}).setdefault(lm_params, []).append(ndcg)
    return lines


def test_png_has_every_series_point_and_baseline(tmp_path):
    import matplotlib.image

    db, png = tmp_path / "experiments.db", tmp_path / "scaling.png"
    seed(db)
    panels = plot_scaling(Store(db), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == (round(2 * PANEL_INCHES[0] * DPI), round(PANEL_INCHES[1] * DPI))  # 2 panels
    assert [p.dataset for p in panels] == ["hm", "mind"]  # ml has no text run

    fig = draw_scaling(panels)
    for panel, ax in zip(panels, fig.axes, strict=True):
        lines = expected_lines(panel.dataset)
        assert ax.get_title() == panel.dataset and ax.get_xscale() == "log"
        assert [s.label for s in panel.series] == [("frozen" if u == 0 else f"top-{u} fine-tuned") for u in lines]
        drawn = [c.lines[0] for c in ax.containers]  # one errorbar line per series
        assert len(drawn) == len(lines)
        for i, (line, series, (_, by_size)) in enumerate(zip(drawn, panel.series, sorted(lines.items()),
                                                             strict=True)):
            # frozen and fine-tuned points of one size are drawn side by side, not on top of each other
            shift = dodge(len(panel.series), i)
            assert [x / shift for x in line.get_xdata()] == pytest.approx(sorted(by_size))
            assert (shift != 1) == (len(panel.series) > 1)
            want = [statistics.fmean(by_size[x]) for x in sorted(by_size)]
            assert all(math.isclose(y, 100 * w) for y, w in zip(line.get_ydata(), want, strict=True))
            assert [p.n for p in series.points] == [len(by_size[x]) for x in sorted(by_size)]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        ids = [r[6] for r in RUNS if r[0] == panel.dataset and r[1] == "sasrec" and r[2] == "id"]
        assert len(dashed) == 1 and math.isclose(dashed[0].get_ydata()[0], 100 * statistics.fmean(ids))
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[:2] == ["125M", "1.3B"]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["125M", "1.3B", "6.7B"]
    assert PANEL_INCHES[0] <= 3.5 and fig.axes[0].xaxis.label.get_fontsize() == FONT_PT <= 9  # a paper's column
    mind = panels[1]
    assert mind.series[0].points[0].std == pytest.approx(statistics.stdev([0.110, 0.114]))


def test_without_text_runs_is_a_clear_error(tmp_path):
    db = tmp_path / "experiments.db"
    seed(db, [r for r in RUNS if r[4] is None])
    with pytest.raises(TcfError, match="no finished run with lm_params"):
        plot_scaling(Store(db), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_extension_picks_the_figure_format_and_errors_name_parameters(tmp_path):
    db = tmp_path / "experiments.db"
    seed(db)
    plot_scaling(Store(db), tmp_path / "scaling.svg", dataset="hm")
    assert b"<svg" in (tmp_path / "scaling.svg").read_bytes()[:2000]
    plot_scaling(Store(db), tmp_path / "scaling.pdf", dataset="hm")
    assert (tmp_path / "scaling.pdf").read_bytes()[:5] == b"%PDF-"
    plot_scaling(Store(db), tmp_path / "scaling", dataset="hm")  # no extension: PNG, as before
    assert (tmp_path / "scaling").read_bytes()[:4] == b"\x89PNG"
    for kwargs, param in (({"out": tmp_path / "x.jpg"}, "out"), ({"series": ["tower"]}, "series"),
                          ({"metric": "test_mrr"}, "metric")):
        with pytest.raises(ConfigError) as e:
            plot_scaling(Store(db), **{"out": tmp_path / "x.png", **kwargs})
        assert e.value.key == param and "--" not in str(e.value)
    assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "x.png").exists()


def test_cli_plot(tmp_path):
    """Reported (issue 22, 6): the format is the one the suffix names, magic bytes and all."""
    db = tmp_path / "experiments.db"
    seed(db)
    for name, magic in (("f.pdf", b"%PDF-"), ("f.svg", b"<?xml"), ("f.png", b"\x89PNG\r\n\x1a\n"), ("F.PDF", b"%PDF-")):
        r = tcf("plot", "--out", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / name).read_bytes().startswith(magic)
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:1000]
    r = tcf("plot", "--out", "fig.png", "--dataset", "mind", "--series", "text_encoder.unfreeze", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and "1 dataset(s), 5 point(s)" in r.stderr
    r = tcf("plot", "--out", "fig2.png", "--metric", "test_mrr", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --metric: unknown metric 'test_mrr'; available: test_hr@10, test_ndcg@10"]
    assert not (tmp_path / "fig2.png").exists()
    r = tcf("plot", "--out", "fig.jpg", "--series", "tower", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --out: unknown figure format '.jpg'")
    r = tcf("plot", "--out", "fig.png", "--series", "tower", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --series: unknown field 'tower'")


def test_the_figure_follows_a_link_and_never_replaces_a_folder(tmp_path):
    """Sibling of `--output` (issue 17, item 5): `tcf plot --out` goes through the same writer."""
    db = tmp_path / "e.db"
    seed(db)
    target = tmp_path / "figures" / "scaling.png"
    target.parent.mkdir()
    link = tmp_path / "latest.png"
    link.symlink_to(target)
    plot_scaling(Store(db), link)
    assert link.is_symlink() and target.read_bytes().startswith(b"\x89PNG")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(TcfError, match="not a regular file"):
        plot_scaling(Store(db), tmp_path / "folder.png")
    assert (tmp_path / "folder.png").is_dir()


def test_cold_protocol_runs_get_panels_of_their_own():
    """A cold-start run of an encoder is not averaged into the full-ranking point of that encoder, and an ID
    run whose cold metric does not apply (NULL) gives no baseline."""
    from tcf.report.plot import scaling_panels
    from tcf.report.runs import record

    def run(run_id: int, protocol: str, tower: str, lm_params: int | None, ndcg: float | None) -> object:
        return record({"run_id": run_id, "name": f"r{run_id}", "status": "finished", "dataset": "mind",
                       "architecture": "sasrec", "item_tower": tower, "lm_params": lm_params, "protocol": protocol,
                       "test_ndcg@10": ndcg, "config": {"text_encoder": {"unfreeze": 0} if lm_params else None}})

    runs = [run(1, "full", "text", 125, 0.11), run(2, "cold", "text", 125, 0.03), run(3, "full", "id", None, 0.10),
            run(4, "cold", "id", None, None)]
    full, cold = scaling_panels(runs)
    assert (full.dataset, cold.dataset) == ("mind", "mind (cold)")
    assert [p.mean for s in full.series for p in s.points] == [0.11]
    assert [p.mean for s in cold.series for p in s.points] == [0.03]
    assert [b.mean for b in full.baselines] == [0.10] and cold.baselines == ()


def _run(run_id: int, tower: str, lm_params: int | None, ndcg: float, seed_: int = 1, **config: dict) -> object:
    from tcf.report.runs import record

    text = ({"model": f"/m/lm-{lm_params}", "unfreeze": 0, "pooling": "mean", **config.pop("text_encoder", {})}
            if lm_params else None)
    return record({"run_id": run_id, "name": f"r{run_id}", "status": "finished", "dataset": "mind",
                   "architecture": "sasrec", "item_tower": tower, "lm_params": lm_params, "test_ndcg@10": ndcg,
                   "config": {"seed": seed_, "model": {"architecture": "sasrec", "item_tower": tower},
                              "text_encoder": text, "train": {"lr": 0.001}, **config}})


def test_a_point_or_a_baseline_never_averages_runs_that_differ_in_more_than_the_seed():
    """Reported (issue 22, 3): the "frozen" line folded runs that differ in pooling, and the baseline mixed in an
    unrelated run. Each is a line of its own now, labelled by what differs; a marked baseline is used as marked."""
    from tcf.report.plot import scaling_panels

    runs = [_run(1, "text", 125, 0.10), _run(2, "text", 125, 0.12, seed_=2),
            _run(3, "text", 125, 0.20, text_encoder={"pooling": "first"}),
            _run(4, "text", 1300, 0.14), _run(5, "text", 1300, 0.24, text_encoder={"pooling": "first"}),
            _run(6, "id", None, 0.30), _run(7, "id", None, 0.32, seed_=2),
            _run(8, "id", None, 0.05, train={"lr": 0.1})]  # an unrelated ID run: another learning rate
    (panel,) = scaling_panels(runs)
    lines = {s.label: [(p.x, p.mean, p.n) for p in s.points] for s in panel.series}
    assert lines == {"frozen, text_encoder.pooling=mean": [(125, pytest.approx(0.11), 2), (1300, 0.14, 1)],
                     "frozen, text_encoder.pooling=first": [(125, 0.20, 1), (1300, 0.24, 1)]}
    assert [(b.label, b.mean, b.n) for b in panel.baselines] == [
        ("ID sasrec, train.lr=0.001 (baseline)", pytest.approx(0.31), 2),
        ("ID sasrec, train.lr=0.1 (baseline)", 0.05, 1)]
    (marked,) = scaling_panels(runs, baseline=[runs[7]])
    assert [(b.label, b.mean) for b in marked.baselines] == [("baseline (run 8)", 0.05)]
