"""Block-wise pre-inference speed: tcf under a GPU-memory budget vs the whole model vs cpu_offload.

One run, same random-weight checkpoint (built from a real OPT config, saved as sharded safetensors),
same items: tcf's planner + runner at ``--budget``, Hugging Face ``OPTModel`` whole on the GPU, and
accelerate's ``cpu_offload`` (weights streamed per batch). Prints items/s, peak GPU memory and ratios,
for all-30-token items (padded) and for realistic title lengths (8-30 tokens), and writes JSON.
Every contender produces the same output, mean-pooled item embeddings on the host. tcf's time includes
loading each range's weights and writing the latents between ranges to disk; the whole-model time
excludes loading the model (it is the in-memory compute ceiling tcf is measured against).

``--budgets 4GiB,6GiB,16GiB`` also checks the planner: for each budget, tcf's plan runs the padded
items and the measured peak GPU memory is compared with the budget (it must stay below it and use 70%).

    python bench/preinfer.py --model opt-6.7b --items 16384 --budget 6GiB --budgets 4GiB,6GiB,16GiB \
        --workdir /tmp/tcf-bench --out $OUT/preinfer.json
    python bench/preinfer.py --model tiny --items 512 --device cpu          # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import OPTConfig, OPTModel

from tcf.lm.checkpoint import model_size
from tcf.preinfer.latents import LatentStore
from tcf.preinfer.planner import format_plan, plan_ranges
from tcf.preinfer.runner import run_preinference
from tcf.util.units import parse_bytes

# Shapes of the published OPT configs (facebook/opt-*), so the compute matches the real models.
CONFIGS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, ffn_dim=256, num_attention_heads=4),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32),
    "opt-6.7b": dict(hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32),
    "opt-13b": dict(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40),
}
VOCAB, PAD, BOS = 50272, 1, 2


def build_checkpoint(name: str, out: Path, device: torch.device) -> Path:
    """Random weights from the real config, in bf16, saved as sharded safetensors (2 GB shards)."""
    if (out / "config.json").is_file():
        return out
    c = CONFIGS[name]
    config = OPTConfig(vocab_size=VOCAB, max_position_embeddings=2048, word_embed_proj_dim=c["hidden_size"],
                       pad_token_id=PAD, bos_token_id=BOS, eos_token_id=BOS, torch_dtype="bfloat16", **c)
    torch.manual_seed(0)
    with torch.device(device):
        model = OPTModel(config).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="2GB")
    del model
    os.sync()  # no writeback of the checkpoint competing with the contenders
    return out


def make_items(n: int, tokens: int, realistic: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    lengths = g.integers(8, tokens + 1, size=n) if realistic else np.full(n, tokens)
    ids = np.full((n, tokens), PAD, dtype=np.int32)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        ids[rows, :length] = g.integers(3, VOCAB, size=(len(rows), length))
    ids[:, 0] = BOS
    return ids, lengths.astype(np.int32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_tcf(ckpt: Path, ids: np.ndarray, lengths: np.ndarray, budget: str, device: torch.device,
            work: Path) -> dict:
    dtype = "bf16" if device.type == "cuda" else "fp32"
    size = model_size(ckpt, dtype)
    plan = plan_ranges(size.footprint, size.shape, max_tokens=ids.shape[1], budget=parse_bytes(budget),
                       n_items=len(ids), compute_dtype=dtype, latent_dtype=dtype)
    print(format_plan(plan), flush=True)
    keys = [f"i{r}" for r in range(len(ids))]
    shutil.rmtree(work, ignore_errors=True)
    os.sync()
    _reset(device)
    t0 = time.perf_counter()
    run_preinference(ckpt, ids, lengths, keys, plan, work, device=device,
                     dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = _peak(device)
    state = LatentStore(work).state()
    shutil.rmtree(work, ignore_errors=True)
    budget_gib = parse_bytes(budget) / 2**30
    return {"items_per_s": len(ids) / seconds, "seconds": seconds, "peak_gib": peak, "budget_gib": budget_gib,
            "peak_over_budget": None if peak is None else peak / budget_gib,
            "ranges": [[r.start, r.stop, r.batch_size] for r in plan.ranges],
            "predicted_peak_gib": plan.peak_bytes / 2**30, "timings": state.get("timings", [])}


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(torch.float32)
    return (hidden.float() * m).sum(1) / m.sum(1)


def _encode_timed(model, ids: np.ndarray, lengths: np.ndarray, device: torch.device, batch: int,
                  warmup: bool) -> float:
    """Seconds to turn every item into a mean-pooled embedding on the host, ``batch`` items at a time."""
    mask = torch.from_numpy(np.arange(ids.shape[1]) < lengths[:, None]).long()
    x = torch.from_numpy(ids).long()
    with torch.inference_mode():
        if warmup:
            model(input_ids=x[:batch].to(device), attention_mask=mask[:batch].to(device))
            _sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(ids), batch):
            m = mask[i:i + batch].to(device)
            out = model(input_ids=x[i:i + batch].to(device), attention_mask=m)
            _mean_pool(out.last_hidden_state, m).to("cpu")
        _sync(device)
    return time.perf_counter() - t0


def run_whole(ckpt: Path, ids: np.ndarray, lengths: np.ndarray, device: torch.device, batch: int) -> dict:
    """The whole model on the GPU, batches padded to the token cap (what a plain HF loop does)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    _reset(device)
    model = OPTModel.from_pretrained(ckpt, dtype=dtype).to(device).eval()
    seconds = _encode_timed(model, ids, lengths, device, batch, warmup=True)
    peak = _peak(device)
    del model
    return {"items_per_s": len(ids) / seconds, "seconds": seconds, "peak_gib": peak, "batch": batch}


