"""Training speed and host memory of a text-based SASRec with the top N blocks of an LM fine-tuned.

Part 1 (speed): a synthetic dataset, an OPT-shaped random-weight checkpoint (real config, bf16
safetensors) with a BPE tokenizer trained on the item titles, tcf's own pre-inference on the GPU, then
tcf's Trainer (AdamW, bf16 autocast, clipping) for ``--epochs`` epochs. Reports steps/s and items
encoded per second by the tower (unique items of each batch through the unfrozen blocks, counted from
the batches the Trainer draws), against the compute floor measured in the same run: the same blocks,
forward + backward under the same autocast, on GPU-resident inputs of the mean batch's shape.

Part 2 (host memory): the same tower over latents of ``--million`` items memory-mapped from disk (a
sparse file of the real shape, so 1M x 30 x 2048 bf16 = 123 GB needs no disk), trained for ``--steps``
steps; peak anonymous and file-backed resident memory of the process, against the bytes a loader that
reads the whole latents into memory (as the reference code does) would need.

    python bench/text_train.py --model opt-1.3b --unfreeze 2 --workdir /tmp/tcf-text --out $OUT/text_train.json
    python bench/text_train.py --model tiny --users 400 --items 300 --million 20000 --steps 5 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
from preinfer import CONFIGS, build_checkpoint

from tcf.config import Config
from tcf.data.prepare import Prepared
from tcf.experiment import prepared_data
from tcf.lm.tiny import train_tokenizer
from tcf.preinfer.encode import model_dir_of, run_infer_job
from tcf.preinfer.latents import LatentStore
from tcf.rec.batches import global_batches
from tcf.rec.losses import log_popularity
from tcf.rec.objective import SASRecObjective
from tcf.rec.text_towers import TextSource
from tcf.rec.trainer import Trainer, param_groups
from tcf.util.dist import DistContext


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakRss:
    """Samples RssAnon / RssFile every 20 ms on a thread: the peak of what the process holds."""

    def __init__(self) -> None:
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.anon = max(self.anon, _status_kib("RssAnon") << 10)
            self.file = max(self.file, _status_kib("RssFile") << 10)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _config(dataset: Path, model_dir: Path, args: argparse.Namespace, device: str) -> Config:
    return Config.model_validate({
        "seed": 0, "dataset": {"path": str(dataset)},
        "model": {"item_tower": "text", "embedding_dim": args.dim, "dropout": 0.1},
        "train": {"batch_size": args.batch, "epochs": args.epochs, "patience": 100, "device": device,
                  "examples": "windows", "text_lr": 5e-5},  # the windows path its figures were measured on
        "eval": {"batch_size": 4096},
        "text_encoder": {"model": str(model_dir), "max_tokens": args.max_tokens, "unfreeze": args.unfreeze,
                         "gpu_memory_budget": args.budget},
    })


def _unique_per_step(data: Prepared, cfg: Config, epoch: int) -> list[int]:
    """Items the tower encodes in each step of ``epoch``: the unique ids of the batch's sequences."""
    seqs = data.train_sequences()
    out = []
    for gb in global_batches(len(seqs), cfg.train.batch_size, cfg.seed, epoch, 1):
        ids = np.unique(seqs[gb.numpy()])
        out.append(int((ids != 0).sum()))
    return out


def compute_floor(tower: torch.nn.Module, n_items: int, length: int, device: torch.device, dtype: torch.dtype,
                  reps: int = 10) -> float:
    """Seconds of forward + backward of the tower's blocks on [n_items, length, H] already on the GPU."""
    blocks = tower.blocks
    x = torch.randn(n_items, length, tower.width, device=device)
    mask = torch.ones(n_items, length, dtype=torch.long, device=device)
    times = []
    for i in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = blocks(x, mask)
        out.float().pow(2).mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    blocks.zero_grad(set_to_none=True)
    return float(np.median(times))


def block_flops(n_tokens: int, hidden: int, ffn: int, length: int, n_blocks: int) -> float:
    """Forward + backward FLOPs of ``n_blocks`` decoder blocks (matmuls and attention scores)."""
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * length * hidden
    return 3.0 * per_token * n_tokens * n_blocks


def speed(args: argparse.Namespace, work: Path, model_dir: Path, device: torch.device) -> dict:
    from tcf.data.reader import load_dataset
    from tcf.data.synth import synth_dataset

    dataset = work / "data"
    if not (dataset / "behaviors.tsv").exists():
        synth_dataset(dataset, users=args.users, items=args.items, seed=0)
    if not (model_dir / "tokenizer.json").exists():
        train_tokenizer(model_dir, load_dataset(dataset).item_texts, vocab_size=args.vocab)
    cfg = _config(dataset, model_dir, args, device.type)
    data = prepared_data(cfg)
    t0 = time.perf_counter()
    latents, _ = run_infer_job(cfg, work / "e.db", device=device)
    infer_s = time.perf_counter() - t0
    te = cfg.text_encoder
    ctx = DistContext(0, 1, device)
    text = TextSource(latents, model_dir_of(te), te.unfreeze, te.pooling, te.normalize)
    trainer = Trainer(cfg, data, ctx, work / "ckpt", text=text)
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    lengths = LatentStore(latents).lengths()
    steps = [_unique_per_step(data, cfg, e) for e in range(1, args.epochs + 1)]
    warm = slice(1, None) if args.epochs > 1 else slice(None)
    epoch_s = float(np.mean(result.epoch_seconds[warm]))
    n_steps = len(steps[0])
    items = float(np.mean([sum(s) for s in steps[warm]]))
    mean_unique = int(round(items / n_steps))
    length = int(np.percentile(lengths, 90))  # a batch is trimmed to its longest item: near the top lengths
    tower = trainer.model.item_tower
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    floor_s = compute_floor(tower, mean_unique, length, device, dtype)
    c = json.loads((model_dir / "config.json").read_text())
    flops = block_flops(mean_unique * length, c["hidden_size"], c["ffn_dim"], length, args.unfreeze)
    return {
        "users": data.n_users, "items": data.n_items, "batch_size": args.batch, "unfreeze": args.unfreeze,
        "title_tokens_mean": float(lengths.mean()), "title_tokens_p90": length,
        "preinfer_seconds": infer_s, "fit_seconds": fit_s, "epoch_seconds": result.epoch_seconds,
        "eval_seconds": result.eval_seconds, "steps_per_epoch": n_steps,
        "steps_per_s": n_steps / epoch_s, "items_encoded_per_s": items / epoch_s,
        "unique_items_per_step": mean_unique,
        "floor_step_seconds": floor_s, "floor_steps_per_s": 1.0 / floor_s,
        "floor_items_per_s": mean_unique / floor_s, "step_seconds": epoch_s / n_steps,
        "floor_over_step": floor_s / (epoch_s / n_steps),
        "floor_tflops": flops / floor_s / 1e12,
        "test": result.test,
    }


