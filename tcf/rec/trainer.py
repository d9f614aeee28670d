"""The training loop: AdamW, AMP, validation every N epochs, early stopping on HR@10, resume.

Everything that decides the next step is in ``last.pt`` (model, optimizer, scaler, RNG, early-stopping
state), and batch order comes from (seed, epoch), so a resumed run reaches the same result as one
that was never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tcf.config import Config
from tcf.data.prepare import Prepared
from tcf.errors import TcfError
from tcf.rec import checkpoint
from tcf.rec.batches import global_batches, prefixes_of, shard
from tcf.rec.buckets import bucket_metrics, popularity_buckets
from tcf.rec.dssm import DSSM
from tcf.rec.evaluate import evaluate, evaluate_ranks, mean_metrics
from tcf.rec.graphed import GraphedStep
from tcf.rec.losses import log_popularity
from tcf.rec.metrics import metric_names
from tcf.rec.objective import DSSMObjective, SASRecObjective
from tcf.rec.pop import Popularity
from tcf.rec.sasrec import SASRec
from tcf.rec.text_towers import FineTunedTextTower, FrozenTextTower, TextSource
from tcf.rec.towers import IDTower
from tcf.util.dist import DistContext, all_reduce_sum, barrier
from tcf.util.progress import Reporter

SELECT_METRIC = "hr@10"  # validation metric that picks the best epoch and drives early stopping


@dataclass
class TrainResult:
    best_epoch: int | None
    stopped_epoch: int | None
    valid: dict[str, float]
    test: dict[str, float | None]  # None: not applicable (an ID tower's vectors of cold items were never trained)
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0


def ranks_cold_items(cfg: Config) -> bool:
    """Whether the model has a real score for items it never trained on: a text tower reads their text and
    popularity ranks them last (count 0), but an ID tower's vector of a cold item is its random init, so its
    cold-protocol metrics would be a made-up number."""
    return cfg.model.architecture == "pop" or cfg.model.item_tower == "text"


def build_model(cfg: Config, data: Prepared, text: TextSource | None = None) -> nn.Module | Popularity:
    """The config's recommender; a text item tower needs ``text`` (the finished pre-inference)."""
    m = cfg.model
    if m.architecture == "pop":
        return Popularity(data.popularity)
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank and every resume
    if m.item_tower == "text":
        if text is None or cfg.text_encoder is None:
            raise TcfError("model.item_tower is text but no pre-inference output was given")
        kind = FineTunedTextTower if text.unfreeze else FrozenTextTower
        tower: nn.Module = kind.from_source(text, data.item_keys, m.embedding_dim,
                                            cfg.text_encoder.projection_layers, m.dropout, m.init)
    else:
        tower = IDTower(data.n_items, m.embedding_dim, m.init)
    if m.architecture == "sasrec":
        return SASRec(tower, m.embedding_dim, data.max_seq_len, m.num_blocks, m.num_heads, m.dropout, m.init)
    return DSSM(tower, data.n_users, m.embedding_dim, m.n_mlp_layers, m.dropout, m.init)


def _text_tower_params(model: nn.Module) -> list[nn.Parameter]:
    tower = getattr(model, "item_tower", None)
    if isinstance(tower, (FrozenTextTower, FineTunedTextTower)):
        return [p for p in tower.parameters() if p.requires_grad]
    return []


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """AdamW groups: the text item tower (LM blocks and projection MLP) at ``text_lr`` /
    ``text_weight_decay``, everything else at ``lr`` / ``weight_decay`` (the TCF paper's two groups)."""
    text = {id(p) for p in _text_tower_params(model)}
    rest = [p for p in model.parameters() if id(p) not in text]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}]
    if text:
        groups.append({"params": _text_tower_params(model), "lr": cfg.train.text_lr,
                       "weight_decay": cfg.train.text_weight_decay})
    return groups


def _amp(cfg: Config, device: torch.device) -> torch.dtype | None:
    mode = cfg.train.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[mode]


def _keep_optimizer_mode(optimizer: torch.optim.Optimizer) -> None:
    """A loaded state dict brings the saving process's ``fused``/``capturable`` flags (a CPU run resumed on a
    GPU, or one saved without CUDA graphs): put back this process's, with step counters where they need them."""
    fused, capturable = optimizer.defaults.get("fused"), optimizer.defaults.get("capturable")
    for group in optimizer.param_groups:
        group["fused"], group["capturable"] = fused, capturable
    for p, state in optimizer.state.items():
        if "step" in state:
            state["step"] = state["step"].to(p.device if fused or capturable else "cpu", torch.float32)


