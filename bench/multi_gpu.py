"""Two GPUs against one, through the commands a researcher types: DDP training, data-parallel
pre-inference, and one worker keeping both GPUs busy.

    python bench/multi_gpu.py --parts infer,train,worker --workdir /tmp/tcf-mg --out $OUT/multi_gpu.json
    python bench/multi_gpu.py --small --workdir /tmp/tcf-mg-cpu --out /tmp/mg.json     # CPU smoke (gloo)

- infer: `tcf infer` vs `torchrun --nproc_per_node 2 -m tcf.cli infer` of an OPT-shaped random-weight
  model over ``--infer-items`` items; every item once, pooled embeddings equal (bf16 tolerance), items/s
  over the ranges' compute time, over the slowest rank's own encoding and over the whole command, and each
  GPU's SM clock, power and power-cap throttling while busy (NVML); ``--infer-repeats N`` runs N pairs,
  alternating which layout goes first, for the spread between runs (``speedup_encode_median``).
- train: `tcf run` vs `torchrun --nproc_per_node 2 -m tcf.cli run` (same global batch), seeds 1..``--seeds``
  each, for an ID-SASRec and a text SASRec with the top 2 blocks of an OPT-shaped model fine-tuned; test
  metrics (mean and standard deviation over seeds: the run-to-run noise), best epoch, seconds per epoch.
  A run whose database already holds a finished run is kept, so a call cut off by a time limit resumes.
- worker: four queued training jobs, `tcf worker --gpus all`; which GPU ran each job when, and NVML
  utilisation sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TCF = [sys.executable, "-m", "tcf.cli"]
TORCHRUN2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "tcf.cli"]


def sh(argv: list[str], cwd: Path, log: Path) -> float:
    """Run a command (argv list, no shell), its output to ``log``; returns wall seconds; raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({rc}); see {log}:\n" + log.read_text()[-3000:])
    return seconds


def model_dir(work: Path, name: str, data: Path) -> Path:
    import torch
    from preinfer import build_checkpoint

    from tcf.data.reader import load_dataset
    from tcf.lm.tiny import train_tokenizer

    out = work / name
    if not (out / "tokenizer.json").exists():
        build_checkpoint(name, out, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        train_tokenizer(out, load_dataset(data).item_texts, vocab_size=8000)
    return out


def dataset(work: Path, name: str, users: int, items: int) -> Path:
    from tcf.data.synth import synth_dataset

    out = work / name
    if not (out / "behaviors.tsv").exists():
        synth_dataset(out, users=users, items=items, seed=0)
    return out


def _range_seconds(db: Path) -> float:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT payload_json FROM events WHERE kind = 'range_end'").fetchall()
    return sum(json.loads(r[0])["seconds"] for r in rows)


class Clocks:
    """NVML samples (SM clock, power, utilisation, power-cap throttling) of every GPU while a command runs,
    summarised over the busy samples: on a power-capped card the clock, not the code, can set the speed-up."""

    def __init__(self, every: float = 0.2):
        self.every, self.samples, self._stop = every, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVML here (CPU smoke run): no samples
            self.nvml, self.handles = None, []

    def _sample(self) -> None:
        nv = self.nvml
        reasons = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                   or nv.nvmlDeviceGetCurrentClocksThrottleReasons)
        power_cap = 0x4  # the software power cap holds the clock down
        while not self._stop.wait(self.every):
            self.samples.append([(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM), nv.nvmlDeviceGetPowerUsage(h) / 1e3,
                                  nv.nvmlDeviceGetUtilizationRates(h).gpu, bool(reasons(h) & power_cap))
                                 for h in self.handles])

    def __enter__(self) -> Clocks:
        if self.handles:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.handles:
            self._thread.join()

    def summary(self) -> list[dict]:
        """Per GPU, over the samples that compute: utilisation ≥ 90 % and at least half the run's peak power
        (a rank spinning in an NCCL wait also reads 100 % utilisation, at idle power)."""
        out = []
        for i in range(len(self.handles)):
            peak = max((s[i][1] for s in self.samples), default=0.0)
            busy = [s[i] for s in self.samples if s[i][2] >= 90 and s[i][1] >= peak / 2]
            out.append({"gpu": i, "busy_samples": len(busy),
                        "sm_mhz_mean": round(float(np.mean([b[0] for b in busy])), 1) if busy else None,
                        "power_w_mean": round(float(np.mean([b[1] for b in busy])), 1) if busy else None,
                        "power_capped_share": round(float(np.mean([b[3] for b in busy])), 3) if busy else None})
        return out


