"""Where a pre-inference range's time goes, batch by batch, in one process: the same items encoded several
times (all of them, then rank 0's share of two), each pass timed per batch with CUDA events.

A process's first pass pays one-time costs (library and kernel loading, cuDNN attention's graph for each
new batch shape, pinned host buffers) that a second pass does not; on two GPUs each rank pays them once,
so they decide how close to 2x a data-parallel run gets. Prints, per pass, the range's ``run_s`` (as
state.json records it), the GPU time of every batch, and the host gaps between batches.

    python bench/multi_gpu.py --parts infer --workdir /tmp/mg          # builds the data and the model
    python bench/infer_batches.py --workdir /tmp/mg --passes full,half,full,half --out $OUT/batches.json
    python bench/infer_batches.py --workdir /tmp/mg --passes full,full --cudnn-attention   # the comparison
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcf import config as config_mod  # noqa: E402
from tcf.data.reader import load_dataset  # noqa: E402
from tcf.lm.tokenize import token_table  # noqa: E402
from tcf.preinfer import runner  # noqa: E402
from tcf.preinfer.encode import default_device, make_plan, model_dir_of  # noqa: E402
from tcf.preinfer.latents import LatentStore  # noqa: E402


class _HostEvent:
    """A CPU stand-in for ``torch.cuda.Event`` (a smoke run without a GPU times the host only)."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.t - self.t) * 1e3


def _event():
    return torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else _HostEvent()


class BatchClock:
    """CUDA events around every forward of the stages the runner loads, and host time between them."""

    def __init__(self) -> None:
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event, float, float]] = []
        self._load = runner.load_stage

    def __enter__(self) -> BatchClock:
        def load(*a, **k):
            stage = self._load(*a, **k)
            pending: list = []

            def pre(_m, _args):
                e = _event()
                e.record()
                pending.append((e, time.perf_counter()))

            def post(_m, _args, _out):
                e = _event()
                e.record()
                start, host = pending.pop()
                self.events.append((start, e, host, time.perf_counter()))

            stage.register_forward_pre_hook(pre)
            stage.register_forward_hook(post)
            return stage

        runner.load_stage = load
        return self

    def __exit__(self, *exc) -> None:
        runner.load_stage = self._load

    def summary(self) -> dict:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        gpu = [round(s.elapsed_time(e), 1) for s, e, _, _ in self.events]
        launch = [round((h1 - h0) * 1e3, 1) for _, _, h0, h1 in self.events]
        gaps = [round(self.events[i][0].elapsed_time(self.events[i + 1][0]) - gpu[i], 1)
                for i in range(len(self.events) - 1)]
        return {"gpu_ms": gpu, "host_forward_ms": launch, "gpu_idle_between_ms": gaps, "gpu_ms_sum": round(sum(gpu), 1)}


def warmup(how: str, model: Path, ids: np.ndarray, lengths: np.ndarray, batch: int) -> float:
    """Seconds spent on the chosen warm-up, to tell which first-use cost the first batch pays."""
    t0 = time.perf_counter()
    if how != "none" and not torch.cuda.is_available():
        raise SystemExit("--warmup needs a CUDA GPU")
    if how == "matmul-sdpa":
        a = torch.randn(256, 256, dtype=torch.bfloat16, device="cuda")
        q = torch.randn(8, 4, 16, 64, dtype=torch.bfloat16, device="cuda")
        (a @ a).sum().item()
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()
    elif how.startswith("block"):
        rows = runner.length_batches(lengths, batch)[0][: 64 if how == "block-small" else None]
        length = int(lengths[rows].max())
        stage = runner.load_stage(model, 0, 1, include_embedding=True, include_final=False,
                                  dtype=torch.bfloat16, device="cuda")
        x = torch.from_numpy(ids[rows, :length].astype(np.int64)).cuda()
        mask = torch.from_numpy(np.arange(length) < lengths[rows][:, None]).cuda()
        with torch.inference_mode():
            stage(x, mask.long()).sum().item()
        del stage
        torch.cuda.empty_cache()
    return round(time.perf_counter() - t0, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path, help="bench/multi_gpu.py's workdir (infer.yaml, model)")
    ap.add_argument("--passes", default="full,half,full,half", help="full: every item; half: rank 0's share of 2")
    ap.add_argument("--warmup", default="none", choices=["none", "matmul-sdpa", "block", "block-small"],
                    help="before the passes (untimed): nothing; a small matmul and attention call; block 0 on "
                         "the first batch; block 0 on 64 of its items")
    ap.add_argument("--cudnn-attention", action="store_true",
                    help="let attention use cuDNN too, as before the runner turned it off (the comparison)")
    ap.add_argument("--no-rehearsal", action="store_true",
                    help="skip the runner's zero-weight rehearsal of the first batch during the load (the comparison)")
    ap.add_argument("--profile", type=Path, help="write the torch profiler's op table of the first pass here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    if args.no_rehearsal:
        runner.rehearse = lambda *a, **k: False
    if args.cudnn_attention:
        runner.ATTENTION_BACKENDS = [*runner.ATTENTION_BACKENDS, SDPBackend.CUDNN_ATTENTION]
    (cfg,) = config_mod.load_config(args.workdir / "infer.yaml")
    model = model_dir_of(cfg.text_encoder)
    raw = load_dataset(cfg.dataset.path)
    scratch = args.workdir / "batches"
    shutil.rmtree(scratch, ignore_errors=True)
    table, _, _ = token_table(raw, model, cfg.text_encoder.max_tokens, scratch / "artifacts")
    ids, lengths, keys = np.asarray(table.ids), np.asarray(table.lengths), list(table.item_keys)
    plan = make_plan(cfg, len(keys), default_device())
    warm_s = warmup(args.warmup, model, ids, lengths, plan.ranges[0].batch_size)
    half = np.sort(runner.share(lengths, 0, 2))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = {"warmup": args.warmup, "warmup_s": warm_s, "cudnn_attention": args.cudnn_attention,
                "rehearsal": not args.no_rehearsal}
    out: dict = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu", "items": len(keys),
                 "plan": [[r.start, r.stop, r.batch_size] for r in plan.ranges], **settings, "passes": []}
    print(json.dumps(settings), flush=True)
    for i, which in enumerate(args.passes.split(",")):
        rows = half if which == "half" else np.arange(len(keys))
        folder = scratch / f"pass{i}"
        t0 = time.perf_counter()
        prof = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                if args.profile and i == 0 else contextlib.nullcontext())
        with BatchClock() as clock, prof:
            runner.run_preinference(model, ids[rows], lengths[rows], [keys[r] for r in rows], plan, folder,
                                    dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
        wall = time.perf_counter() - t0
        if args.profile and i == 0:
            args.profile.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        timings = LatentStore(folder).state()["timings"]
        entry = {"pass": which, "items": len(rows), "wall_s": round(wall, 2),
                 "run_s": sum(t["run_s"] for t in timings), "load_s": sum(t["load_s"] for t in timings),
                 "batches": len(clock.events), **clock.summary()}
        out["passes"].append(entry)
        print(json.dumps(entry), flush=True)
        shutil.rmtree(folder)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
