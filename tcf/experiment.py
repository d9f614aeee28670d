"""One experiment run end to end: dataset -> run record -> training -> stored metrics.

Inputs are validated before experiments.db is touched, so bad input never leaves a run behind.
Under torchrun every rank trains; only rank 0 writes to the store and to disk.

A run is tied to what it trains on: it gets a uuid, its config is stored with absolute paths, the
fingerprints of its inputs (dataset files, text encoder, latents) are recorded, and its checkpoints carry
all three. ``--resume`` continues a run only on the very same inputs, from checkpoints of that run, in
one process at a time (a lock that dies with its holder); anything else is refused with one line.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tcf.config import Config
from tcf.data.cold import hold_out_cold
from tcf.data.prepare import Prepared, prepare
from tcf.data.reader import BEHAVIORS_FILE, load_dataset, resolve_item_file
from tcf.errors import TcfError
from tcf.lm.checkpoint import parameter_count
from tcf.lm.hub import hub_origin
from tcf.preinfer.encode import model_dir_of, model_fingerprint, run_infer_job
from tcf.rec.text_towers import TextSource
from tcf.rec.trainer import Trainer, TrainResult
from tcf.store.db import Store
from tcf.store.events import EventWriter
from tcf.store.records import Recorder, open_store
from tcf.util.dist import DistContext, broadcast_object, init_distributed
from tcf.util.fingerprint import file_digest
from tcf.util.lock import Locked, file_lock
from tcf.util.progress import Reporter, Tee
from tcf.util.threads import apply_threads, choose_threads


@dataclass
class RunResult:
    run_id: int
    name: str
    metrics: dict[str, float | None]  # "valid_hr@10", "test_ndcg@10", ...; None: not applicable (n/a)
    best_epoch: int | None
    protocol: str = "full"
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0
    threads: int | None = None  # the CPU threads torch computed with (tcf.util.threads)


@functools.lru_cache(maxsize=4)
def _prepared(path: str, item_file: str | None, lenient: bool, text_template: str | None, min_len: int,
              max_len: int) -> Prepared:
    raw = load_dataset(path, item_file, lenient=lenient, text_template=text_template)
    data = prepare(raw, min_seq_len=min_len, max_seq_len=max_len)
    if data.n_users == 0:
        raise TcfError(f"{path}: no user has at least {min_len} interactions")
    return data


@functools.lru_cache(maxsize=4)
def _under_protocol(path: str, item_file: str | None, lenient: bool, template: str | None, min_len: int,
                    max_len: int, protocol: str, cold_items: float, cold_seed: int) -> Prepared:
    data = _prepared(path, item_file, lenient, template, min_len, max_len)
    return hold_out_cold(data, cold_items, cold_seed) if protocol == "cold" else data


def prepared_data(cfg: Config) -> Prepared:
    """Load, validate and preprocess the config's dataset, split for its evaluation protocol (``eval.protocol``;
    cached across the runs of a sweep)."""
    d, e = cfg.dataset, cfg.eval
    return _under_protocol(str(Path(d.path).resolve()), d.item_file, d.lenient, d.text_template, d.min_seq_len,
                           d.max_seq_len, e.protocol, e.cold_items, e.cold_seed)


def checkpoint_dir(db_path: Path, run_id: int, run_uuid: str) -> Path:
    """``artifacts/checkpoints/run-<id>-<uuid>/``: the uuid keeps a run's folder its own, even when another
    experiments.db in the same folder numbers its runs from 1 again."""
    return db_path.resolve().parent / "artifacts" / "checkpoints" / f"run-{run_id}-{run_uuid[:12]}"


def run_inputs(cfg: Config, text_model: Path | None) -> dict[str, dict[str, str]]:
    """Fingerprints of what a run reads before it trains: its dataset files and its text encoder (with, for a
    model from the Hugging Face cache, its repo and resolved commit)."""
    folder = Path(cfg.dataset.path).resolve()
    files = [folder / BEHAVIORS_FILE, folder / resolve_item_file(folder, cfg.dataset.item_file)]
    inputs = {f"dataset/{f.name}": {"path": str(f), "sha256": file_digest(f)} for f in files}
    if text_model is not None:
        origin = hub_origin(text_model)
        inputs["text_encoder"] = {"path": str(text_model), "fingerprint": model_fingerprint(text_model),
                                  **(origin.record() if origin else {})}
    return inputs


def latents_input(latents: Path) -> dict[str, dict[str, str]]:
    """The latents artifact a text tower trains on: its content-addressed name and when it was finished."""
    meta = latents / "meta.json"
    return {"latents": {"path": str(latents), "fingerprint": f"{latents.name}:{meta.stat().st_mtime_ns}"}}


def check_inputs(run: dict, inputs: dict[str, dict[str, str]]) -> None:
    """A resumed run must read what it started on: every recorded input unchanged (TcfError naming it)."""
    recorded = run.get("inputs") or {}
    if not recorded:
        raise TcfError(f"run {run['id']} was recorded before tcf fingerprinted a run's inputs, so a resume "
                       "cannot tell whether they changed; start a new run")
    for role, now in inputs.items():
        before = recorded.get(role)
        if before is not None and before != now:
            raise TcfError(f"{before['path']}: changed since run {run['id']} started ({role}); resuming would "
                           "train on other data than its checkpoints; start a new run")


@contextmanager
def owning(store: Recorder | None, run: dict, ckpt: Path, resume: bool, threads: int | None = None) -> Iterator[None]:
    """Rank 0 holds the run's lock (dies with the process) and records itself as its owner (and the CPU threads
    it trains with), for the run's whole training: a second `tcf run --resume` or a retried job fails at once
    instead of training it too."""
    if store is None:
        yield
        return
    if not resume and ckpt.exists() and any(ckpt.iterdir()):
        raise TcfError(f"{ckpt}: holds another run's files; a new run never starts there")
    with ExitStack() as held:
        try:
            held.enter_context(file_lock(ckpt / ".owner.lock", what=f"run {run['id']}"))
        except Locked:
            owner = store.get_run(run["id"])
            who = f"pid {owner['owner_pid']} on {owner['owner_host']}" if owner["owner_pid"] else "another process"
            raise TcfError(f"run {run['id']} is being trained by {who}; one run has one trainer") from None
        store.claim_run(run["id"], threads)
        yield


def _new_run(store: Recorder, cfg: Config, text_model: Path | None, inputs: dict[str, dict[str, str]]) -> int:
    return store.create_run(name=cfg.run_name, config=cfg.model_dump(mode="json"), config_hash=cfg.hash(),
                            dataset=Path(cfg.dataset.path).name, architecture=cfg.model.architecture,
                            item_tower=cfg.model.item_tower, protocol=cfg.eval.protocol, inputs=inputs,
                            lm_params=parameter_count(text_model) if text_model is not None else None)


def reserve_run(store: Store, cfg: Config) -> int:
    """Record the run a job will train before it starts, from the machine that holds experiments.db: a job on
    another node (Slurm) cannot create one there, so it resumes this one (status 'created', no checkpoint)."""
    cfg = cfg.resolved()
    text_model = model_dir_of(cfg.text_encoder) if cfg.trains_text_tower else None
    return _new_run(store, cfg, text_model, run_inputs(cfg, text_model))


def _open_run(store: Recorder, cfg: Config, db_path: Path, text_model: Path | None,
              resume_run_id: int | None) -> tuple[dict, Path]:
    """The run's row (a new one, or the one to resume after checking it may be) and its checkpoint folder."""
    inputs = run_inputs(cfg, text_model)
    run_id = _new_run(store, cfg, text_model, inputs) if resume_run_id is None else resume_run_id
    run = store.get_run(run_id)
    if resume_run_id is not None:
        if run["status"] == "finished":
            raise TcfError(f"run {run_id} already finished")
        check_inputs(run, inputs)
    return run, checkpoint_dir(db_path, run_id, run["uuid"])


