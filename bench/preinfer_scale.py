#!/usr/bin/env python
"""Pre-inference at 175B scale: a slice of the real OPT-175B shape under a 12 GiB budget, over more items than the
disk could hold one boundary of, against the same slice held whole on the GPU over the same tokens.

The slice: ``--blocks`` blocks of OPT-175B (hidden 12,288, FFN 49,152, 96 heads, its vocabulary and positions),
random bf16 weights saved as sharded safetensors. Items: random token ids with title-like lengths (8-30 tokens).
tcf plans with its schedule planner (the free disk of ``--workdir`` and the host memory probed, the budget
enforced with ``torch.cuda.set_per_process_memory_fraction``) and runs what it chose, from the checkpoint to
committed mean/first/last embeddings; its time includes every weight load. The ceiling holds every block on the
GPU (loaded before timing) and pushes the same batches through, mean-pooling on the GPU. Peak GPU memory (the
allocator's), peak host RSS and peak extra disk use are sampled while tcf runs. The two outputs are compared.

    python bench/preinfer_scale.py --blocks 8 --items 60000 --workdir /tmp/scale --out $OUT/scale.json
    python bench/preinfer_scale.py --hidden 256 --blocks 4 --items 3000 --device cpu --workdir /tmp/s  # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformers import OPTConfig, OPTModel

from tcf.lm.checkpoint import ModelShape, model_size
from tcf.lm.loader import load_stage
from tcf.lm.pooling import pool
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.planner import format_plan
from tcf.preinfer.runner import length_batches, run_preinference
from tcf.preinfer.schedule import Machine, plan_schedule
from tcf.util.units import GiB, parse_bytes

VOCAB, PAD, BOS = 50272, 1, 2


def build(out: Path, hidden: int, blocks: int, device: torch.device) -> Path:
    """The slice, random bf16 weights (std 0.02 as OPT initialises), shards of 4 GB."""
    if (out / "config.json").is_file():
        return out
    config = OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=blocks, ffn_dim=4 * hidden,
                       num_attention_heads=max(1, hidden // 128), max_position_embeddings=2048,
                       word_embed_proj_dim=hidden, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=BOS,
                       torch_dtype="bfloat16")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = OPTModel(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out, max_shard_size="4GB")
    del model
    return out


def titles(n: int, max_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token ids of ``n`` items, 8-30 real tokens each (BOS first, as OPT's tokenizer writes)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, min(30, max_tokens) + 1, n)
    ids = np.full((n, max_tokens), PAD, dtype=np.int64)
    ids[:, 1:] = rng.integers(3, VOCAB, (n, max_tokens - 1))
    ids[:, 0] = BOS
    ids[np.arange(max_tokens) >= lengths[:, None]] = PAD
    return ids, lengths


class Peaks:
    """Samples host RSS and disk use of a folder's filesystem every 0.1 s while it runs."""

    def __init__(self, folder: Path):
        self.folder, self.rss, self.disk0 = folder, 0, shutil.disk_usage(folder).used
        self.disk, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                rss = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))
            self.rss = max(self.rss, rss)
            self.disk = max(self.disk, shutil.disk_usage(self.folder).used - self.disk0)
            self._stop.wait(0.1)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ceiling(model_dir: Path, shape: ModelShape, ids: np.ndarray, lengths: np.ndarray, batch: int,
            device: torch.device, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """Seconds to push every item through the whole slice held on the GPU; mean-pooled embeddings."""
    stage = load_stage(model_dir, 0, shape.n_blocks, include_embedding=True, include_final=True, dtype=dtype,
                       device=device)
    stage.inspect_masks = False
    batches = length_batches(lengths, batch)
    out = torch.empty(len(lengths), shape.hidden, dtype=torch.float32, device=device)

    def run(subset: list[np.ndarray]) -> None:
        with torch.inference_mode():
            for rows in subset:
                length = int(lengths[rows].max())
                mask = torch.from_numpy(np.arange(length) < lengths[rows][:, None]).to(device)
                x = torch.from_numpy(ids[rows, :length]).to(device)
                h = stage(x, mask.long(), padded=bool(lengths[rows].min() < length)).masked_fill(~mask[..., None], 0)
                out[torch.from_numpy(rows).to(device)] = pool(h, mask)["mean"]

    run(batches[:2] + batches[-2:])  # kernels of the shortest and the longest batches
    sync(device)
    t0 = time.perf_counter()
    run(batches)
    sync(device)
    seconds = time.perf_counter() - t0
    return seconds, out.float().cpu()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=12288)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--items", type=int, default=60000)
    p.add_argument("--max-tokens", type=int, default=30)
    p.add_argument("--budget", default="12GiB")
    p.add_argument("--host-budget", default=None, help="host memory a chunk may pin (default: the planner's)")
    p.add_argument("--schedule", default="auto", choices=["auto", "range", "chunk"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = build(args.workdir / "opt-slice", args.hidden, args.blocks, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    built = time.perf_counter() - t0
    ids, lengths = titles(args.items, args.max_tokens)
    keys = [f"i{i}" for i in range(args.items)]
    size = model_size(model_dir, "bf16" if device.type == "cuda" else "fp32")
    budget = parse_bytes(args.budget)
    latent = "bf16" if device.type == "cuda" else "fp32"
    machine = Machine.probe(args.workdir, parse_bytes(args.host_budget) if args.host_budget else None)
    plan = plan_schedule(size.footprint, size.shape, max_tokens=args.max_tokens, budget=budget, n_items=args.items,
                         n_tokens=int(lengths.sum()), machine=machine, schedule=args.schedule,
                         compute_dtype="bf16" if device.type == "cuda" else "fp32", latent_dtype=latent)
    print(format_plan(plan), flush=True)
    boundary = args.items * args.max_tokens * args.hidden * (2 if latent == "bf16" else 4)
    report = {"hidden": args.hidden, "blocks": args.blocks, "items": args.items, "tokens": int(lengths.sum()),
              "budget": budget, "schedule": plan.schedule, "chunk_tokens": plan.chunk_tokens,
              "ranges": [[r.start, r.stop] for r in plan.ranges], "batch": plan.ranges[0].batch_size,
              "boundary_bytes": boundary, "free_disk": machine.free_disk, "host_budget": machine.host_budget,
              "weights_bytes": sum(size.footprint.block_bytes) + size.footprint.embedding_bytes, "build_s": built,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "plan_estimate_s": plan.estimated_seconds}
    out = args.workdir / "latents"
    shutil.rmtree(out, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(budget / torch.cuda.get_device_properties(device).total_memory)
        torch.cuda.reset_peak_memory_stats(device)
    with Peaks(args.workdir) as peaks:
        t0 = time.perf_counter()
        run_preinference(model_dir, ids, lengths, keys, plan, out, dtype=dtype, latent_dtype=latent, device=device)
        tcf_s = time.perf_counter() - t0
    report.update(tcf_s=tcf_s, tcf_items_per_s=args.items / tcf_s, peak_host_rss=peaks.rss, peak_extra_disk=peaks.disk,
                  peak_gpu_reserved=torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
                  chunks=len(LatentStore(out).state().get("chunks", [])))
    print(f"tcf {plan.schedule}: {tcf_s:.1f} s, {args.items / tcf_s:,.0f} items/s, peak GPU "
          f"{(report['peak_gpu_reserved'] or 0) / GiB:.2f} GiB, host RSS {peaks.rss / GiB:.2f} GiB, extra disk "
          f"{peaks.disk / GiB:.2f} GiB (one boundary would be {boundary / GiB:.1f} GiB, "
          f"{machine.free_disk / GiB:.1f} GiB free)", flush=True)
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)
    ceiling_s, ref = ceiling(model_dir, size.shape, ids, lengths, plan.ranges[0].batch_size, device, dtype)
    got = LatentStore(out).read("mean").float()
    bad_got, bad_ref = (~torch.isfinite(got).all(1)), (~torch.isfinite(ref).all(1))
    ok = ~(bad_got | bad_ref)
    diff = (got[ok] - ref[ok]).abs().max().item()
    rel = ((got[ok] - ref[ok]).norm(dim=1) / ref[ok].norm(dim=1).clamp_min(1e-6)).max().item()
    report.update(ceiling_s=ceiling_s, ceiling_items_per_s=args.items / ceiling_s, ratio=ceiling_s / tcf_s,
                  max_abs_diff=diff, max_rel_diff=rel, nonfinite_rows_tcf=int(bad_got.sum()),
                  nonfinite_rows_ceiling=int(bad_ref.sum()), same_nonfinite_rows=bool((bad_got == bad_ref).all()),
                  nonfinite_lengths=sorted({int(x) for x in lengths[(bad_got | bad_ref).numpy()]})[:10])
    print(f"non-finite rows: tcf {int(bad_got.sum())}, ceiling {int(bad_ref.sum())}, same rows "
          f"{bool((bad_got == bad_ref).all())}, their lengths {report['nonfinite_lengths']}", flush=True)
    print(f"ceiling (whole slice on the GPU, same batches): {ceiling_s:.1f} s, {args.items / ceiling_s:,.0f} items/s; "
          f"tcf / ceiling = {ceiling_s / tcf_s:.3f}; max |diff| {diff:.3g}, max relative {rel:.3g}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if int(bad_got.sum()) or int(bad_ref.sum()) else 0  # a non-finite embedding is a failed run


if __name__ == "__main__":
    raise SystemExit(main())
