"""One experiment run end to end: dataset -> run record -> training -> stored metrics.

Inputs are validated before experiments.db is touched, so bad input never leaves a run behind.
Under torchrun every rank trains; only rank 0 writes to the store and to disk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from tcf.config import Config
from tcf.data.prepare import Prepared, prepare
from tcf.data.reader import load_dataset
from tcf.errors import TcfError
from tcf.lm.checkpoint import parameter_count
from tcf.preinfer.encode import model_dir_of, run_infer_job
from tcf.rec.text_towers import TextSource
from tcf.rec.trainer import Trainer, TrainResult
from tcf.store.db import Store
from tcf.store.events import EventWriter
from tcf.util.dist import DistContext, broadcast_object, init_distributed
from tcf.util.progress import Reporter, Tee


@dataclass
class RunResult:
    run_id: int
    name: str
    metrics: dict[str, float]  # "valid_hr@10", "test_ndcg@10", ...
    best_epoch: int | None
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0


@functools.lru_cache(maxsize=4)
def _prepared(path: str, item_file: str | None, lenient: bool, min_len: int, max_len: int) -> Prepared:
    raw = load_dataset(path, item_file, lenient=lenient)
    data = prepare(raw, min_seq_len=min_len, max_seq_len=max_len)
    if data.n_users == 0:
        raise TcfError(f"{path}: no user has at least {min_len} interactions")
    return data


def prepared_data(cfg: Config) -> Prepared:
    """Load, validate and preprocess the config's dataset (cached across the runs of a sweep)."""
    d = cfg.dataset
    return _prepared(str(Path(d.path).resolve()), d.item_file, d.lenient, d.min_seq_len, d.max_seq_len)


def checkpoint_dir(db_path: Path, run_id: int) -> Path:
    return db_path.resolve().parent / "artifacts" / "checkpoints" / f"run-{run_id}"


def run_experiment(cfg: Config, db_path: Path, *, reporter: Reporter | None = None,
                   resume_run_id: int | None = None, ctx: DistContext | None = None,
                   keep_depths: tuple[int, ...] = ()) -> RunResult:
    """Train and evaluate one config, recording everything in ``db_path``.

    A text tower first gets its latents (reused when they exist); ``keep_depths`` makes that
    pre-inference also keep what the other runs of a sweep need (tcf.preinfer.encode.sweep_depths).
    """
    ctx = ctx or init_distributed(cfg.train.device)
    data = prepared_data(cfg)
    text_model = model_dir_of(cfg.text_encoder) if cfg.trains_text_tower else None  # fails before the db is touched
    store = Store(db_path) if ctx.is_main else None
    run_id = resume_run_id
    if store is not None and run_id is None:
        run_id = store.create_run(name=cfg.run_name, config=cfg.model_dump(mode="json"),
                                  config_hash=cfg.hash(), dataset=Path(cfg.dataset.path).name,
                                  architecture=cfg.model.architecture, item_tower=cfg.model.item_tower,
                                  lm_params=parameter_count(text_model) if text_model is not None else None)
    run_id = int(broadcast_object(run_id, ctx))
    if store is not None:
        store.set_status(run_id, "running")
    reporter = Tee(EventWriter(store, f"run:{run_id}", run_id), reporter) if store is not None else (
        reporter or Reporter())
    try:
        text = None
        if text_model is not None:
            assert cfg.text_encoder is not None
            reporter.stage("pre-inference")
            latents, _ = run_infer_job(cfg, db_path, device=ctx.device, keep_depths=keep_depths)
            te = cfg.text_encoder
            text = TextSource(latents, text_model, te.unfreeze, te.pooling)
        trainer = Trainer(cfg, data, ctx, checkpoint_dir(db_path, run_id), reporter, text)
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
    return RunResult(run_id, cfg.run_name, metrics, result.best_epoch, result.epoch_seconds,
                     result.eval_seconds)