@dataclass
class FitState:
    """Where training stands: the epoch clock and early stopping. ``last.pt`` holds it as a dict."""

    epoch: int = 0
    best_hr: float = -1.0
    best_epoch: int | None = None
    bad: int = 0  # evaluations since the raw or the smoothed figure last improved
    best_valid: dict[str, float] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)  # the last ``train.stop_smoothing`` validation HR@10s
    best_smoothed: float = -1.0
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0

    def observe(self, value: float, epoch: int, smoothing: int) -> bool:
        """Take one validation HR@10; True when it is a new raw best (the checkpoint to keep).

        Patience counts the evaluations since the last improvement of either the raw or the smoothed
        (mean of the last ``smoothing``) figure: smoothing keeps one spike from ending a run, and a run
        whose raw figure just reached a new best is still improving, even where an early spike holds the
        smoothed best."""
        best = value > self.best_hr
        if best:
            self.best_hr, self.best_epoch = value, epoch
        self.recent = [*self.recent, value][-smoothing:]
        smoothed = sum(self.recent) / len(self.recent)
        smoother = smoothed > self.best_smoothed
        if smoother:
            self.best_smoothed = smoothed
        self.bad = 0 if best or smoother else self.bad + 1
        return best


@dataclass
class _Session:
    """What one fit trains with: the model on its device, the step module (DDP-wrapped under torchrun),
    the optimizer and scaler, and the training rows as tensors."""

    model: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    seqs: torch.Tensor
    n_rows: int
    batch_rows: int  # training rows per global batch
    text_params: list[nn.Parameter]
    real_inputs: np.ndarray | None = None  # SASRec windows: real input positions per user, on the host
    pair_user: torch.Tensor | None = None  # DSSM and SASRec prefixes: one row per (user, position) pair
    pair_item: torch.Tensor | None = None  # DSSM: the pair's item
    pair_pos: torch.Tensor | None = None  # SASRec prefixes: the input position the prefix ends at
    prefetch: Callable[..., None] | None = None  # a tower that reads its inputs from disk is told the next batch
    host_ids: np.ndarray | None = None  # the ids a training row reads: row r's are host_ids[host_rows[r]]
    host_rows: np.ndarray | None = None  # None: row r reads host_ids[r]
    graphed: GraphedStep | None = None  # the step as a CUDA graph, where it can be one (_graphable)