def _infer_run(args: argparse.Namespace, cfg: Path, run_dir: Path, cmd: list[str]) -> tuple[dict, tuple]:
    """One `tcf infer` (one process or torchrun) in a fresh ``run_dir``: its figures and (item keys, pooled)."""
    from tcf.preinfer.latents import LatentStore

    shutil.rmtree(run_dir, ignore_errors=True)  # an artifact left by an earlier call would be reused, not timed
    run_dir.mkdir(parents=True)
    db = run_dir / "experiments.db"
    with Clocks() as clocks:
        wall = sh([*cmd, "infer", str(cfg), "--db", str(db)], run_dir, run_dir / "infer.log")
    (path,) = [p for p in (run_dir / "artifacts" / "latents").iterdir() if not p.name.startswith(".")]
    store = LatentStore(path)
    keys = json.loads((path / "items.json").read_text())
    compute = _range_seconds(db)
    timings = store.state().get("timings", [])  # per range: weight load, encoding, commit
    encode = sum(t["run_s"] for t in timings)
    # the slowest rank's own encoding, without waiting for another rank's weight load
    encode_ranks = sum(max(r["encode_s"] for r in t["ranks"]) for t in timings)
    figures = {"command": " ".join([*cmd[1:], "infer", "infer.yaml"]), "wall_s": wall, "compute_s": compute,
               "encode_s": encode, "encode_slowest_rank_s": encode_ranks, "timings": timings,
               "gpus": clocks.summary(),
               "items_per_s_encode": args.infer_items / encode,
               "items_per_s_encode_slowest_rank": args.infer_items / encode_ranks,
               "items_per_s_compute": args.infer_items / compute, "items_per_s_wall": args.infer_items / wall,
               "ranks": json.loads((path / "meta.json").read_text())["ranks"]}
    return figures, (keys, store.read("mean").float().numpy())


def _compare(args: argparse.Namespace, one: dict, two: dict, pooled_one: tuple, pooled_two: tuple) -> dict:
    (k1, e1), (k2, e2) = pooled_one, pooled_two
    assert k1 == k2, "the two artifacts list different items"
    diff = np.abs(e1 - e2)
    scale = np.abs(e1).max()
    cosine = np.sum(e1 * e2, 1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1) + 1e-12)
    return {"check": {"items_once": len(k2) == len(set(k2)) == args.infer_items,
                      "zero_rows_two": int((np.abs(e2).sum(1) == 0).sum()),
                      "max_abs_diff": float(diff.max()), "max_abs_value": float(scale),
                      "max_rel_diff": float(diff.max() / scale), "cosine_min": float(cosine.min())},
            **{f"speedup_{k}": two[f"items_per_s_{k}"] / one[f"items_per_s_{k}"]
               for k in ("encode", "encode_slowest_rank", "compute", "wall")}}


