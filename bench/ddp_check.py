"""One rank against several on the same global batches, to localise a multi-GPU mismatch: per-step loss
and gradient norms, the fine-tuned text tower's host waits, and a split-batch check of the tower.

    python bench/ddp_check.py --setup --workdir W [--model opt-1.3b --users 20000 --items 8000]
    torchrun --nproc_per_node N bench/ddp_check.py --workdir W --label L [-S key=value ...] [--steps K]
        [--no-prefetch] [--no-lm-dropout] [--split-check] --out DIR

The run is ``Trainer.fit`` itself (text SASRec, top-2 blocks fine-tuned, model dropout 0 by default);
``--steps`` cuts every epoch to its first K global batches. Rank 0 writes ``DIR/L.json``.
``--tower-halves`` perturbs one rank the way two ranks do (the tower encodes each half of a batch on its
own) without any collective. Runs of bench/results/ddp_check_h200x2.json, each with
``--no-lm-dropout --steps 150 -S train.epochs=2`` (python3 = one rank, torchrun = two):

    one_top2 --split-check | two_top2 | one_id / two_id -S model.item_tower=id -S train.loss=ibce
    one_top2_nopf --no-prefetch | one_frozen / two_frozen -S text_encoder.unfreeze=0
    one_top2_prof / two_top2_prof --profile 10 --profile-at 100 | one_top2_halves --tower-halves --no-prefetch
    one_top2_s43 / two_top2_s43 -S seed=43
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def setup(args: argparse.Namespace) -> None:
    from multi_gpu import dataset, model_dir

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data = dataset(work, "text-data", users=args.users, items=args.items)
    ckpt = model_dir(work, args.model, data)
    (work / "base.yaml").write_text(
        f"dataset:\n  path: {data}\nmodel:\n  item_tower: text\n  dropout: 0.0\n"
        f"train:\n  batch_size: {args.batch}\n  epochs: 1\n  patience: 100\n  examples: windows\n  text_lr: 0.0001\n"
        f"text_encoder:\n  model: {ckpt}\n  max_tokens: 30\n  unfreeze: 2\n")


def _no_lm_dropout(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("dropout", "activation_dropout", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)


def split_check(trainer, ctx) -> dict:
    """The tower on a whole global batch against the tower on its two halves (what two ranks compute)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tcf.rec.batches import global_batches

    cfg, data, model = trainer.cfg, trainer.data, trainer.model.to(ctx.device)
    tower = model.item_tower
    seqs = torch.as_tensor(data.train_sequences(), device=ctx.device)
    seq = seqs[global_batches(len(seqs), cfg.train.batch_size, cfg.seed, 1)[0].to(ctx.device)]
    g = torch.Generator(device=ctx.device).manual_seed(0)
    weights = torch.randn(*seq.shape, cfg.model.embedding_dim, device=ctx.device, generator=g)
    params = [p for p in tower.parameters() if p.requires_grad]
    half = len(seq) // 2
    model.train()

    def run(parts: list[slice], amp: bool, backend: SDPBackend | None = None) -> tuple[torch.Tensor, list]:
        for p in params:
            p.grad = None
        outs = []
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            for part in parts:
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=amp):
                    v = tower(seq[part])
                (v.float() * weights[part]).sum().backward()
                outs.append(v.detach().float())
        return torch.cat(outs), [p.grad.detach().clone() for p in params]

    def diff(a: tuple, b: tuple) -> dict:
        (va, ga), (vb, gb) = a, b
        num = sum(float((x - y).float().norm() ** 2) for x, y in zip(ga, gb, strict=True)) ** 0.5
        den = sum(float(x.float().norm() ** 2) for x in ga) ** 0.5
        return {"vec_max_abs": float((va - vb).abs().max()), "vec_scale": float(va.abs().max()),
                "grad_rel": num / max(den, 1e-30)}

    whole, halves = [slice(0, len(seq))], [slice(0, half), slice(half, len(seq))]
    out: dict = {"unique_whole": int(len(np.unique(seq.cpu().numpy())) - 1),
                 "unique_halves": [int(len(np.unique(seq[h].cpu().numpy())) - 1) for h in halves]}
    bf_whole, bf_halves = run(whole, True), run(halves, True)
    fp_whole, fp_halves = run(whole, False), run(halves, False)
    out["bf16_whole_vs_halves"] = diff(bf_whole, bf_halves)
    out["fp32_whole_vs_halves"] = diff(fp_whole, fp_halves)
    out["bf16_whole_vs_fp32_whole"] = diff(fp_whole, bf_whole)
    out["bf16_halves_vs_fp32_halves"] = diff(fp_halves, bf_halves)
    if ctx.device.type == "cuda":
        math_whole = run(whole, True, SDPBackend.MATH)
        out["bf16_whole_vs_bf16_whole_math"] = diff(math_whole, bf_whole)
        out["bf16_halves_vs_bf16_whole_math"] = diff(math_whole, bf_halves)
    for p in params:
        p.grad = None
    return out