def run_offload(ckpt: Path, ids: np.ndarray, lengths: np.ndarray, device: torch.device, batch: int,
                n: int) -> dict | None:
    """accelerate's cpu_offload: every batch streams every block's weights to the GPU."""
    if device.type != "cuda":
        return None
    from accelerate import cpu_offload

    _reset(device)
    model = OPTModel.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    cpu_offload(model, execution_device=device)
    seconds = _encode_timed(model, ids[:n], lengths[:n], device, batch, warmup=False)
    peak = _peak(device)
    del model
    return {"items_per_s": n / seconds, "seconds": seconds, "peak_gib": peak, "batch": batch, "items": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(CONFIGS), default="opt-6.7b")
    p.add_argument("--items", type=int, default=16384)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--budget", default="6GiB", help="tcf's GPU-memory budget")
    p.add_argument("--budgets", default="", help="planner check: comma-separated budgets to run tcf under")
    p.add_argument("--whole-batch", type=int, default=1024)
    p.add_argument("--offload-batch", type=int, default=256)
    p.add_argument("--offload-items", type=int, default=2048, help="cpu_offload is slow: time this many items")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", help="keeps the checkpoint between runs (default: a temporary folder)")
    p.add_argument("--out", default="bench/preinfer.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tcf-preinfer-"))
    ckpt = build_checkpoint(args.model, work / args.model, device)
    report: dict = {"model": args.model, "items": args.items, "tokens": args.tokens, "budget": args.budget,
                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "cases": {}}
    if device.type == "cuda":
        # CUDA context, cuBLAS and lazy kernel loading are paid before any timing, as for the whole model:
        # one full batch of every length, so every kernel shape tcf uses has run once (HF pads: one shape)
        # (batches without padding take the causal kernels, padded ones the masked kernels: both are warmed)
        ids, lengths = make_items(args.tokens * 256, args.tokens, realistic=False)
        lengths = np.repeat(np.arange(1, args.tokens + 1), 256).astype(np.int32)
        ids[np.arange(args.tokens)[None, :] >= lengths[:, None]] = PAD
        report["warmup"] = [run_tcf(ckpt, ids, lengths, args.budget, device, work / "latents-warmup")]
        ids, lengths = make_items(4096, args.tokens, realistic=True, seed=7)
        report["warmup"].append(run_tcf(ckpt, ids, lengths, args.budget, device, work / "latents-warmup"))
    for case, realistic in (("padded", False), ("realistic", True)):
        ids, lengths = make_items(args.items, args.tokens, realistic)
        res = {"mean_tokens": float(statistics.fmean(lengths.tolist())),
               "tcf": run_tcf(ckpt, ids, lengths, args.budget, device, work / f"latents-{case}"),
               "whole": run_whole(ckpt, ids, lengths, device, args.whole_batch),
               "offload": run_offload(ckpt, ids, lengths, device, args.offload_batch, args.offload_items)}
        res["tcf_over_whole"] = res["tcf"]["items_per_s"] / res["whole"]["items_per_s"]
        if res["offload"]:
            res["tcf_over_offload"] = res["tcf"]["items_per_s"] / res["offload"]["items_per_s"]
        report["cases"][case] = res
        for name in ("tcf", "whole", "offload"):
            r = res[name]
            if r:
                peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
                print(f"{case:9s} {name:8s} {r['items_per_s']:10.1f} items/s   peak GPU {peak} GiB", flush=True)
        print(f"{case:9s} tcf/whole {res['tcf_over_whole']:.2f}"
              + (f"  tcf/offload {res['tcf_over_offload']:.1f}" if res["offload"] else ""), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    if budgets:
        ids, lengths = make_items(args.items, args.tokens, realistic=False)
        report["planner"] = {}
        for budget in budgets:
            r = run_tcf(ckpt, ids, lengths, budget, device, work / "latents-planner")
            report["planner"][budget] = r
            ratio = "-" if r["peak_over_budget"] is None else f"{r['peak_over_budget']:.1%}"
            print(f"planner {budget:>7s}: peak {r['peak_gib'] or 0:.2f} GiB = {ratio} of the budget "
                  f"(predicted {r['predicted_peak_gib']:.2f}), {r['items_per_s']:.1f} items/s, "
                  f"ranges {r['ranges']}", flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
