"""The training loop: AdamW, AMP, validation every N epochs, early stopping on HR@10, resume.

Everything that decides the next step is in ``last.pt`` (model, optimizer, scaler, RNG, early-stopping
state), and batch order comes from (seed, epoch), so a resumed run reaches the same result as one
that was never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tcf.config import Config
from tcf.data.prepare import Prepared
from tcf.errors import TcfError
from tcf.rec import checkpoint
from tcf.rec.batches import global_batches, shard
from tcf.rec.dssm import DSSM
from tcf.rec.evaluate import evaluate
from tcf.rec.losses import log_popularity
from tcf.rec.objective import DSSMObjective, SASRecObjective
from tcf.rec.pop import Popularity
from tcf.rec.sasrec import SASRec
from tcf.rec.text_towers import FineTunedTextTower, FrozenTextTower, TextSource
from tcf.rec.towers import IDTower
from tcf.util.dist import DistContext, all_reduce_sum, barrier

SELECT = "hr@10"


class Reporter:
    """Receives progress; the CLI renders it, the store records it. Methods are no-ops here."""

    def stage(self, name: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    best_epoch: int | None
    stopped_epoch: int | None
    valid: dict[str, float]
    test: dict[str, float]
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: float = 0.0


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
    ``text_weight_decay``, everything else at ``lr`` / ``weight_decay`` (method §3.8)."""
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