def _profile_summary(prof, steps: int) -> dict:
    """Per-step host and device time, and the ops that take most of each."""
    events = prof.key_averages()

    def dev(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    rows = [{"op": e.key, "n": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps,
             "self_dev_ms": dev(e) / 1e3 / steps} for e in events]
    top = sorted(rows, key=lambda r: -r["self_cpu_ms"])[:20]
    top_dev = sorted(rows, key=lambda r: -r["self_dev_ms"])[:15]
    r3 = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in top]
    d3 = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in top_dev]
    return {"steps": steps, "dev_ms_per_step": sum(r["self_dev_ms"] for r in rows),
            "cpu_ms_per_step": sum(r["self_cpu_ms"] for r in rows), "top_cpu": r3, "top_dev": d3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--label", default="run")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=None, help="global batches per epoch (default: all)")
    ap.add_argument("--no-prefetch", action="store_true")
    ap.add_argument("--no-lm-dropout", action="store_true")
    ap.add_argument("--split-check", action="store_true")
    ap.add_argument("--tower-halves", action="store_true",
                    help="one rank: run the text tower on each half of a training batch (two ranks' split)")
    ap.add_argument("--profile", type=int, default=0, help="profile this many steps (after --profile-at)")
    ap.add_argument("--profile-at", type=int, default=100)
    ap.add_argument("--sdpa", default=None,
                    help="attention backends the fit may use, e.g. efficient,flash,math (default: torch's choice)")
    ap.add_argument("--sync-debug", type=int, default=0,
                    help="count the host syncs (with their call sites) of this many training steps after step 5")
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    if args.setup:
        setup(args)
        return

    import tcf.rec.trainer as trainer_mod
    from tcf.config import load_config
    from tcf.experiment import prepared_data
    from tcf.preinfer.encode import model_dir_of, run_infer_job
    from tcf.rec.latent_gather import LatentGather
    from tcf.rec.text_towers import FineTunedTextTower, TextSource
    from tcf.util.dist import barrier, init_distributed

    t_start = time.perf_counter()
    cfg = load_config(args.workdir / "base.yaml", args.overrides)[0]
    ctx = init_distributed(cfg.train.device)
    data = prepared_data(cfg)
    text = None
    if cfg.model.item_tower == "text":
        latents, _ = run_infer_job(cfg, args.workdir / "check.db", device=ctx.device)
        te = cfg.text_encoder
        text = TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling, te.normalize)
    ckpt = args.workdir / "ckpt" / args.label
    ckpt.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    trainer = trainer_mod.Trainer(cfg, data, ctx, ckpt, text=text)
    if args.no_lm_dropout:
        _no_lm_dropout(trainer.model)
    tower = trainer.model.item_tower
    out: dict = {"label": args.label, "world": ctx.world_size, "overrides": args.overrides,
                 "prefetch": not args.no_prefetch, "lm_dropout": not args.no_lm_dropout}
    if args.split_check:
        out["split_check"] = split_check(trainer, ctx)
    if args.no_prefetch and isinstance(tower, FineTunedTextTower):
        tower.prefetch = None  # the trainer then reads each batch's rows when its forward asks

    if args.tower_halves:
        whole_forward = tower.forward

        def halves(ids):
            if torch.is_grad_enabled() and ids.dim() == 2 and len(ids) > 1:
                h = len(ids) // 2
                return torch.cat([whole_forward(ids[:h]), whole_forward(ids[h:])])
            return whole_forward(ids)

        tower.forward = halves
    prof = None
    if args.profile or args.sync_debug:
        n_rows = len(data.train_sequences()) if cfg.model.architecture == "sasrec" else None
        per_epoch = -(-n_rows // cfg.train.batch_size) if n_rows else None
        if args.steps:
            per_epoch = min(per_epoch or args.steps, args.steps)
        last = max(args.profile_at + 3 + args.profile if args.profile else 0, 5 + args.sync_debug)
        if per_epoch and last > per_epoch * cfg.train.epochs:
            raise SystemExit(f"--profile/--sync-debug need {last} steps; the run has {per_epoch * cfg.train.epochs}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
        prof = profile(activities=acts, schedule=schedule(wait=args.profile_at, warmup=3, active=args.profile))
        prof.start()
    step_times: list[float] = []
    reduced: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    waits = {"unique_s": 0.0, "take_s": 0.0, "unique_n": [], "forwards": 0}

    real_sum, real_batches = trainer_mod.all_reduce_sum, trainer_mod.global_batches
    real_clip = torch.nn.utils.clip_grad_norm_

    syncs: collections.Counter = collections.Counter()

    def record_sync(message, category, filename, lineno, file=None, line=None):
        if "synchronizing CUDA operation" not in str(message):
            return show_warning(message, category, filename, lineno, file, line)
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        syncs[" <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames[-4:][::-1])] += 1

    show_warning = warnings.showwarning

    def all_reduce_sum(x, c):
        r = real_sum(x, c)
        reduced.append(r.detach().float().reshape(()))
        if len(reduced) % 2 == 0:  # the second call of a step: its loss
            step_times.append(time.perf_counter())
            if prof is not None:
                prof.step()
            if args.sync_debug and len(step_times) in (5, 5 + args.sync_debug):
                on = len(step_times) == 5
                warnings.simplefilter("always")
                warnings.showwarning = record_sync if on else show_warning
                if torch.cuda.is_available():
                    torch.cuda.set_sync_debug_mode("warn" if on else "default")
        return r

    def global_batches(*a, **k):
        b = real_batches(*a, **k)
        return b[: args.steps] if args.steps else b

    def clip(params, max_norm, *a, **k):
        n = real_clip(params, max_norm, *a, **k)
        norms.append(n.detach().float())
        return n

    trainer_mod.all_reduce_sum, trainer_mod.global_batches = all_reduce_sum, global_batches
    torch.nn.utils.clip_grad_norm_ = clip
    if isinstance(tower, FineTunedTextTower):
        real_unique, real_take = tower._unique, LatentGather.take

        def unique(ids):
            t0 = time.perf_counter()
            r = real_unique(ids)
            if isinstance(ids, torch.Tensor):  # a forward's ids (the prefetch passes numpy ids)
                waits["unique_s"] += time.perf_counter() - t0  # includes the device sync of ids.cpu()
                waits["unique_n"].append(len(r[0]))
                waits["forwards"] += 1
            return r

        def take(self, rows, device):
            t0 = time.perf_counter()
            r = real_take(self, rows, device)
            waits["take_s"] += time.perf_counter() - t0
            return r

        tower._unique = unique
        LatentGather.take = take

    backends = contextlib.nullcontext()
    if args.sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
        backends = sdpa_kernel([names[n] for n in args.sdpa.split(",")])
    out["sdpa"] = args.sdpa
    t_fit = time.perf_counter()
    with backends:
        result = trainer.fit()
    fit_s = time.perf_counter() - t_fit
    if prof is not None:
        prof.stop()
        out["profile"] = _profile_summary(prof, args.profile)
    gaps = np.diff(step_times)
    out["step_ms"] = {"median": float(np.median(gaps) * 1e3), "p90": float(np.percentile(gaps, 90) * 1e3),
                      "all": [round(float(g) * 1e3, 1) for g in gaps]} if len(gaps) else None
    pairs = torch.stack(reduced).cpu().numpy() if reduced else np.zeros(0)
    # per step: n_terms, then loss_sum (both summed over ranks)
    steps = len(pairs) // 2
    losses = (pairs[1: 2 * steps: 2] / np.maximum(pairs[0: 2 * steps: 2], 1.0)).tolist()
    out.update({
        "losses": [round(x, 5) for x in losses],
        "text_grad_norms": [round(float(n), 5) for n in norms],
        "valid": result.valid, "test": result.test, "epoch_seconds": result.epoch_seconds,
        "fit_s": fit_s, "setup_s": t_fit - t_start, "steps": steps,
        "syncs_per_step": {k: v / args.sync_debug for k, v in syncs.most_common()} if args.sync_debug else None,
        "waits": {**{k: v for k, v in waits.items() if k != "unique_n"},
                  "unique_mean": float(np.mean(waits["unique_n"])) if waits["unique_n"] else None},
    })
    if ctx.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.label}.json").write_text(json.dumps(out, indent=1) + "\n")
        brief = {k: out[k] for k in ("label", "world", "sdpa", "steps", "fit_s", "epoch_seconds")}
        brief["loss_first"] = out["losses"][:3]
        brief["loss_at"] = {i: out["losses"][i] for i in (10, 50, 100, 200) if i < len(out["losses"])}
        brief["loss_last"] = out["losses"][-3:]
        brief["valid_hr10"] = out["valid"].get("hr@10")
        brief["test_hr10"] = out["test"].get("hr@10")
        brief["waits"] = out["waits"]
        if out["step_ms"]:
            brief["step_ms"] = {k: round(v, 1) for k, v in out["step_ms"].items() if k != "all"}
        if "profile" in out:
            brief["profile"] = {k: out["profile"][k] for k in ("dev_ms_per_step", "cpu_ms_per_step")}
        if "split_check" in out:
            brief["split_check"] = out["split_check"]
        if out["syncs_per_step"]:
            brief["syncs_per_step"] = out["syncs_per_step"]
        print(json.dumps(brief), flush=True)
    from tcf.util.dist import shutdown

    shutdown()


if __name__ == "__main__":
    main()