class Trainer:
    """Trains one run. ``identity`` (the run's uuid, config hash and input fingerprints) goes into every
    checkpoint it writes, and a checkpoint it reads must carry the same: it never continues another run."""

    def __init__(self, cfg: Config, data: Prepared, ctx: DistContext, ckpt_dir: Path,
                 reporter: Reporter | None = None, text: TextSource | None = None,
                 identity: dict[str, Any] | None = None):
        self.cfg, self.data, self.ctx, self.ckpt_dir = cfg, data, ctx, ckpt_dir
        self.identity = identity or {}
        self.reporter = reporter or Reporter()
        self.model = build_model(cfg, data, text)
        self.ks = cfg.eval.ks
        self.graphed: GraphedStep | None = None  # the last fit's step as a CUDA graph, where it was one

    def _evaluate(self, split: str) -> dict[str, float]:
        self.reporter.stage(f"evaluate {split}")
        return evaluate(self.model, self.data.eval_split(split), self.data.n_items, self.ks, self.ctx,
                        self.cfg.eval.batch_size, _amp(self.cfg, self.ctx.device))

    def _test(self) -> dict[str, float | None]:
        """Test metrics of the current model under the data's protocol: under ``cold`` None (n/a) for a model
        that cannot rank cold items; with ``eval.popularity_buckets``, also the metrics per bucket."""
        data, buckets = self.data, self.cfg.eval.popularity_buckets
        if data.protocol == "cold" and not ranks_cold_items(self.cfg):
            return dict.fromkeys(metric_names(self.ks))
        self.reporter.stage("evaluate test")
        split = data.eval_split("test")
        ranks = evaluate_ranks(self.model, split, data.n_items, self.ctx, self.cfg.eval.batch_size,
                               _amp(self.cfg, self.ctx.device))
        metrics: dict[str, float | None] = dict(mean_metrics(ranks, self.ks))
        if buckets:
            metrics.update(bucket_metrics(ranks, popularity_buckets(data.popularity[split.targets], buckets),
                                          buckets, self.ks))
        return metrics

    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``train.epochs`` or early stopping, then test the best-validation checkpoint.
        ``resume`` continues from ``last.pt`` and reaches the result of an uninterrupted run."""
        if isinstance(self.model, Popularity):
            t0 = time.perf_counter()
            valid = self._evaluate("valid")
            eval_s = time.perf_counter() - t0
            return TrainResult(None, None, valid, self._test(), [], eval_s)
        s = self._setup()
        self.graphed = s.graphed
        state = self._restore(s) if resume and (self.ckpt_dir / "last.pt").exists() else self._fresh()
        train = self.cfg.train
        stopped, stop = state.epoch, state.bad > train.patience
        for epoch in range(state.epoch + 1, train.epochs + 1):
            if stop:
                break
            t0 = time.perf_counter()
            loss = self._train_epoch(s, epoch)
            state.epoch_seconds.append(time.perf_counter() - t0)
            metrics: dict[str, float] = {}
            if epoch % train.eval_every == 0 or epoch == train.epochs:
                metrics = self._validate_and_checkpoint(s, state, epoch)
                stop = state.bad > train.patience
            state.epoch = stopped = epoch
            # record first, then checkpoint: a crash in between replays (and re-records) this epoch
            self.reporter.epoch_end(epoch, loss, state.epoch_seconds[-1], metrics)
            self._save_last(s, state)
        return self._test_best(state, stopped)

    def _setup(self) -> _Session:
        cfg, ctx, data = self.cfg, self.ctx, self.data
        device = ctx.device
        model = self.model.to(device)
        log_pop = log_popularity(data.popularity).to(device)
        seqs = torch.as_tensor(data.train_sequences(), device=device)
        extra: dict[str, Any] = {}
        if cfg.model.architecture == "sasrec":
            objective: nn.Module = SASRecObjective(model, log_pop, cfg.train.loss, data.n_train_items)
            if cfg.train.examples == "prefixes":
                pair_user, pair_pos = (seqs[:, :-1] != 0).nonzero(as_tuple=True)
                extra.update(pair_user=pair_user, pair_pos=pair_pos)
                n_rows = len(pair_user)
            else:
                n_rows = len(seqs)
                # real input positions per user, on the host: the objective then finds them without a sync
                extra["real_inputs"] = (data.train_sequences()[:, :-1] != 0).sum(1)
        else:
            objective = DSSMObjective(model, log_pop, cfg.train.loss, data.n_train_items)
            pair_user, pair_pos = (seqs != 0).nonzero(as_tuple=True)
            extra.update(pair_user=pair_user, pair_item=seqs[pair_user, pair_pos])
            n_rows = len(pair_user)
        # The buffers (frozen item table, log popularity, rotary tables) are built alike on every rank and never
        # change: DDP's default re-broadcast before each forward would send the whole frozen table every step.
        # Gradients live in DDP's buckets rather than being copied into them after each backward.
        step_module = (DistributedDataParallel(objective, broadcast_buffers=False, gradient_as_bucket_view=True)
                       if ctx.distributed else objective)
        prefetch = getattr(model.item_tower, "prefetch", None)
        if prefetch is not None and cfg.model.architecture == "sasrec":
            extra.update(prefetch=prefetch, host_ids=data.train_sequences(),
                         host_rows=extra["pair_user"].cpu().numpy() if "pair_pos" in extra else None)
        elif prefetch is not None:
            extra.update(prefetch=prefetch, host_ids=extra["pair_item"].cpu().numpy())
        amp_dtype = _amp(cfg, device)
        graph = self._graphable(model, amp_dtype, prefetch)
        # fused on GPUs: a few kernels per step for all parameters instead of several per tensor list
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                      fused=device.type == "cuda", capturable=graph)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        batch_rows = cfg.train.batch_size
        if "pair_pos" in extra:  # as many prefixes as batch_size users hold on average: the steps of windows
            batch_rows = max(2, round(cfg.train.batch_size * n_rows / len(seqs)))
        s = _Session(model, step_module, optimizer, scaler, amp_dtype, seqs, n_rows, batch_rows,
                     _text_tower_params(model), **extra)
        if graph:
            s.graphed = self._graphed_step(s, objective)
        return s

    def _graphable(self, model: nn.Module, amp_dtype: torch.dtype | None, prefetch: object) -> bool:
        """Whether the step can be one CUDA graph (``train.cuda_graph``): one CUDA process (DDP's hooks and
        collectives stay eager), a loss with a static form, no loss scaling (fp16's scaler skips steps on
        the host), and a tower whose inputs are already on the GPU."""
        return (self.cfg.train.cuda_graph and self.ctx.device.type == "cuda" and not self.ctx.distributed
                and self.cfg.train.loss in ("ce", "ibce") and amp_dtype != torch.float16 and prefetch is None
                and not isinstance(model.item_tower, FineTunedTextTower))

    def _graphed_step(self, s: _Session, objective: nn.Module) -> GraphedStep:
        """The step of :meth:`_forward` and :meth:`_backward_and_step` with static shapes: the batch is padded
        with one extra row (an empty window, an empty prefix, a pair with item 0) that weighs nothing."""
        cfg, seqs = self.cfg, s.seqs
        padded = torch.cat([seqs, seqs.new_zeros(1, seqs.shape[1])])  # row len(seqs): the empty window
        if s.pair_user is None:  # SASRec windows
            def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return objective.static_loss(padded[idx])
        elif s.pair_pos is not None:  # SASRec prefixes: the extra pair ends the empty window
            users = torch.cat([s.pair_user, s.pair_user.new_full((1,), len(seqs))])
            ends = torch.cat([s.pair_pos, s.pair_pos.new_full((1,), seqs.shape[1] - 2)])

            def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                windows = padded[users[idx]]
                return objective.static_loss(prefixes_of(windows, ends[idx]), windows)
        else:  # DSSM: the extra pair's item is 0
            users = torch.cat([s.pair_user, s.pair_user.new_zeros(1)])
            items = torch.cat([s.pair_item, s.pair_item.new_zeros(1)])

            def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                u = users[idx]
                return objective.static_loss(u, items[idx], seqs[u])
        clip = ((s.text_params, cfg.train.clip_grad_norm) if s.text_params and cfg.train.clip_grad_norm is not None
                else None)
        return GraphedStep(loss_fn, s.optimizer, clip, s.batch_rows, s.n_rows, self.ctx.device, s.amp_dtype)

    def _fresh(self) -> FitState:
        torch.manual_seed(self.cfg.seed + 7919 * (self.ctx.rank + 1))  # dropout streams differ per rank
        return FitState()

    def _load(self, name: str) -> dict[str, Any]:
        """A checkpoint of this run (TcfError for one of another run, or of another config or inputs)."""
        path = self.ckpt_dir / name
        ck = checkpoint.load(path, self.ctx.device)
        if ck.get("identity") != self.identity:
            theirs = (ck.get("identity") or {}).get("run", "no run identity")
            raise TcfError(f"{path}: a checkpoint of another run ({theirs}), not of {self.identity.get('run')}; "
                           "refusing to continue from it")
        return ck

    def _restore(self, s: _Session) -> FitState:
        ck = self._load("last.pt")
        s.model.load_state_dict(ck["model"])
        s.optimizer.load_state_dict(ck["optimizer"])
        _keep_optimizer_mode(s.optimizer)
        s.scaler.load_state_dict(ck["scaler"])
        rng = ck["rng"]
        checkpoint.set_rng_state(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        return FitState(**ck["state"])

    def _train_epoch(self, s: _Session, epoch: int) -> float:
        """One pass over the epoch's global batches; returns the mean training loss."""
        cfg, ctx = self.cfg, self.ctx
        s.model.train()
        gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed * 7_777_777 + epoch * 131 + ctx.rank)
        batches = global_batches(s.n_rows, s.batch_rows, cfg.seed, epoch, ctx.world_size)
        self.reporter.stage("epoch", total=len(batches), epoch=epoch)
        # one host-to-GPU copy per epoch: a copy per step would wait for the GPU every step
        on_device = torch.cat(batches).to(ctx.device).split([len(b) for b in batches])
        if s.graphed is not None:
            s.graphed.loss_total.zero_()
            for gb in on_device:
                s.graphed.step(gb)
                self.reporter.advance()
            loss_total = s.graphed.loss_total
        else:
            loss_total = self._eager_steps(s, batches, on_device, gen)
        epoch_loss = float(loss_total) / max(len(batches), 1)
        if s.prefetch is not None:
            s.model.item_tower.check_announced()
        if not math.isfinite(epoch_loss):
            raise TcfError(f"training diverged: the loss is {epoch_loss} in epoch {epoch}")
        return epoch_loss

    def _eager_steps(self, s: _Session, batches: list[torch.Tensor], on_device: tuple[torch.Tensor, ...],
                     gen: torch.Generator) -> torch.Tensor:
        """The epoch's steps launched one by one; returns the summed per-batch mean losses (on the device)."""
        ctx = self.ctx
        loss_total = torch.zeros((), device=ctx.device)
        if s.prefetch is not None:
            s.prefetch(self._host_ids(s, batches[0]), ctx)
        for i, gb in enumerate(on_device):
            loss_sum, n_terms = self._forward(s, gb, batches[i], gen)
            if s.prefetch is not None and i + 1 < len(batches):  # after this forward took its own batch
                s.prefetch(self._host_ids(s, batches[i + 1]), ctx)
            total_terms = all_reduce_sum(n_terms.detach(), ctx).clamp_min(1.0)
            self._backward_and_step(s, loss_sum.float() * ctx.world_size / total_terms)
            loss_total += all_reduce_sum(loss_sum.detach().float(), ctx) / total_terms
            self.reporter.advance()
        return loss_total

    @staticmethod
    def _host_ids(s: _Session, batch: torch.Tensor) -> np.ndarray:
        rows = batch.numpy()
        return s.host_ids[rows if s.host_rows is None else s.host_rows[rows]]

    def _forward(self, s: _Session, gb: torch.Tensor, host_batch: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``gb``: (summed loss, number of loss terms)."""
        ctx = self.ctx
        idx, offset, width = shard(gb, ctx.rank, ctx.world_size)
        autocast = torch.autocast(ctx.device.type, dtype=s.amp_dtype) if s.amp_dtype else contextlib.nullcontext()
        with autocast:
            if s.real_inputs is not None:
                mine = shard(host_batch, ctx.rank, ctx.world_size)[0].numpy()
                return s.step_module(s.seqs[idx], offset, width, ctx, gen, n_rows=int(s.real_inputs[mine].sum()))
            users = s.pair_user[idx]
            if s.pair_pos is not None:
                windows = s.seqs[users]
                return s.step_module(prefixes_of(windows, s.pair_pos[idx]), offset, width, ctx, gen, windows=windows)
            return s.step_module(users, s.pair_item[idx], s.seqs[users], offset, width, ctx, gen)

    def _backward_and_step(self, s: _Session, loss: torch.Tensor) -> None:
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        if s.text_params and self.cfg.train.clip_grad_norm is not None:
            s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the loss-scaled ones
            torch.nn.utils.clip_grad_norm_(s.text_params, self.cfg.train.clip_grad_norm)
        s.scaler.step(s.optimizer)
        s.scaler.update()

    def _validate_and_checkpoint(self, s: _Session, state: FitState, epoch: int) -> dict[str, float]:
        """Validation metrics of this epoch; a new best HR@10 is saved as ``best.pt``.

        Early stopping is ``FitState.observe``'s; the checkpoint kept is the best raw HR@10, as the method
        selects it."""
        t1 = time.perf_counter()
        metrics = self._evaluate("valid")
        state.eval_seconds = time.perf_counter() - t1
        if state.observe(metrics[SELECT_METRIC], epoch, self.cfg.train.stop_smoothing):
            state.best_valid = metrics
            if self.ctx.is_main:
                checkpoint.save_atomic({"model": s.model.state_dict(), "epoch": epoch, "identity": self.identity},
                                       self.ckpt_dir / "best.pt")
        return metrics

    def _test_best(self, state: FitState, stopped: int) -> TrainResult:
        barrier(self.ctx)  # best.pt is complete before any rank reads it
        best = self._load("best.pt")
        self.model.load_state_dict(best["model"])
        test = self._test()
        return TrainResult(state.best_epoch, stopped, state.best_valid, test, state.epoch_seconds, state.eval_seconds)

    def _save_last(self, s: _Session, state: FitState) -> None:
        rng = checkpoint.rng_state()
        if self.ctx.distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.ctx.is_main:
            checkpoint.save_atomic({"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                                    "scaler": s.scaler.state_dict(), "rng": gathered, "state": asdict(state),
                                    "identity": self.identity},
                                   self.ckpt_dir / "last.pt")
        barrier(self.ctx)