class Trainer:
    def __init__(self, cfg: Config, data: Prepared, ctx: DistContext, ckpt_dir: Path,
                 reporter: Reporter | None = None, text: TextSource | None = None):
        self.cfg, self.data, self.ctx, self.ckpt_dir = cfg, data, ctx, ckpt_dir
        self.reporter = reporter or Reporter()
        self.model = build_model(cfg, data, text)
        self.ks = cfg.eval.ks

    # -- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, split: str) -> dict[str, float]:
        self.reporter.stage(f"evaluate {split}")
        return evaluate(self.model, self.data.eval_split(split), self.data.n_items, self.ks, self.ctx,
                        self.cfg.eval.batch_size)

    # -- training ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        if isinstance(self.model, Popularity):
            t0 = time.perf_counter()
            valid = self._evaluate("valid")
            eval_s = time.perf_counter() - t0
            return TrainResult(None, None, valid, self._evaluate("test"), [], eval_s)
        cfg, ctx, data = self.cfg, self.ctx, self.data
        device = ctx.device
        model = self.model.to(device)
        log_pop = log_popularity(data.popularity).to(device)
        seqs = torch.as_tensor(data.train_sequences(), device=device)
        if cfg.model.architecture == "sasrec":
            objective: nn.Module = SASRecObjective(model, log_pop, cfg.train.loss, data.n_items)
            n_rows = len(seqs)
            # real input positions per user, on the host: the objective then finds them without a sync
            real_inputs = (data.train_sequences()[:, :-1] != 0).sum(1)
        else:
            objective = DSSMObjective(model, log_pop, cfg.train.loss, data.n_items)
            pair_user, pair_pos = (seqs != 0).nonzero(as_tuple=True)
            pair_item = seqs[pair_user, pair_pos]
            n_rows = len(pair_user)
        # The buffers (frozen item table, log popularity, rotary tables) are built alike on every rank and never
        # change: DDP's default re-broadcast before each forward would send the whole frozen table every step.
        # Gradients live in DDP's buckets rather than being copied into them after each backward.
        step_module = (DistributedDataParallel(objective, broadcast_buffers=False, gradient_as_bucket_view=True)
                       if ctx.distributed else objective)
        # a tower that reads inputs from disk (fine-tuned text) is told the next global batch during this step
        prefetch = getattr(model.item_tower, "prefetch", None)
        host_ids = (data.train_sequences() if cfg.model.architecture == "sasrec"
                    else pair_item.cpu().numpy()) if prefetch is not None else None
        text_params = _text_tower_params(model)
        # fused on GPUs: a few kernels per step for all parameters instead of several per tensor list
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                      fused=device.type == "cuda")
        amp_dtype = _amp(cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        state: dict[str, Any] = {"epoch": 0, "best_hr": -1.0, "best_epoch": None, "bad": 0,
                                 "best_valid": {}, "epoch_seconds": [], "eval_seconds": 0.0}
        last = self.ckpt_dir / "last.pt"
        if resume and last.exists():
            ck = checkpoint.load(last, device)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
            rng = ck["rng"]
            checkpoint.set_rng_state(rng[ctx.rank] if ctx.rank < len(rng) else rng[0])
            state = ck["state"]
        else:
            torch.manual_seed(cfg.seed + 7919 * (ctx.rank + 1))  # dropout streams differ per rank

        stopped = state["epoch"]
        stop = state["bad"] > cfg.train.patience
        for epoch in range(state["epoch"] + 1, cfg.train.epochs + 1):
            if stop:
                break
            t0 = time.perf_counter()
            model.train()
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 7_777_777 + epoch * 131 + ctx.rank)
            batches = global_batches(n_rows, cfg.train.batch_size, cfg.seed, epoch, ctx.world_size)
            self.reporter.stage(f"epoch {epoch}", total=len(batches))
            loss_total = torch.zeros((), device=device)
            # one host-to-GPU copy per epoch: a copy per step would wait for the GPU every step
            on_device = torch.cat(batches).to(device).split([len(b) for b in batches])
            if prefetch is not None:
                prefetch(host_ids[batches[0].numpy()], ctx)
            for i, gb in enumerate(on_device):
                idx, offset, width = shard(gb, ctx.rank, ctx.world_size)
                autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype
                            else contextlib.nullcontext())
                with autocast:
                    if cfg.model.architecture == "sasrec":
                        mine = shard(batches[i], ctx.rank, ctx.world_size)[0].numpy()
                        loss_sum, n_terms = step_module(seqs[idx], offset, width, ctx, gen,
                                                        n_rows=int(real_inputs[mine].sum()))
                    else:
                        users = pair_user[idx]
                        loss_sum, n_terms = step_module(users, pair_item[idx], seqs[users], offset, width,
                                                        ctx, gen)
                if prefetch is not None and i + 1 < len(batches):  # after this forward took its own batch
                    prefetch(host_ids[batches[i + 1].numpy()], ctx)
                total_terms = all_reduce_sum(n_terms.detach(), ctx).clamp_min(1.0)
                loss = loss_sum.float() * ctx.world_size / total_terms
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if text_params and cfg.train.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones (BUG-7)
                    torch.nn.utils.clip_grad_norm_(text_params, cfg.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                loss_total += all_reduce_sum(loss_sum.detach().float(), ctx) / total_terms
                self.reporter.advance()
            epoch_loss = float(loss_total) / max(len(batches), 1)
            if prefetch is not None:
                model.item_tower.check_announced()
            if not math.isfinite(epoch_loss):
                raise TcfError(f"training diverged: the loss is {epoch_loss} in epoch {epoch}")
            state["epoch_seconds"].append(time.perf_counter() - t0)
            metrics: dict[str, float] = {}
            if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
                t1 = time.perf_counter()
                metrics = self._evaluate("valid")
                state["eval_seconds"] = time.perf_counter() - t1
                if metrics[SELECT] > state["best_hr"]:
                    state.update(best_hr=metrics[SELECT], best_epoch=epoch, bad=0, best_valid=metrics)
                    if ctx.is_main:
                        checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch},
                                               self.ckpt_dir / "best.pt")
                else:
                    state["bad"] += 1
                stop = state["bad"] > cfg.train.patience
            state["epoch"] = stopped = epoch
            # record first, then checkpoint: a crash in between replays (and re-records) this epoch
            self.reporter.epoch_end(epoch, epoch_loss, state["epoch_seconds"][-1], metrics)
            self._save_last(model, optimizer, scaler, state)

        barrier(ctx)  # best.pt is complete before any rank reads it
        best = checkpoint.load(self.ckpt_dir / "best.pt", device)
        model.load_state_dict(best["model"])
        test = self._evaluate("test")
        return TrainResult(state["best_epoch"], stopped, state["best_valid"], test,
                           state["epoch_seconds"], state["eval_seconds"])

    def _save_last(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   state: dict[str, Any]) -> None:
        rng = checkpoint.rng_state()
        if self.ctx.distributed:
            gathered: list[Any] = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.ctx.is_main:
            checkpoint.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scaler": scaler.state_dict(), "rng": gathered, "state": state},
                                   self.ckpt_dir / "last.pt")
        barrier(self.ctx)