def run_experiment(cfg: Config, db_path: Path, *, reporter: Reporter | None = None,
                   resume_run_id: int | None = None, ctx: DistContext | None = None,
                   keep_depths: tuple[int, ...] = ()) -> RunResult:
    """Train and evaluate one config, recording everything in ``db_path``.

    A text tower first gets its latents (reused when they exist); ``keep_depths`` makes that
    pre-inference also keep what the other runs of a sweep need (tcf.preinfer.encode.sweep_depths).
    """
    ctx = ctx or init_distributed(cfg.train.device)
    threads = choose_threads(cfg.train.threads)  # the free cores, once per process, unless pinned
    apply_threads(threads)
    cfg = cfg.resolved()  # absolute paths: a resume from another folder reads the same files
    data = prepared_data(cfg)
    text_model = model_dir_of(cfg.text_encoder) if cfg.trains_text_tower else None  # fails before the db is touched
    store = open_store(db_path) if ctx.is_main else None  # a Slurm job's: its record file
    run, ckpt = _open_run(store, cfg, db_path, text_model, resume_run_id) if store is not None else ({}, None)
    run, ckpt = broadcast_object((run, ckpt), ctx)
    run_id = run["id"]
    reporter = Tee(EventWriter(store, f"run:{run_id}", run_id), reporter) if store is not None else (
        reporter or Reporter())
    # a second claimant leaves the run untouched
    with owning(store, run, ckpt, resume_run_id is not None, threads.threads):
        try:
            text = _text_source(cfg, db_path, ctx, store, run, text_model, keep_depths, reporter)
            identity = {"run": run["uuid"], "config_hash": run["config_hash"],
                        "inputs": broadcast_object(store.get_run(run_id)["inputs"] if store else None, ctx)}
            trainer = Trainer(cfg, data, ctx, ckpt, reporter, text, identity=identity)
            result: TrainResult = trainer.fit(resume=resume_run_id is not None)
        except KeyboardInterrupt:
            if store is not None:
                store.set_status(run_id, "interrupted")
            raise
        except BaseException as e:
            if store is not None:
                store.set_status(run_id, "failed", error=str(e) or type(e).__name__)
            raise
        if store is not None:
            store.log_final(run_id, "valid", result.valid, result.best_epoch, result.stopped_epoch)
            store.log_final(run_id, "test", result.test, result.best_epoch, result.stopped_epoch)
            store.set_status(run_id, "finished")
    metrics = {f"valid_{k}": v for k, v in result.valid.items()}
    metrics.update({f"test_{k}": v for k, v in result.test.items()})
    return RunResult(run_id, cfg.run_name, metrics, result.best_epoch, cfg.eval.protocol, result.epoch_seconds,
                     result.eval_seconds, threads.threads)


def _text_source(cfg: Config, db_path: Path, ctx: DistContext, store: Recorder | None, run: dict,
                 text_model: Path | None, keep_depths: tuple[int, ...], reporter: Reporter) -> TextSource | None:
    """A text tower's latents (pre-inferred now or reused), recorded with the run; on a resume they must be
    the ones it started on."""
    if text_model is None:
        return None
    te = cfg.text_encoder
    assert te is not None
    reporter.stage("pre-inference")
    latents, _ = run_infer_job(cfg, db_path, device=ctx.device, keep_depths=keep_depths)
    if store is not None:
        found = latents_input(latents)
        if run.get("inputs", {}).get("latents"):
            check_inputs(run, found)
        store.add_inputs(run["id"], found)
    return TextSource(latents, text_model, te.unfreeze, te.pooling, te.normalize)