def million(args: argparse.Namespace, work: Path, model_dir: Path, device: torch.device) -> dict:
    """Train a few steps over memory-mapped latents of ``args.million`` items; peak host memory."""
    n, users, length = args.million, args.million_users, args.max_tokens
    c = json.loads((model_dir / "config.json").read_text())
    hidden, depth = c["hidden_size"], c["num_hidden_layers"] - args.unfreeze
    folder = work / "latents-1m"
    shutil.rmtree(folder, ignore_errors=True)
    store = LatentStore(folder)
    rng = np.random.default_rng(0)
    keys = [f"i{k}" for k in range(n)]
    store.write_items(keys, rng.integers(8, length + 1, size=n))
    path = store.path(depth)
    with open(path, "wb") as f:  # the real layout, sparse: holes read as zeros and cost no disk
        np.lib.format.write_array_header_1_0(f, {"descr": "<u2", "fortran_order": False, "shape": (n, length, hidden)})
        f.truncate(f.tell() + n * length * hidden * 2)
    store.update_state(boundaries=[depth], latent_dtype="bf16")

    width = 23  # L + 3 with L = 20
    pop = 1.0 / np.arange(1, n + 1) ** 0.8
    seqs = rng.choice(n, size=(users, width), p=pop / pop.sum()) + 1
    data = Prepared(item_keys=["", *keys], user_keys=[f"u{u}" for u in range(users)], seqs=seqs.astype(np.int64),
                    lengths=np.full(users, width), max_seq_len=20,
                    popularity=np.bincount(seqs[:, :-2].ravel(), minlength=n + 1).astype(np.int64))
    cfg = _config(work / "unused", model_dir, args, device.type)
    rss0 = _status_kib("RssAnon") << 10
    with PeakRss() as peak:
        trainer = Trainer(cfg, data, DistContext(0, 1, device), work / "ckpt-1m",
                          text=TextSource(folder, model_dir, args.unfreeze, "mean"))
        model = trainer.model.to(device)
        objective = SASRecObjective(model, log_popularity(data.popularity).to(device), "ibce", n)
        optimizer = torch.optim.AdamW(param_groups(model, cfg))
        train = torch.as_tensor(data.train_sequences(), device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        t0 = time.perf_counter()
        for step in range(args.steps):
            rows = train[step * args.batch:(step + 1) * args.batch]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss_sum, n_terms = objective(rows, 0, len(rows), DistContext(0, 1, device), gen)
            optimizer.zero_grad(set_to_none=True)
            (loss_sum.float() / n_terms.clamp_min(1)).backward()
            optimizer.step()
        float(loss_sum.detach())  # waits for the GPU
        seconds = time.perf_counter() - t0
    latents_bytes = n * length * hidden * 2
    shutil.rmtree(folder, ignore_errors=True)
    return {"items": n, "latent_shape": [n, length, hidden], "latents_gib": latents_bytes / 2**30,
            "steps": args.steps, "seconds": seconds, "rss_anon_before_gib": rss0 / 2**30,
            "peak_rss_anon_gib": peak.anon / 2**30, "peak_rss_anon_increase_gib": (peak.anon - rss0) / 2**30,
            "peak_rss_file_gib": peak.file / 2**30,
            "whole_latents_in_memory_gib": latents_bytes / 2**30,
            "memory_ratio_whole_over_tcf": latents_bytes / max(peak.anon, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="opt-1.3b", choices=sorted(CONFIGS))
    p.add_argument("--unfreeze", type=int, default=2)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=30)
    p.add_argument("--vocab", type=int, default=1000, help="BPE vocabulary: small enough that titles span 8-30 tokens")
    p.add_argument("--budget", default="16GiB")
    p.add_argument("--million", type=int, default=1_000_000)
    p.add_argument("--million-users", type=int, default=20000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tcf-text-bench"))
    p.add_argument("--out", type=Path, default=Path("bench/text_train.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_checkpoint(args.model, args.workdir / args.model, device)
    out = {"model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "cpus": os.cpu_count()}
    out["speed"] = speed(args, args.workdir, model_dir, device)
    print(json.dumps(out["speed"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    out["million"] = million(args, args.workdir, model_dir, device)
    print(json.dumps(out["million"], indent=1))
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
