"""The dashboard against a real GPU: queue a pre-inference of an OPT-shaped model, run `tcf worker`,
and capture tcf-tui's Live screen (GPU panel from NVML, per-range progress) while the job runs.

    python bench/tui_gpu.py --model opt-6.7b --items 65536 --budget 6GiB --workdir /tmp/tcf-tui --out DIR

Writes DIR/live-N.svg (screenshots at 120x40) and DIR/tui_gpu.json: per capture, what the panel's
provider reads from NVML, nvidia-smi's own reading at the same moment, and the job's block ranges
(items done / total) from experiments.db; at the end the job's state, peak memory and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcf.data.reader import load_dataset  # noqa: E402
from tcf.data.synth import synth_dataset  # noqa: E402
from tcf.jobs.queue import get_job, queue_config  # noqa: E402
from tcf.lm.tiny import train_tokenizer  # noqa: E402
from tcf.store.db import Store  # noqa: E402
from tcf.store.events import live_view  # noqa: E402
from tcf.util.gpu import get_provider  # noqa: E402


def _preinfer_bench():
    spec = importlib.util.spec_from_file_location("preinfer", ROOT / "bench" / "preinfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def nvidia_smi() -> list[dict]:
    """nvidia-smi's own reading, to compare with what the panel shows."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total,utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return [{"error": str(e)}]
    rows = []
    for line in out.stdout.strip().splitlines():
        i, used, total, util = (x.strip() for x in line.split(","))
        rows.append({"index": int(i), "used_mib": int(used), "total_mib": int(total), "util_percent": util})
    return rows


def prepare(workdir: Path, model: str, items: int, budget: str) -> Path:
    import torch

    data = workdir / "data"
    if not (data / "behaviors.tsv").exists():
        synth_dataset(data, users=max(items // 4, 2000), items=items, seed=0)
    ckpt = workdir / model
    if not (ckpt / "tokenizer.json").exists():
        _preinfer_bench().build_checkpoint(model, ckpt, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        train_tokenizer(ckpt, load_dataset(data).item_texts, vocab_size=8000)
    cfg = workdir / "exp.yaml"
    cfg.write_text(f"dataset:\n  path: {data}\nmodel:\n  item_tower: text\n"
                   f"text_encoder:\n  model: {ckpt}\n  max_tokens: 30\n  gpu_memory_budget: {budget}\n")
    return cfg


async def watch(db: Path, job_id: int, out: Path, every_s: float, timeout_s: float) -> list[dict]:
    from tcf.tui.app import TcfApp

    app = TcfApp(db, refresh_s=0.5)
    captures = []
    async with app.run_test(size=(120, 40)) as pilot:
        app.job_id = job_id
        await pilot.press("2")
        t0 = time.time()
        n = 0
        while time.time() - t0 < timeout_s:
            await pilot.pause(every_s)
            store = Store(db)
            job = get_job(store, job_id)
            view = live_view(store, job)
            gpus = [g.__dict__ for g in app.provider.all()] if app.provider.available else []
            path = out / f"live-{n}.svg"
            app.save_screenshot(str(path.name), path=str(out))
            captures.append({"t": round(time.time() - t0, 1), "state": job.display, "screenshot": path.name,
                             "panel_gpus": gpus, "nvidia_smi": nvidia_smi(),
                             "ranges": [{"label": r.label, "done": r.done, "total": r.total,
                                         "items_per_s": r.items_per_s, "finished": r.finished} for r in view.ranges],
                             "job_peak_bytes": view.gpu_peak_bytes})
            print(json.dumps({k: captures[-1][k] for k in ("t", "state", "ranges")}), flush=True)
            n += 1
            if job.state != "running" and n > 1:
                break
    return captures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="opt-6.7b")
    ap.add_argument("--items", type=int, default=65536)
    ap.add_argument("--budget", default="6GiB")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tcf-tui"))
    ap.add_argument("--every", type=float, default=4.0, help="seconds between captures")
    ap.add_argument("--timeout", type=float, default=400.0)
    ap.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    provider = get_provider()
    print("provider:", "NVML" if provider.available else provider.reason, flush=True)
    t = time.time()
    cfg = prepare(args.workdir, args.model, args.items, args.budget)
    print(f"prepared in {time.time() - t:.0f} s", flush=True)
    db = args.workdir / "experiments.db"
    ids = queue_config(Store(db), cfg, tags=["gpu-check"])
    job_id = ids[0]
    worker = subprocess.Popen([sys.executable, "-m", "tcf.cli", "worker", "--gpus", "all", "--max-jobs", "1",
                               "--db", str(db)], cwd=args.workdir, env=os.environ.copy())
    try:
        captures = asyncio.run(watch(db, job_id, args.out, args.every, args.timeout))
    finally:
        worker.wait(timeout=600)
    job = get_job(Store(db), job_id)
    view = live_view(Store(db), job)
    result = {"model": args.model, "items": args.items, "budget": args.budget, "job_state": job.state,
              "job_error": job.error, "job_peak_bytes": view.gpu_peak_bytes, "elapsed_s": view.elapsed_s,
              "ranges": [{"label": r.label, "seconds": r.seconds, "items_per_s": r.items_per_s} for r in view.ranges],
              "captures": captures}
    (args.out / "tui_gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"job {job.state} in {view.elapsed_s:.0f} s, {len(view.ranges)} ranges, peak "
          f"{(view.gpu_peak_bytes or 0) / 2**30:.2f} GiB; {len(captures)} captures", flush=True)


if __name__ == "__main__":
    main()
