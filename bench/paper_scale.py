#!/usr/bin/env python
"""SASRec at the TCF paper's scale: seconds per epoch and per full-ranking evaluation, against the floor.

A MIND-sized synthetic dataset (``tcf data synth``: 200,000 users, 50,000 items by default), the method's
recipe (IBCE, batch 64 user windows, L 20, 2 blocks, dropout 0.1, bf16 on a GPU) with
- an ID item tower (d 64), and
- a frozen text tower (d 512) on the pooled output of a random-weight OPT (``--text-hidden`` wide,
  2 blocks; its width, not its weights, is what a training step pays for), pre-inferred by tcf.

For each tower it trains ``--epochs`` epochs with training steps replayed from CUDA graphs (tcf's
default) and, unless ``--no-eager``, the same epochs with steps launched one by one (``train.cuda_graph:
false``, the code before graphs), same seed: the validation HR@10 / NDCG@10 after each epoch should agree
within GPU noise. The floors, measured in the same run on the same GPU:
- step floor: the captured step replayed back to back on one batch (no host work between steps),
  times the steps of an epoch;
- evaluation floor: the scoring matmul alone (every user's query against every item, fp32) for all users.

With ``--recbole``, RecBole 1.2.1's SASRec trains one epoch on the same sequences (``train_speed.py``'s
runner: identical splits, checked) with its own loss and batches (full-softmax CE over (prefix, next item)
examples, 64 users' worth per step, fp32), beside tcf with those settings (``loss: ce``, ``examples:
prefixes``, ``amp: off``): the peer's epoch and tcf's, measured in the same run.

    python bench/paper_scale.py --workdir /tmp/paper --out $OUT/paper_scale.json
    python bench/paper_scale.py --workdir /tmp/paper --towers id --no-eager --recbole --out $OUT/rb.json
    python bench/paper_scale.py --users 3000 --items 800 --device cpu --epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tcf.config import Config  # noqa: E402
from tcf.data.prepare import Prepared  # noqa: E402
from tcf.experiment import prepared_data  # noqa: E402
from tcf.rec.trainer import Trainer  # noqa: E402
from tcf.util.dist import DistContext  # noqa: E402
from tcf.util.progress import Reporter  # noqa: E402


class Curve(Reporter):
    """Keeps each epoch's validation metrics."""

    def __init__(self) -> None:
        self.valid: list[dict[str, float]] = []

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        self.valid.append({"epoch": epoch, "loss": loss, "seconds": seconds, **metrics})
        print(f"  epoch {epoch}: {seconds:.2f} s, loss {loss:.4f}, valid hr@10 {metrics.get('hr@10', 0):.4f}",
              flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(dataset: Path, tower: str, args: argparse.Namespace, model_dir: Path | None, graphs: bool,
           recbole: bool = False) -> Config:
    """The method's recipe (Xavier init, as its figures were measured); ``recbole``: RecBole's SASRec settings
    (CE over prefixes, fp32, no weight decay, N(0, 0.02) init)."""
    text = tower == "text"
    peer = {"loss": "ce", "examples": "prefixes", "amp": "off", "weight_decay": 0.0} if recbole else {}
    return Config.model_validate({
        "seed": args.seed, "dataset": {"path": str(dataset), "max_seq_len": 20},
        "model": {"architecture": "sasrec", "item_tower": tower, "embedding_dim": 512 if text else 64,
                  "num_blocks": 2, "num_heads": 2, "dropout": 0.1, "init": "normal" if recbole else "xavier"},
        "train": {"loss": "ibce", "examples": "windows", "batch_size": args.batch, "epochs": args.epochs,
                  "patience": 1000, "device": args.device, "cuda_graph": graphs, "lr": 1e-3, "weight_decay": 0.1,
                  **peer},
        "eval": {"batch_size": args.eval_batch},
        **({"text_encoder": {"model": str(model_dir), "max_tokens": 30, "latent_dtype": "bf16"}} if text else {}),
    })


def step_floor(trainer: Trainer, device: torch.device, reps: int = 200) -> float | None:
    """Seconds per step of the captured step replayed back to back (the GPU's time for one step)."""
    g = trainer.graphed
    if g is None or g.graph is None:
        return None
    for _ in range(10):
        g.graph.replay()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        g.graph.replay()
    _sync(device)
    return (time.perf_counter() - t0) / reps


@torch.no_grad()
def eval_floor(trainer: Trainer, data: Prepared, device: torch.device, batch: int) -> float:
    """Seconds of the scoring matmuls of a full-ranking evaluation: every user's query (random, d wide)
    against the real item table, fp32, in the evaluation's batches."""
    model = trainer.model.eval()
    table = model.item_table(data.n_items).float()
    q = torch.randn(batch, table.shape[1], device=device)
    n_batches = -(-data.n_users // batch)
    (q @ table.T).sum()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        (q @ table.T).amax()  # a reduction, so the product is really computed; ~free next to the matmul
    _sync(device)
    return time.perf_counter() - t0


def train(cfg: Config, data: Prepared, work: Path, text, device: torch.device) -> tuple[Trainer, dict]:
    curve = Curve()
    ctx = DistContext(0, 1, device)
    trainer = Trainer(cfg, data, ctx, work, reporter=curve, text=text, identity={"run": "paper-scale"})
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = trainer.fit()
    _sync(device)
    steps = -(-data.n_users // cfg.train.batch_size)
    return trainer, {
        "cuda_graph": trainer.graphed is not None, "wall_seconds": time.perf_counter() - t0,
        "epoch_seconds": result.epoch_seconds, "steps_per_epoch": steps,
        "epoch_seconds_warm": (statistics.fmean(result.epoch_seconds[1:]) if len(result.epoch_seconds) > 1
                               else result.epoch_seconds[0]),
        "eval_seconds": result.eval_seconds, "valid_curve": curve.valid, "test": result.test,
    }


def text_source(dataset: Path, work: Path, args: argparse.Namespace, device: torch.device):
    from tcf.data.reader import load_dataset
    from tcf.lm.tiny import build_tiny_opt
    from tcf.preinfer.encode import model_dir_of, run_infer_job
    from tcf.rec.text_towers import TextSource

    model_dir = work / f"opt-{args.text_hidden}"
    if not (model_dir / "config.json").exists():
        build_tiny_opt(model_dir, load_dataset(dataset).item_texts, hidden=args.text_hidden, n_blocks=2,
                       heads=max(1, args.text_hidden // 64))
    cfg = config(dataset, "text", args, model_dir, True)
    t0 = time.perf_counter()
    latents, _ = run_infer_job(cfg, work / "infer.db", device=device)
    te = cfg.text_encoder
    source = TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling, te.normalize)
    return model_dir, source, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=64, help="user windows per step (the method's 64)")
    p.add_argument("--eval-batch", type=int, default=4096, help="users per full-ranking batch")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the first includes the capture")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--towers", default="id,text", help="comma-separated: id, text")
    p.add_argument("--text-hidden", type=int, default=768, help="width of the random OPT of the text tower")
    p.add_argument("--no-eager", action="store_true", help="skip the runs with steps launched one by one")
    p.add_argument("--recbole", action="store_true",
                   help="also one RecBole SASRec epoch and tcf with its settings (ID tower)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", required=True, help="scratch folder (the dataset is kept for later runs)")
    p.add_argument("--out", help="JSON of the figures")
    args = p.parse_args(argv)
    towers = [t for t in args.towers.split(",") if t]
    if set(towers) - {"id", "text"} or not towers:
        p.error("--towers takes id and/or text")
    device = torch.device(args.device)
    work = Path(args.workdir)
    dataset = work / f"synth-{args.users}x{args.items}"
    if not (dataset / "behaviors.tsv").exists():
        from tcf.data.synth import synth_dataset

        t0 = time.perf_counter()
        synth_dataset(dataset, users=args.users, items=args.items, seed=0)
        print(f"synth: {args.users} users x {args.items} items in {time.perf_counter() - t0:.1f} s", flush=True)
    report: dict = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "device": args.device, "torch": torch.__version__, "host": platform.node(),
                    "cpu_threads": torch.get_num_threads(), "settings": vars(args), "towers": {}}
    for tower in towers:
        text, model_dir = None, None
        if tower == "text":
            model_dir, text, infer_s = text_source(dataset, work, args, device)
            report["preinfer_seconds"] = infer_s
        data = prepared_data(config(dataset, tower, args, model_dir, True))
        report["dataset"] = {"users": data.n_users, "items": data.n_items, "interactions": int(data.lengths.sum())}
        out: dict = {}
        for mode in ("graph", "eager") if not args.no_eager else ("graph",):
            print(f"== {tower} tower, steps {'from a CUDA graph' if mode == 'graph' else 'launched one by one'}",
                  flush=True)
            cfg = config(dataset, tower, args, model_dir, mode == "graph")
            trainer, r = train(cfg, data, work / f"ckpt-{tower}-{mode}", text, device)
            if mode == "graph":
                floor = step_floor(trainer, device)
                r["step_floor_seconds"] = floor
                r["epoch_floor_seconds"] = floor * r["steps_per_epoch"] if floor else None
                r["eval_floor_seconds"] = eval_floor(trainer, data, device, args.eval_batch)
            out[mode] = r
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report["towers"][tower] = out
        g = out["graph"]
        line = (f"{tower}: epoch {g['epoch_seconds_warm']:.2f} s ({g['steps_per_epoch']} steps"
                + (f", floor {g['epoch_floor_seconds']:.2f} s" if g.get("epoch_floor_seconds") else "")
                + f"), evaluation {g['eval_seconds']:.2f} s (matmul floor {g['eval_floor_seconds']:.2f} s)")
        if "eager" in out:
            e = out["eager"]
            line += f"; steps launched one by one: epoch {e['epoch_seconds_warm']:.2f} s"
            for a, b in zip(g["valid_curve"], e["valid_curve"], strict=False):
                line += (f"; epoch {a['epoch']} valid hr@10 {a['hr@10'] * 100:.2f} vs {b['hr@10'] * 100:.2f}, "
                         f"ndcg@10 {a['ndcg@10'] * 100:.2f} vs {b['ndcg@10'] * 100:.2f}")
        print(line, flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.recbole:
        report["recbole_settings"] = against_recbole(dataset, work, args, device)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def against_recbole(dataset: Path, work: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """tcf (graphed steps) and RecBole with RecBole's SASRec settings on the ID tower, one after the other."""
    sys.path.insert(0, str(ROOT / "bench"))
    import train_speed

    cfg = config(dataset, "id", args, None, True, recbole=True)
    data = prepared_data(cfg)
    print("== RecBole's settings: tcf", flush=True)
    trainer, tcf_run = train(cfg, data, work / "ckpt-id-recbole-settings", None, device)
    del trainer
    examples = int((data.lengths - 3).sum())
    per_step = round(args.batch * examples / data.n_users)  # RecBole's batch unit: examples
    print(f"== RecBole's settings: RecBole, one epoch, {per_step} examples per step", flush=True)
    rb = train_speed.run_recbole(cfg, data, work / "recbole-run", args.device,
                                 {"train_batch_size": per_step, "eval_batch_size": args.eval_batch, "epochs": 1})
    rb.pop("config", None)
    print(f"RecBole's settings: tcf epoch {tcf_run['epoch_seconds_warm']:.2f} s, RecBole epoch "
          f"{rb['epoch_seconds'][0]:.2f} s ({rb['epoch_seconds'][0] / tcf_run['epoch_seconds_warm']:.1f}x); "
          f"valid hr@10 after epoch 1: tcf {tcf_run['valid_curve'][0]['hr@10'] * 100:.2f}, "
          f"RecBole {rb['metrics'].get('valid_hit@10', float('nan')) * 100:.2f}", flush=True)
    return {"examples_per_step": per_step, "tcf": tcf_run, "recbole": rb}


if __name__ == "__main__":
    raise SystemExit(main())