def part_infer(args: argparse.Namespace, work: Path) -> dict:
    data = dataset(work, "infer-data", users=max(args.infer_items // 8, 500), items=args.infer_items)
    ckpt = model_dir(work, args.infer_model, data)
    cfg = work / "infer.yaml"
    cfg.write_text(f"dataset:\n  path: {data}\ntext_encoder:\n  model: {ckpt}\n  max_tokens: 30\n"
                   f"  gpu_memory_budget: {args.infer_budget}\n")
    out: dict = {"model": args.infer_model, "items": args.infer_items, "budget": args.infer_budget, "repeats": []}
    for rep in range(args.infer_repeats):
        layouts = [("one", TCF), ("two", TORCHRUN2)]
        runs = {}
        for label, cmd in layouts if rep % 2 == 0 else layouts[::-1]:  # alternate which layout goes first
            runs[label] = _infer_run(args, cfg, work / (f"infer-{label}" + (f"-{rep}" if rep else "")), cmd)
        (one, pooled_one), (two, pooled_two) = runs["one"], runs["two"]
        pair = {"one": one, "two": two, **_compare(args, one, two, pooled_one, pooled_two)}
        if rep == 0:
            out.update(pair)
        out["repeats"].append({k: v for k, v in pair.items() if k not in ("one", "two")}
                              | {"encode_s": [one["encode_s"], two["encode_s"]]})
    out["speedup_encode_median"] = float(np.median([r["speedup_encode"] for r in out["repeats"]]))
    return out


def _run_figures(db: Path) -> dict:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        run = dict(c.execute("SELECT * FROM results ORDER BY run_id DESC LIMIT 1").fetchone())
        seconds = [r[0] for r in c.execute("SELECT seconds FROM epochs WHERE run_id = ? ORDER BY epoch",
                                           [run["run_id"]])]
    return {"test_hr@10": run["test_hr@10"], "test_ndcg@10": run["test_ndcg@10"], "best_epoch": run["best_epoch"],
            "epoch_seconds": seconds, "epoch_s_median": float(np.median(seconds[1:] or seconds))}


def _finished(db: Path) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM runs WHERE status = 'finished'").fetchone()[0] > 0


def _id_config(args: argparse.Namespace) -> str:
    return (f"model:\n  embedding_dim: {args.id_dim}\n  num_blocks: 2\n  num_heads: 4\n"
            f"train:\n  loss: ce\n  batch_size: {args.id_batch}\n  epochs: {args.epochs}\n  patience: 100\n"
            f"  examples: windows\n")


def part_train(args: argparse.Namespace, work: Path) -> dict:
    models = {}
    if "id" in args.models:
        id_data = dataset(work, "id-data", users=args.id_users, items=args.id_items)
        models["id_sasrec"] = (id_data, _id_config(args))
    if "text" in args.models:
        text_data = dataset(work, "text-data", users=args.text_users, items=args.text_items)
        ckpt = model_dir(work, args.text_model, text_data)
        models["text_sasrec_top2"] = (text_data, f"model:\n  item_tower: text\n"
                                                 f"train:\n  batch_size: {args.text_batch}\n  epochs: {args.epochs}\n"
                                                 f"  patience: 100\n  examples: windows\n  text_lr: 0.0001\n"
                                                 f"text_encoder:\n  model: {ckpt}\n  max_tokens: 30\n  unfreeze: 2\n")
    out: dict = {"epochs": args.epochs, "seeds": args.seeds}
    for name, (data, body) in models.items():
        cfg = work / f"{name}.yaml"
        cfg.write_text(f"dataset:\n  path: {data}\n{body}")
        res: dict = {"config": cfg.read_text()}
        run_dir = work / f"train-{name}"  # one artifacts folder: a text run's latents are encoded once
        run_dir.mkdir(exist_ok=True)
        for seed in range(1, args.seeds + 1):
            for layout, cmd in (("one", TCF), ("two", TORCHRUN2)):
                label = f"{layout}_seed{seed}"
                db = run_dir / f"{label}.db"
                command = " ".join([*cmd[1:], "run", cfg.name, "-S", f"seed={seed}"])
                if _finished(db):  # from an earlier call that ran out of time: keep it
                    res[label] = {"command": command, "wall_s": None, "reused": True, **_run_figures(db)}
                    continue
                for stale in run_dir.glob(f"{label}.db*"):
                    stale.unlink()
                wall = sh([*cmd, "run", str(cfg), "-S", f"seed={seed}", "--db", str(db)], run_dir,
                          run_dir / f"{label}.log")
                res[label] = {"command": command, "wall_s": wall, **_run_figures(db)}
        for layout in ("one", "two"):
            runs = [res[f"{layout}_seed{s}"] for s in range(1, args.seeds + 1)]
            res[layout] = {key: {"mean": float(np.mean([r[key] for r in runs])),
                                 "std": float(np.std([r[key] for r in runs], ddof=1)) if len(runs) > 1 else None}
                           for key in ("test_hr@10", "test_ndcg@10", "epoch_s_median")}
        res["epoch_time_ratio"] = res["two"]["epoch_s_median"]["mean"] / res["one"]["epoch_s_median"]["mean"]
        for key in ("test_hr@10", "test_ndcg@10"):
            res[f"diff_{key}"] = res["two"][key]["mean"] - res["one"][key]["mean"]
        out[name] = res
    return out


def _iso(t: str) -> float:
    return datetime.fromisoformat(t).timestamp()


def part_worker(args: argparse.Namespace, work: Path) -> dict:
    from tcf.util.gpu import get_provider

    data = dataset(work, "id-data", users=args.id_users, items=args.id_items)
    run_dir = work / "worker"
    run_dir.mkdir(exist_ok=True)
    db = run_dir / "experiments.db"
    cfg = run_dir / "jobs.yaml"
    cfg.write_text(f"dataset:\n  path: {data}\n{_id_config(args)}sweep:\n  seed: [1, 2, 3, 4]\n")
    sh([*TCF, "queue", "add", str(cfg), "--db", str(db)], run_dir, run_dir / "queue.log")
    provider = get_provider()
    samples: list[dict] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            if provider.available:
                samples.append({"t": time.time(), "util": [g.util_percent for g in provider.all()],
                                "used_gib": [round(g.used_bytes / 2**30, 2) for g in provider.all()]})

    threading.Thread(target=sample, daemon=True).start()
    gpus = "all" if provider.available else "cpu"
    wall = sh([*TCF, "worker", "--gpus", gpus, "--exit-when-idle", "--db", str(db)], run_dir, run_dir / "worker.log")
    stop.set()
    with sqlite3.connect(db) as c:
        jobs = [{"id": i, "devices": d, "start": _iso(s), "end": _iso(e), "state": st}
                for i, d, s, e, st in c.execute("SELECT id, devices, started_at, finished_at, state FROM jobs")]
    overlaps_same_gpu = sum(1 for a in jobs for b in jobs if a["id"] < b["id"] and a["devices"] == b["devices"]
                            and a["start"] < b["end"] and b["start"] < a["end"])
    t0 = min(j["start"] for j in jobs)
    both = [s for s in samples if sum(1 for j in jobs if j["start"] <= s["t"] <= j["end"]) >= 2]
    return {"command": f"tcf queue add jobs.yaml; tcf worker --gpus {gpus} --exit-when-idle", "wall_s": wall,
            "jobs": [{**j, "start": round(j["start"] - t0, 1), "end": round(j["end"] - t0, 1)} for j in jobs],
            "devices_used": sorted({j["devices"] for j in jobs}), "overlaps_on_one_gpu": overlaps_same_gpu,
            "all_finished": all(j["state"] == "finished" for j in jobs),
            "util_while_two_run": [float(np.mean([s["util"][i] or 0 for s in both])) for i in
                                   range(len(both[0]["util"]))] if both else None,
            "samples": len(samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="infer,train,worker")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tcf-mg"))
    ap.add_argument("--out", type=Path, default=Path("multi_gpu.json"))
    ap.add_argument("--small", action="store_true", help="CPU-sized smoke run (tiny model, few users)")
    ap.add_argument("--infer-model", default="opt-6.7b")
    ap.add_argument("--infer-items", type=int, default=32768)
    ap.add_argument("--infer-budget", default="60GiB")
    ap.add_argument("--infer-repeats", type=int, default=1,
                    help="one-GPU / two-GPU pairs, alternating which goes first (the spread between runs)")
    ap.add_argument("--text-model", default="opt-1.3b")
    ap.add_argument("--id-users", type=int, default=100_000)
    ap.add_argument("--id-items", type=int, default=20_000)
    ap.add_argument("--id-dim", type=int, default=512)
    ap.add_argument("--id-batch", type=int, default=4096)
    ap.add_argument("--text-users", type=int, default=20_000)
    ap.add_argument("--text-items", type=int, default=8000)
    ap.add_argument("--text-batch", type=int, default=512,
                    help="global batch of the text runs (at 64 a step is too short to split: fixed costs dominate)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=4, help="training runs per layout (1 GPU, 2 GPUs), seeds 1..N")
    ap.add_argument("--models", default="id,text", help="which trainings: id, text or both")
    args = ap.parse_args()
    if args.small:
        args.infer_model = args.text_model = "tiny"
        args.infer_items, args.infer_budget = 2000, "1GiB"
        args.id_users = args.text_users = 400
        args.id_items = args.text_items = 200
        args.id_dim, args.id_batch, args.text_batch, args.epochs, args.seeds = 32, 64, 32, 2, 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for part in args.parts.split(","):
        t0 = time.time()
        results[part] = {"infer": part_infer, "train": part_train, "worker": part_worker}[part](args, args.workdir)
        results[part]["part_seconds"] = time.time() - t0
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(json.dumps({part: {k: v for k, v in results[part].items() if not isinstance(v, (dict, list))}}),
              flush=True)


if __name__ == "__main__":
    main()
