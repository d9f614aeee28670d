"""``tcf``: run experiments headless, inspect datasets, and print result tables.

User errors (bad data, bad config) print one ``error: ...`` line on stderr and exit with code 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tcf import __version__
from tcf.errors import ConfigError, TcfError
from tcf.util.text import printable

if TYPE_CHECKING:
    from tcf.report.render import Grid

def _flags_show_no_type() -> None:
    """typer 0.2x prints a type after every flag in help (``--json <bool>``) though a flag takes no value: a flag
    shows none (options with a value keep theirs)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "tcf_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) else shown(self, ctx)

    display_type_rich.tcf_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()
app = typer.Typer(help="Text-based collaborative filtering experiments.", rich_markup_mode="rich",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Check, convert, filter and synthesize datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Convert public datasets into the TCF layout.", no_args_is_help=True)
queue_app = typer.Typer(help="Queue experiments for `tcf worker` or Slurm: add, list, submit, sync, cancel, retry, "
                             "edit, remove.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(queue_app, name="queue")
data_app.add_typer(import_app, name="import")

err = Console(stderr=True)
out = Console()

DbOption = Annotated[Path, typer.Option("--db", envvar="TCF_DB", help="Result store (SQLite).")]
SetOption = Annotated[list[str] | None, typer.Option("-S", "--set", help="Override a key: -S train.epochs=5")]
TextConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML with a text_encoder section.")]
BudgetOption = Annotated[str | None, typer.Option(help="e.g. 8GiB; default: config, else free memory.")]
RangesOption = Annotated[str | None, typer.Option(help="Pin block ranges, e.g. 0:6,6:16,16:24.")]
BatchOption = Annotated[int | None, typer.Option(min=1, help="Pin the batch size.")]
ScheduleOption = Annotated[Literal["range", "chunk"] | None, typer.Option(
    help="Pin the schedule: range (every item through one block range, boundaries on disk) or chunk (a chunk of "
         "items through every range, boundaries in host memory); default: config, else the planner's choice.")]
DEFAULT_DB = Path("experiments.db")


def _version(value: bool) -> None:
    if value:
        print(f"tcf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """tcf: does a bigger language model make a better recommender?"""


# -- run -----------------------------------------------------------------------------------------
@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML; omit to run the embedded demo.")] = None,
    set_: SetOption = None,
    resume: Annotated[int | None, typer.Option("--resume", help="Continue an interrupted run by id.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Train and evaluate every run of CONFIG; with no CONFIG, run the demo.

    The demo: pop, ID-SASRec, ID-DSSM, frozen and fine-tuned text SASRec on synthetic data with a tiny text
    encoder."""
    from tcf.config import Config, load_config
    from tcf.demo import demo_configs
    from tcf.experiment import prepared_data, run_experiment
    from tcf.preinfer.encode import sweep_depths
    from tcf.util.dist import init_distributed, shutdown

    overrides = set_ or []
    if resume is not None:
        if config is not None or overrides:
            raise TcfError("--resume takes the run's stored config; give no CONFIG or -S with it")
        row = _store(db).get_run(resume)
        if row["status"] == "finished":
            raise TcfError(f"run {resume} already finished")
        configs = [Config.model_validate(json.loads(row["config_json"]))]
    elif config is None:
        configs = demo_configs(overrides, say=err.print)
    else:
        configs = load_config(config, overrides)
    for cfg in configs:  # validate every dataset before anything is written
        prepared_data(cfg)
    depths = sweep_depths(configs)  # one pre-inference per encoder serves every unfreeze depth

    from tcf.tui.progress import RichReporter

    signal.signal(signal.SIGTERM, _interrupt)  # a killed run is recorded as interrupted, not left running
    ctx = init_distributed(configs[0].train.device)
    results = []
    try:
        for cfg, keep in zip(configs, depths, strict=True):
            with RichReporter(cfg.run_name, err) as reporter:
                results.append(run_experiment(cfg, db, reporter=reporter, resume_run_id=resume, ctx=ctx,
                                              keep_depths=keep))
    finally:
        shutdown()
    if ctx.is_main:
        _print_comparison(results, configs[0].train.threads)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_comparison(results: list, pinned_threads: int | None = None) -> None:
    """The runs just trained: test metrics x100, and the CPU threads they computed with (CPU results depend on
    them). On a narrow terminal the best epoch and the other cut-offs go first (named in the caption); a run's
    id, name and protocol never wrap or go."""
    from tcf.report.render import column_width, fit_columns
    from tcf.store.schema import metric_key
    from tcf.util.threads import choose_threads

    def shown(value: float | None) -> str:  # None: recorded as not applicable; absent: not measured
        return "-" if value is None else f"{100 * value:.2f}"

    protocols = sorted({r.protocol for r in results})
    # the overall metrics only: `tcf results` shows the per-bucket ones (eval.popularity_buckets)
    keys = sorted({k for r in results for k in r.metrics if re.fullmatch(r"test_(hr|ndcg)@\d+", k)}, key=metric_key)
    # (header, cells, right-aligned, left out at a narrow terminal: highest first, 0 never)
    columns = [("run", [str(r.run_id) for r in results], False, 0), ("name", [printable(r.name) for r in results],
                                                                      False, 0)]
    if len(protocols) > 1:  # numbers of two protocols never compare: one is named in the title, several in a column
        columns.append(("protocol", [r.protocol for r in results], False, 0))
    columns += [(k.removeprefix("test_").upper(), [shown(r.metrics.get(k)) for r in results], True,
                 1 if k.endswith("@10") else 2) for k in keys]
    columns.append(("best epoch", [str(r.best_epoch or "-") for r in results], True, 3))
    widths = [column_width([h, *cells]) for h, cells, _, _ in columns]
    kept = fit_columns(widths, [d for *_, d in columns], out.width)
    whole = sum(widths[i] + 3 for i in kept) + 1 <= out.width
    table = Table(title=f"test metrics ({'full ranking' if protocols == ['full'] else ', '.join(protocols)}, x100)")
    for i in kept:
        header, _, right, _ = columns[i]
        table.add_column(header, justify="right" if right else "left", no_wrap=whole,
                         min_width=widths[i] if whole else None, overflow="fold")
    for n in range(len(results)):
        table.add_row(*(Text(columns[i][1][n]) for i in kept))
    counts = sorted({r.threads for r in results if r.threads is not None})
    notes = [f"computed with {choose_threads(pinned_threads).describe()}" if len(counts) == 1 else
             f"CPU threads: {', '.join(map(str, counts))} (train.threads per run)"] if counts else []
    not_applicable = [str(r.run_id) for r in results if r.protocol == "cold" and r.metrics.get("test_hr@10") is None]
    if not_applicable:
        notes.append(f"-: not applicable (run {', '.join(not_applicable)}): an ID tower cannot rank the cold items "
                     "it never trained on")
    left_out = [columns[i][0] for i in range(len(columns)) if i not in kept]
    if left_out:
        notes.append(f"not shown at {out.width} columns: {', '.join(left_out)} (tcf results --format md has them)")
    table.caption = "; ".join(notes) or None
    out.print(table)


# -- results -------------------------------------------------------------------------------------
def _rich_table(grid: Grid) -> Table:
    """The ``table`` format: tcf.report's plain grid drawn by rich. Every cell is a Text, so a ``[`` in a run
    name is printed, never read as markup; columns that must stay whole get at least their widest cell."""

    caption = grid.note if grid.caption is None else grid.caption
    table = Table(title=Text(grid.title) if grid.title else None, caption=Text(caption) if caption else None)
    for i, column in enumerate(grid.columns):
        header = Text("\n".join(column.label))
        justify = "right" if column.numeric else "left"
        if column.fit == "whole":
            width = max([len(line) for line in column.label] + [len(row[i].text) for row in grid.rows])
            table.add_column(header, justify=justify, no_wrap=True, min_width=width)
        else:
            table.add_column(header, justify=justify, overflow=column.fit)
    for row in grid.rows:
        table.add_row(*(Text(shown.text or "-") for shown in row))
    return table


def _fit_terminal(grid: Grid) -> Grid:
    """The grid at this terminal's width: columns left out (named in the caption) before a run's id or name
    would be cut or wrapped."""
    from dataclasses import replace

    from tcf.report.render import fit_grid

    fitted, left_out = fit_grid(grid, out.width)
    if not left_out:
        return fitted
    caption = grid.note if grid.caption is None else grid.caption
    more = (f"not shown at {out.width} columns: {', '.join(left_out)} (a wider terminal, or --format md, csv or "
            "json, shows them)")
    return replace(fitted, caption=f"{caption}; {more}" if caption else more)


def _plain(table: Table) -> str:
    """A rich table as plain text for a file: uncoloured, unwrapped, no trailing spaces."""
    buffer = io.StringIO()
    Console(file=buffer, width=10_000, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _one_metric(metric: str | None, value: str | None) -> str | None:
    """``--metric``, or ``--value`` (its old name, still accepted); errors then name the flag typed."""
    if metric is not None and value is not None:
        raise TcfError("--value is the old name of --metric: give one of them")
    _flags_given["metric"] = "--value" if value is not None else "--metric"
    return metric if metric is not None else value


@app.command()
def results(
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="table, md, csv, latex or json (default: --output's extension, else table).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only runs on this dataset.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only runs whose name matches this glob.")] = None,
    pivot: Annotated[str | None, typer.Option(
        "--pivot", metavar="ROWS:COLS",
        help="Pivot finished runs: comma-separated row fields, ':', column fields, e.g. "
             "item_tower,text_encoder.model:dataset. Fields: results columns or dotted config keys; "
             "runs sharing a cell (seeds) give mean ± std.")] = None,
    metric: Annotated[str | None, typer.Option(
        "--metric", help="Metric of a --pivot table (default test_ndcg@10).")] = None,
    value: Annotated[str | None, typer.Option("--value", hidden=True, help="Old name of --metric.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="KEY=VALUE[,KEY=VALUE]",
        help="With --pivot: runs to compare against, per column, e.g. item_tower=id.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the table to this file (atomically) instead of stdout.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """One row per run (best-validation checkpoint's test HR@K / NDCG@K), or a --pivot table for papers."""
    from tcf.report.render import TABLE_FORMATS, format_for_path, render
    from tcf.report.results import results_table
    from tcf.report.runs import load_runs
    from tcf.util.atomic import write_user_file

    metric = _one_metric(metric, value)
    _flags_given.update(pivot="--pivot", baseline="--baseline", format="--format")
    if format is None:
        format = format_for_path(output, "table") if output is not None else "table"
    if format not in TABLE_FORMATS:
        raise TcfError(f"--format must be one of {', '.join(TABLE_FORMATS)}, got {format!r}")
    if pivot is None and (metric is not None or baseline is not None):
        flag = _flags_given["metric"] if metric is not None else "--baseline"
        raise TcfError(f"{flag} only applies with --pivot")
    _follow_slurm(db)
    if pivot is not None:
        from tcf.report.pivot import pivot_from_store, pivot_table

        table = pivot_table(pivot_from_store(_store(db, readonly=True), pivot, metric=metric, baseline=baseline,
                                             dataset=dataset, name_glob=name))
    else:
        runs = load_runs(_store(db, readonly=True), dataset=dataset, name_glob=name)
        table = results_table([run.row for run in runs])
    if format == "table" and output is None:
        out.print(_rich_table(_fit_terminal(table.grid)))
        return
    text = _plain(_rich_table(table.grid)) if format == "table" else render(table, format)
    if output is not None:
        write_user_file(output, text)
    else:
        sys.stdout.write(text)


@app.command()
def plot(
    out_path: Annotated[Path, typer.Option(
        "--out", help="Figure to write (atomically): .png, .svg or .pdf, by its extension.")],
    metric: Annotated[str | None, typer.Option("--metric", help="Metric on the y axis (default test_ndcg@10).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: a panel each).")] = None,
    series: Annotated[str | None, typer.Option(
        "--series", metavar="FIELDS",
        help="Comma-separated fields that split runs into lines (default: item_tower, text_encoder.unfreeze).")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Scaling figure: a metric against text-encoder size (lm_params), one panel per dataset, ID runs as baseline."""
    from tcf.report.plot import plot_scaling
    from tcf.report.runs import parse_fields

    _flags_given.update(metric="--metric", series="--series", out="--out")
    fields = parse_fields(series, "series") if series is not None else None
    panels = plot_scaling(_store(db, readonly=True), out_path, metric=metric, dataset=dataset, series=fields)
    points = sum(len(s.points) for p in panels for s in p.series)
    err.print(f"wrote {out_path}: {len(panels)} dataset(s), {points} point(s)")


# -- plan ----------------------------------------------------------------------------------------
#: Flags that set a config key; an error about the key names the flag the user typed instead.
FLAG_KEYS = {"--gpu-memory-budget": "text_encoder.gpu_memory_budget", "--ranges": "text_encoder.ranges",
             "--batch-size": "text_encoder.batch_size", "--schedule": "text_encoder.schedule"}
_flags_given: dict[str, str] = {}  # config key -> flag, for this invocation


def _flag_values(**flags: object) -> dict[str, object]:
    """``--gpu-memory-budget 8GiB`` -> {"text_encoder.gpu_memory_budget": "8GiB"}, remembering the flag."""
    values = {}
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is not None:
            values[FLAG_KEYS[flag]] = value
            _flags_given[FLAG_KEYS[flag]] = flag
    return values


def _text_configs(config: Path, set_: list[str] | None, **flags: object) -> list:
    from tcf.config import load_config

    configs = [c for c in load_config(config, set_ or [], values=_flag_values(**flags)) if c.text_encoder is not None]
    if not configs:
        raise TcfError(f"{config}: text_encoder: the config has no text_encoder section")
    return configs


@app.command()
def plan(
    config: TextConfigArg,
    set_: SetOption = None,
    gpu_memory_budget: BudgetOption = None,
    ranges: RangesOption = None,
    batch_size: BatchOption = None,
    schedule: ScheduleOption = None,
    gpu: Annotated[int, typer.Option(min=0, help="GPU whose free memory is the default budget.")] = 0,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Plan pre-inference of the item texts: block ranges under the GPU-memory budget (host memory on a
    CPU-only machine), split where fine-tuned blocks start, and the schedule that fits the disk and host memory."""
    from tcf.experiment import prepared_data
    from tcf.preinfer.encode import default_device, make_plan
    from tcf.preinfer.planner import format_plan

    configs = _text_configs(config, set_, gpu_memory_budget=gpu_memory_budget, ranges=ranges, batch_size=batch_size,
                            schedule=schedule)
    cfg, keep = _encodings(configs)[0]
    result = make_plan(cfg, prepared_data(cfg).n_items, default_device(gpu), keep=keep,
                       latents_root=db.resolve().parent / "artifacts")
    sys.stdout.write(format_plan(result).rstrip("\n") + "\n")


def _encodings(configs: list) -> list[tuple]:
    """One (config, depths to keep) per distinct encoder, the depths every run sharing it needs; a run that
    trains no text tower (pop, an ID tower) keeps none and decides nothing when another shares its encoder."""
    from tcf.preinfer.encode import encoder_identity, sweep_depths

    jobs: dict[tuple, tuple] = {}
    pairs = zip(configs, sweep_depths(configs), strict=True)
    for cfg, keep in sorted(pairs, key=lambda ck: not ck[0].trains_text_tower):
        jobs.setdefault(encoder_identity(cfg), (cfg, list(keep)))
    return list(jobs.values())


@app.command()
def infer(
    config: TextConfigArg,
    set_: SetOption = None,
    gpu_memory_budget: BudgetOption = None,
    ranges: RangesOption = None,
    batch_size: BatchOption = None,
    schedule: ScheduleOption = None,
    gpu: Annotated[int, typer.Option(min=0, help="GPU to run on.")] = 0,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Encode every item text block range by block range; resumes after a crash, reuses finished work.

    A sweep encodes once per distinct encoder, keeping the depths of all its unfreeze values.
    """
    from tcf.preinfer.encode import run_infer_job
    from tcf.tui.progress import InferProgress
    from tcf.util.dist import shutdown
    from tcf.util.threads import apply_threads, choose_threads

    configs = _text_configs(config, set_, gpu_memory_budget=gpu_memory_budget, ranges=ranges, batch_size=batch_size,
                            schedule=schedule)
    apply_threads(choose_threads(configs[0].train.threads))  # a CPU pre-inference: the free cores, passively
    signal.signal(signal.SIGTERM, _interrupt)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 shows progress
    try:
        for cfg, keep in _encodings(configs):
            with InferProgress(err) if main_rank else contextlib.nullcontext() as ui:
                path, reused = run_infer_job(cfg, db, gpu=gpu, ui=ui, keep_depths=tuple(keep))
            if main_rank:
                err.print(("reused " if reused else "wrote ") + str(path))
                print(path)
    finally:
        shutdown()


# -- queue and worker ----------------------------------------------------------------------------
JobIdArg = Annotated[int, typer.Argument(metavar="ID", help="Job id (see `tcf queue ls`).")]


@queue_app.command("add")
def queue_add(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML; omit to queue the embedded demo.")] = None,
    set_: SetOption = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag the jobs (repeatable).")] = None,
    note: Annotated[str, typer.Option(help="A note shown with the jobs.")] = "",
    gpus: Annotated[int, typer.Option(min=1, help="Devices per job (several: torchrun, one rank each).")] = 1,
    gpu_memory: Annotated[str | None, typer.Option(
        help="Free GPU memory a worker waits for before starting a job, e.g. 20GiB (default: pre-inference "
             "waits for text_encoder.gpu_memory_budget, else the least its plan needs; training for 1GiB).")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Queue every run of CONFIG (sweeps expand), each text encoder's pre-inference first."""
    from tcf.jobs.queue import get_job, queue_config
    from tcf.store.db import Store
    from tcf.util.units import parse_bytes

    _flags_given["gpus"] = "--gpus"
    try:
        mem = parse_bytes(gpu_memory) if gpu_memory is not None else None
    except ValueError as e:
        raise TcfError(f"--gpu-memory: {e}") from None
    store = Store(db)
    ids = queue_config(store, config, set_ or [], say=err.print, priority=priority, tags=tag or [], note=note,
                       gpus=gpus, mem_bytes=mem)
    for job_id in ids:
        job = get_job(store, job_id)
        after = f" after job {', '.join(map(str, job.deps))}" if job.deps else ""
        err.print(f"queued job {job_id}: {job.kind} {job.name}{after}")
    print(" ".join(map(str, ids)))


@queue_app.command("ls")
def queue_ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of jobs.")] = False,
    state: Annotated[str | None, typer.Option(help="Only jobs in these states, e.g. running,lost.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """The jobs: running, then queued by priority, then ended (newest first)."""
    from tcf.jobs.queue import SHOWN, list_jobs
    from tcf.store.events import live_view, progress_summary
    from tcf.tui.styles import STATE_STYLE

    states = tuple(s.strip() for s in state.split(",")) if state else None
    for s in states or ():
        if s not in SHOWN:
            raise TcfError(f"--state: unknown state {s!r}; one of {', '.join(SHOWN)}")
    store = _store(db, readonly=True, follow=True)
    jobs = list_jobs(store, states)
    progress = {j.id: progress_summary(live_view(store, j)) for j in jobs if j.state in ("running", "finished")}
    if as_json:
        keys = ("id", "kind", "name", "priority", "tags", "note", "gpus", "devices", "attempts", "run_id",
                "artifact", "created_at", "started_at", "finished_at", "error", "deps", "log_path", "host", "pid",
                "slurm_id", "slurm_state")
        rows = [{**{k: getattr(j, k) for k in keys}, "state": j.display, "stored_state": j.state,
                 "progress": progress.get(j.id, "")} for j in jobs]
        print(json.dumps(rows, indent=2, default=list))
        return
    from tcf.report.render import column_width, fit_columns

    # (header, cells, left out at a narrow terminal: highest first, 0 never): id, state and name say which job
    columns = [("id", [str(j.id) for j in jobs], 0), ("state", [j.display for j in jobs], 0),
               ("kind", [j.kind for j in jobs], 3), ("name", [printable(j.name) for j in jobs], 0),
               ("devices", [printable(j.devices or (f"slurm {j.slurm_id}" if j.slurm_id else "")) for j in jobs], 4),
               ("progress", [printable(progress.get(j.id, "")) for j in jobs], 2),
               ("prio", [str(j.priority) for j in jobs], 5), ("tags", [printable(",".join(j.tags)) for j in jobs], 5),
               ("note / error", [printable(j.error or j.note) for j in jobs], 6)]
    widths = [min(column_width([h, *cells]), 24 if h == "note / error" else 1_000) for h, cells, _ in columns]
    kept = fit_columns(widths, [d for _, _, d in columns], out.width)
    whole = sum(widths[i] + 3 for i in kept) + 1 <= out.width  # names never wrap mid-word when they fit at all
    table = Table(title=f"jobs in {db}")
    for i in kept:
        header, cells, _ = columns[i]
        if header == "note / error" or not whole:
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, no_wrap=True, min_width=widths[i])
    for n, j in enumerate(jobs):
        table.add_row(*(Text(columns[i][1][n], style=STATE_STYLE.get(j.display, "") if columns[i][0] == "state"
                             else "") for i in kept))
    left_out = [columns[i][0] for i in range(len(columns)) if i not in kept]
    if left_out:
        table.caption = f"not shown at {out.width} columns: {', '.join(left_out)} (--json has every field)"
    out.print(table)


@queue_app.command("cancel")
def queue_cancel(job_id: JobIdArg, db: DbOption = DEFAULT_DB) -> None:
    """Cancel a queued job, or stop a running one (SIGTERM; it records itself as cancelled)."""
    from tcf.jobs.queue import cancel_job

    err.print(cancel_job(_store(db, follow=True), job_id))


@queue_app.command("retry")
def queue_retry(
    job_id: Annotated[int | None, typer.Argument(metavar="ID", help="Job id.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed, lost or cancelled job.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Queue a failed, lost or cancelled job again: pre-inference resumes from its last committed
    block range, training from its last checkpoint."""
    from tcf.jobs.queue import get_job, retry_jobs
    from tcf.jobs.slurm import resubmit

    if (job_id is None) == (not failed):
        raise TcfError("give a job ID or --failed (not both)")
    store = _store(db, follow=True)
    ids = retry_jobs(store, [job_id] if job_id is not None else None, failed=failed)
    err.print(f"queued again: {', '.join(map(str, ids))}" if ids else "nothing to retry")
    on_slurm = [i for i in ids if get_job(store, i).slurm_options]  # back to Slurm, with the options they had
    if on_slurm:
        resubmit(store, on_slurm, say=err.print)


@queue_app.command("submit")
def queue_submit(
    partition: Annotated[str | None, typer.Option(help="Slurm partition (sbatch --partition).")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account to charge (sbatch --account).")] = None,
    time: Annotated[str | None, typer.Option(help="Time limit per job, e.g. 04:00:00 (sbatch --time).")] = None,
    gres: Annotated[str | None, typer.Option(
        help="GPUs per node, e.g. gpu:1 or gpu:a100:4 (sbatch --gres); a job of more GPUs spans nodes.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the batch scripts and sbatch argv; submit "
                                                            "nothing, write nothing.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Hand the queued jobs to Slurm: pre-inference first, training after it (afterok). Jobs never open
    experiments.db; `tcf queue sync` (and `queue ls`, `results`, the TUI) merge what they record."""
    from tcf.jobs.slurm import SlurmOptions, format_plan, plan, submit

    opts = SlurmOptions(partition, account, time, gres).check()
    if dry_run:
        sys.stdout.write(format_plan(*plan(_store(db, readonly=True), opts)))
        return
    subs = submit(_store(db, follow=True), opts, say=err.print)
    err.print(f"submitted {len(subs)} job(s) to Slurm" if subs else "nothing to submit")
    print(" ".join(str(s.job.id) for s in subs))


@queue_app.command("sync")
def queue_sync(db: DbOption = DEFAULT_DB) -> None:
    """Ask Slurm how the submitted jobs stand and merge the records they wrote into experiments.db (exactly
    once: syncing again changes nothing)."""
    from tcf.jobs.slurm import sync

    said = sync(_store(db))
    for line in said:
        err.print(line)
    err.print(f"{len(said)} change(s)" if said else "up to date")


@queue_app.command("rm")
def queue_rm(job_id: JobIdArg, db: DbOption = DEFAULT_DB) -> None:
    """Remove a job that is not running (its run, if any, stays in the results)."""
    from tcf.jobs.queue import remove_job

    remove_job(_store(db), job_id)
    err.print(f"removed job {job_id}")


@queue_app.command("wait")
def queue_wait(job_id: JobIdArg, db: DbOption = DEFAULT_DB) -> int:
    """Block until the job ends; the exit status is its outcome: 0 finished, else its exit code (1 without one),
    130 cancelled. As task-spooler's `ts -w`."""
    from tcf.jobs.watch import exit_status, wait_for

    def say(job) -> None:
        why = " (a job it depends on ended badly; it waits for a retry)" if job.display == "blocked" else ""
        err.print(f"job {job.id} {printable(job.name)}: {job.display}{why}", highlight=False, soft_wrap=True)

    job = wait_for(_store(db, readonly=True), job_id, on_change=say, refresh=lambda: _follow_slurm(db, 5.0))
    if job.error:
        err.print(Text(printable(job.error)), soft_wrap=True)
    return exit_status(job)


@app.command()
def logs(
    job_id: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what the job writes until it "
                                                                "ends (waiting for a queued one to start).")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """A job's log: stdout and stderr of its process (every attempt), as `ts -c`; --follow as `ts -t`."""
    from tcf.jobs.watch import stream_log

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stream_log(_store(db, readonly=True), job_id, write, follow=follow, refresh=lambda: _follow_slurm(db, 5.0))


@queue_app.command("edit")
def queue_edit(
    job_id: JobIdArg,
    priority: Annotated[int | None, typer.Option(help="New priority (higher runs first).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Replace the tags (repeatable).")] = None,
    note: Annotated[str | None, typer.Option(help="Replace the note.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Change a job's priority, tags or note."""
    from tcf.jobs.queue import edit_job

    job = edit_job(_store(db), job_id, priority=priority, tags=tag, note=note)
    err.print(f"job {job.id}: priority {job.priority}, tags {','.join(job.tags) or '-'}, note {job.note or '-'}")


def _store(db: Path, readonly: bool = False, follow: bool = False):
    """The store at ``db``, which must exist: a mistyped --db is one line saying so, never an empty table (nor a
    new file: commands that create a store are run, queue add and worker). ``follow``: Slurm's view synced first
    (a cancel or retry acts on it, a listing shows it)."""
    from tcf.store.db import Store

    if not db.exists():
        raise TcfError(f"{db}: no tcf result store there (check --db or TCF_DB; tcf run, tcf queue add or "
                       "tcf worker make one)")
    if follow:
        _follow_slurm(db)
    return Store(db, readonly=readonly)


def _follow_slurm(db: Path, min_interval_s: float = 0.0) -> None:
    """On a coordinator with Slurm jobs: merge their records and states before reading (a failure is a warning:
    what is already merged can still be read); at most once per ``min_interval_s`` (a command that polls)."""
    from tcf.jobs.slurm import follow

    try:
        for line in follow(db, min_interval_s):
            err.print(line)
    except TcfError as e:
        err.print(f"warning: cannot sync the Slurm jobs: {e}")


@app.command()
def worker(
    gpus: Annotated[str | None, typer.Option(
        help="GPUs to run jobs on: 'all' (default; the CPU when there is none), 'cpu', or indices like 0,1.")] = None,
    max_jobs: Annotated[int | None, typer.Option(min=1, help="Stop after starting this many jobs.")] = None,
    exit_when_idle: Annotated[bool, typer.Option(
        "--exit-when-idle", help="Stop when no queued job is left that this worker could run.")] = False,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Run queued jobs on free GPUs (or the CPU), each as its own process.

    A job waits for a GPU with enough free memory; several GPUs: torchrun. Ctrl-C: take no new jobs and wait;
    twice: cancel the running ones."""
    from tcf.jobs.worker import Worker, parse_gpus
    from tcf.util.gpu import get_provider

    provider = get_provider()
    _flags_given["gpus"] = "--gpus"
    devices = parse_gpus(gpus, provider)
    if devices == ["cpu"] and gpus is None:
        err.print(f"no GPU ({provider.reason}): running jobs on the CPU, one at a time")
    Worker(db, devices, max_jobs=max_jobs, exit_when_idle=exit_when_idle, provider=provider,
           say=lambda s: err.print(s, highlight=False, soft_wrap=True)).run()


# -- data ----------------------------------------------------------------------------------------
@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
    item_file: Annotated[str | None, typer.Option(help="Item file name if not detected.")] = None,
    lenient: Annotated[bool, typer.Option("--lenient", help="Skip bad lines and count them.")] = False,
    text_template: Annotated[str | None, typer.Option(
        metavar="TEMPLATE", help='Item text from named columns, e.g. "{title}. {brand}" (dataset.text_template).')
    ] = None,
) -> None:
    """Validate a dataset and print its statistics."""
    from tcf.data.reader import load_dataset
    from tcf.data.stats import dataset_stats

    raw = load_dataset(path, item_file, lenient=lenient, text_template=text_template, template_key="--text-template")
    stats = dataset_stats(raw)
    table = Table(title=f"{raw.path} ({raw.item_file})", show_header=False)
    if raw.text_template is not None:  # what the template read, and what it made of the first item
        table.add_row("columns", Text(", ".join(printable(c) for c in raw.item_columns)))
        table.add_row("text_template", Text(printable(raw.text_template)))
        table.add_row(Text(f"text of {printable(raw.item_keys[0])}"), Text(printable(raw.item_texts[0])))
    for key, value in stats.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        table.add_row(key, _fmt(value))
    out.print(table)
    if raw.skipped:
        err.print("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(raw.skipped.items())))


def _fmt(v: object) -> str:
    return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


@data_app.command("filter")
def data_filter(
    src: Annotated[Path, typer.Argument(help="Source dataset folder.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="New dataset folder.")],
    min_item_interactions: Annotated[int, typer.Option(min=1, help="Drop items with fewer interactions.")],
    item_file: Annotated[str | None, typer.Option(help="Item file name if not detected.")] = None,
) -> None:
    """Write the warm-item variant of a dataset (the paper's _20/_50/_200)."""
    from tcf.data.filter import filter_warm_items

    _report(filter_warm_items(src, out_dir, min_item_interactions, item_file=item_file), out_dir)


@import_app.command("movielens")
def import_movielens(src: Annotated[Path, typer.Argument(help="Raw ml-100k or ml-1m folder.")],
                     out_dir: Annotated[Path, typer.Argument(metavar="OUT")]) -> None:
    """ml-100k (u.data + u.item) or ml-1m (ratings.dat + movies.dat)."""
    from tcf.data.importers import import_movielens as run_import

    _report(run_import(src, out_dir), out_dir)


@import_app.command("recbole")
def import_recbole(src: Annotated[Path, typer.Argument(help="Folder with NAME.inter and NAME.item.")],
                   out_dir: Annotated[Path, typer.Argument(metavar="OUT")]) -> None:
    """RecBole atomic files (.inter + .item)."""
    from tcf.data.importers import import_recbole as run_import

    _report(run_import(src, out_dir), out_dir)


@import_app.command("mind")
def import_mind(src: Annotated[Path, typer.Argument(help="A MIND train or dev folder (behaviors.tsv + news.tsv).")],
                out_dir: Annotated[Path, typer.Argument(metavar="OUT")]) -> None:
    """MIND: clicked history, then clicked impressions by time; text = title + abstract."""
    from tcf.data.importers import import_mind as run_import

    _report(run_import(src, out_dir), out_dir)


@import_app.command("amazon")
def import_amazon(
    src: Annotated[Path, typer.Argument(help="Folder with an Amazon 2018 or 2023 reviews file and its meta_ file.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT")],
    reviews: Annotated[str | None, typer.Option(
        metavar="FILE", help="Reviews file inside SRC; default: the other .json or .jsonl file (.gz or not).")] = None,
    meta: Annotated[str | None, typer.Option(
        metavar="FILE", help="Meta file inside SRC; default: the one meta_*.json or .jsonl (.gz or not).")] = None,
    k_core: Annotated[int, typer.Option(
        metavar="N", min=0, help="Keep users and items with at least N interactions, iterated (0: off).")] = 0,
) -> None:
    """Amazon Reviews 2018/2023 (JSON lines, .gz or not): reviews by time; text = title, brand, categories."""
    from tcf.data.importers import import_amazon as run_import

    _report(run_import(src, out_dir, reviews=reviews, meta=meta, k_core=k_core), out_dir)


@import_app.command("hm")
def import_hm(src: Annotated[Path, typer.Argument(help="The H&M folder (transactions_train.csv + articles.csv).")],
              out_dir: Annotated[Path, typer.Argument(metavar="OUT")]) -> None:
    """H&M Personalized Fashion: purchases by day; text = name, type, colour, description."""
    from tcf.data.importers import import_hm as run_import

    _report(run_import(src, out_dir), out_dir)


InteractionsOption = Annotated[str | None, typer.Option(
    metavar="FILE", help="Interactions CSV inside SRC; default: the one whose header has user, item, timestamp.")]
ItemsOption = Annotated[str | None, typer.Option(
    metavar="FILE", help="Item CSV inside SRC; default: the one with item and title columns (or title in its name).")]


@import_app.command("microlens")
def import_microlens(src: Annotated[Path, typer.Argument(help="A MicroLens-50k/100k folder (*_pairs.csv + titles).")],
                     out_dir: Annotated[Path, typer.Argument(metavar="OUT")],
                     interactions: InteractionsOption = None, items: ItemsOption = None) -> None:
    """MicroLens: user, item, timestamp pairs by time; text = the title."""
    from tcf.data.importers import import_microlens as run_import

    _report(run_import(src, out_dir, interactions=interactions, items=items), out_dir)


@import_app.command("pixelrec")
def import_pixelrec(src: Annotated[Path, typer.Argument(help="Folder holding PixelRec's interaction and item CSVs.")],
                    out_dir: Annotated[Path, typer.Argument(metavar="OUT")],
                    interactions: InteractionsOption = None, items: ItemsOption = None) -> None:
    """PixelRec: item_id, user_id, timestamp by time; text = the title."""
    from tcf.data.importers import import_pixelrec as run_import

    _report(run_import(src, out_dir, interactions=interactions, items=items), out_dir)


@data_app.command("synth")
def data_synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT")],
    users: Annotated[int, typer.Option(min=1)] = 2000,
    items: Annotated[int, typer.Option(min=10)] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    text_encoder: Annotated[Path | None, typer.Option(
        help="Also build a tiny random-weight OPT here, its tokenizer trained on the item texts.")] = None,
) -> None:
    """A MIND-like dataset whose titles and sequences share latent topics."""
    from tcf.data.synth import synth_dataset

    if text_encoder is not None and text_encoder.exists():
        raise TcfError(f"{text_encoder}: already exists; choose a new folder for the text encoder")
    _report(synth_dataset(out_dir, users=users, items=items, seed=seed), out_dir)
    if text_encoder is not None:
        from tcf.demo import ensure_demo_encoder

        ensure_demo_encoder(text_encoder, out_dir)
        err.print(f"wrote {text_encoder}: tiny random-weight OPT text encoder")


def _report(counts: dict, out_dir: Path) -> None:
    err.print(f"wrote {out_dir}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in counts.items()))


def _in_flag_terms(e: TcfError) -> str:
    """An error about a config key that a flag of this command set names the flag (the engine knows keys)."""
    if isinstance(e, ConfigError) and e.key in _flags_given:
        return f"{_flags_given[e.key]}: {e.message}"
    return str(e)


def _usage_exit(e: Exception) -> int | None:
    """The exit code of a usage error, ``--help`` or an Exit from click, or from the copy of click that newer
    typer releases carry (its classes are not click's); None for anything else. A usage error prints
    usage and one line (``e.show()``), never a traceback."""
    if type(e).__name__ == "Abort":
        print("interrupted", file=sys.stderr)
        return 130
    code = getattr(e, "exit_code", None)
    if not isinstance(code, int):
        return None
    if hasattr(e, "show"):
        e.show()
    return code


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit code 2, never a traceback; so do failures of the
    machine underneath (a full disk, a folder without permission: one line naming the file, exit 1)."""
    _flags_given.clear()
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show '±' gets an escape, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        rv = app(args=argv, prog_name="tcf", standalone_mode=False)
    except TcfError as e:
        print(f"error: {_in_flag_terms(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        code = _usage_exit(e)
        if code is None:
            raise
        sys.exit(code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
