#!/usr/bin/env python
"""Training speed and accuracy: tcf's ID-SASRec vs RecBole 1.2.1's SASRec on MovieLens-100k.

Both tools see exactly the same data: RecBole's own ml-100k (shipped in its PyPI package) is imported
the way ``tcf data import recbole`` does it, preprocessed by ``tcf.data.prepare`` (users with >= 5
items, last L+3 items each, dense ids), and the SAME per-user sequences are written back as RecBole
atomic files (timestamp = position), with RecBole's own filtering switched off. RecBole's leave-one-out
split (LS valid_and_test, order TO) then yields the same train targets, valid/test targets and input
windows as tcf; the script checks that before training and stops if they differ.

Evaluation is full ranking over all items with history masking on both sides. RecBole 1.2.1 does not
mask history for sequential models, so its trainer is given each user's history (valid: s[:n-2],
test: s[:n-1], as tcf) and masks it the way it masks history for general models.

Usage: python bench/train_speed.py --device cuda --tools tcf,recbole --out bench/train_speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from tcf.config import Config, load_config  # noqa: E402
from tcf.data.importers import import_recbole  # noqa: E402
from tcf.data.prepare import Prepared, prepare  # noqa: E402
from tcf.data.reader import load_dataset  # noqa: E402

RB_NAME = "tcf-ml100k"  # not "ml-100k": RecBole would apply its bundled ml-100k settings


# -- helpers ---------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _epoch_mean(seconds: list[float]) -> float | None:
    """Mean epoch time without the first (warm-up) epoch; the only epoch if there is just one."""
    if not seconds:
        return None
    return statistics.fmean(seconds[1:] if len(seconds) > 1 else seconds)


def _recbole_dir() -> Path | None:
    spec = importlib.util.find_spec("recbole")  # locate without importing (import needs the shims)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for s in items:
        key, sep, raw = s.partition("=")
        if not sep:
            raise SystemExit(f"error: --recbole-set expects key=value, got {s!r}")
        out[key.strip()] = yaml.safe_load(raw)
    return out


# -- data ------------------------------------------------------------------------------------------
def build_data(src: Path, work: Path, cfg: Config) -> tuple[Path, Prepared]:
    out = work / "ml-100k"
    info = import_recbole(src, out)
    data = prepare(load_dataset(out), cfg.dataset.min_seq_len, cfg.dataset.max_seq_len)
    print(f"data: imported {src} -> {out}: {info}")
    print(f"data: prepared (min_seq_len={cfg.dataset.min_seq_len}, L={cfg.dataset.max_seq_len}): "
          f"{data.n_users} users, {data.n_items} items, {int(data.lengths.sum())} interactions")
    return out, data


def user_rows(data: Prepared) -> list[np.ndarray]:
    """Each user's kept items (dense ids), oldest first."""
    return [row[len(row) - n:] for row, n in zip(data.seqs, data.lengths.tolist(), strict=True)]


def write_atomic(data: Prepared, folder: Path) -> Path:
    """The prepared sequences as RecBole atomic files: user token = tcf row, item token = dense id."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{RB_NAME}.inter"
    with path.open("w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, row in enumerate(user_rows(data)):
            f.writelines(f"{u}\t{int(i)}\t{t}\n" for t, i in enumerate(row))
    return path


# -- tcf -------------------------------------------------------------------------------------------
def run_tcf(cfg: Config, data: Prepared, work: Path, device: str) -> dict:
    from tcf.experiment import prepared_data, run_experiment
    from tcf.util.progress import Reporter

    class Print(Reporter):
        def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
            hr = metrics.get("hr@10")
            print(f"tcf: epoch {epoch} {seconds:.2f}s loss {loss:.4f}"
                  + (f" valid hr@10 {hr:.4f}" if hr is not None else ""), flush=True)

    mine = prepared_data(cfg)  # what run_experiment trains on: must be the data RecBole gets
    if not (np.array_equal(mine.seqs, data.seqs) and mine.item_keys == data.item_keys):
        raise SystemExit("error: tcf prepared different data than the benchmark wrote for RecBole")
    t0 = time.perf_counter()
    r = run_experiment(cfg, work / "experiments.db", reporter=Print())
    _sync(device)
    total = time.perf_counter() - t0
    train_rows = int(np.maximum(data.lengths - 3, 0).sum())
    return {
        "epoch_seconds": r.epoch_seconds,
        "epoch_seconds_mean": _epoch_mean(r.epoch_seconds),
        "epoch_seconds_mean_all": statistics.fmean(r.epoch_seconds) if r.epoch_seconds else None,
        "eval_seconds": r.eval_seconds,
        "epochs": len(r.epoch_seconds),
        "best_epoch": r.best_epoch,
        "metrics": r.metrics,
        "test_hr@10": r.metrics.get("test_hr@10"),
        "test_ndcg@10": r.metrics.get("test_ndcg@10"),
        "valid_hr@10": r.metrics.get("valid_hr@10"),
        "train_examples_per_epoch": train_rows,
        "train_batches_per_epoch": -(-data.n_users // cfg.train.batch_size),
        "batch_unit": ("(prefix, next item) examples" if cfg.train.examples == "prefixes"
                       else "user sequences (every position predicts its next item)"),
        "wall_seconds": total,
        "run_id": r.run_id,
    }


# -- RecBole ---------------------------------------------------------------------------------------
def _recbole_shims() -> None:
    """What RecBole 1.2.1 needs today: numpy-2 aliases; no tensorboard files (nor the package)."""
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if name not in np.__dict__:
            setattr(np, name, value)
    tb = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:  # RecBole writes a few scalars per epoch; nothing here reads them
        def __init__(self, *a, **k):
            pass

        def __getattr__(self, name):
            return lambda *a, **k: None

    tb.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = tb
    # pandas 3 copy-on-write: RecBole's fillna(inplace=True) on a column is a no-op; it only fills
    # missing values, and the benchmark's atomic file has none. torch: RecBole's GradScaler spelling.
    warnings.filterwarnings("ignore", message=".*chained assignment.*")
    warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler.*")
    warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")


def recbole_config(cfg: Config, work: Path, device: str, extra: dict) -> dict:
    m, t = cfg.model, cfg.train
    conf = {
        # data: our atomic file, no RecBole filtering, leave-one-out in time order, full ranking
        "data_path": str(work / "recbole"), "checkpoint_dir": str(work / "recbole-saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": cfg.dataset.max_seq_len,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "val_interval": None, "filter_inter_by_user_or_item": False, "rm_dup_inter": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "train_neg_sample_args": None, "loss_type": "CE",
        "metrics": ["Hit", "NDCG"], "topk": list(cfg.eval.ks), "valid_metric": "hit@10",
        "metric_decimal_place": 6,
        # model: as tcf's (method §3.5: ReLU FFN of width 4d, one dropout rate)
        "n_layers": m.num_blocks, "n_heads": m.num_heads, "hidden_size": m.embedding_dim,
        "inner_size": 4 * m.embedding_dim, "hidden_dropout_prob": m.dropout,
        "attn_dropout_prob": m.dropout, "hidden_act": "relu",
        # training: same batch size, epochs, patience, learning rate, seed
        "train_batch_size": t.batch_size, "eval_batch_size": cfg.eval.batch_size,
        "epochs": t.epochs, "stopping_step": t.patience, "eval_step": t.eval_every,
        "learner": "adam", "learning_rate": t.lr, "weight_decay": t.weight_decay,
        "seed": cfg.seed, "reproducibility": True, "shuffle": True, "worker": 0,
        "show_progress": False, "state": "WARNING", "log_wandb": False,
        "save_dataset": False, "save_dataloaders": False,
        "use_gpu": device.startswith("cuda"),
        "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES", "0") if device.startswith("cuda") else "",
    }
    conf.update(extra)
    return conf


def _check_split(data: Prepared, train_ds, valid_ds, test_ds, rb_user_row: np.ndarray,
                 rb_item_dense: np.ndarray, max_len: int) -> None:
    """RecBole's split must give the targets, input windows and training pairs tcf uses."""
    problems = []
    for name, ds in (("valid", valid_ds), ("test", test_ds)):
        split = data.eval_split(name)
        inter = ds.inter_feat
        rows = rb_user_row[inter["user_id"].numpy()]
        if len(rows) != data.n_users or len(np.unique(rows)) != data.n_users:
            problems.append(f"{name}: {len(rows)} rows for {data.n_users} users")
            continue
        if not np.array_equal(rb_item_dense[inter["item_id"].numpy()], split.targets[rows]):
            problems.append(f"{name}: targets differ")
        ids = rb_item_dense[inter["item_id_list"].numpy()]  # right-padded
        n = inter["item_length"].numpy()
        shift = np.arange(max_len)[None, :] - (max_len - n)[:, None]
        left = np.where(shift >= 0, np.take_along_axis(ids, np.clip(shift, 0, None), axis=1), 0)
        if not np.array_equal(left, split.inputs[rows]):
            problems.append(f"{name}: input windows differ")
    inter = train_ds.inter_feat
    rb_pairs = np.sort(rb_user_row[inter["user_id"].numpy()] * (data.n_items + 1)
                       + rb_item_dense[inter["item_id"].numpy()])
    tcf_pairs = np.sort(np.concatenate([u * (data.n_items + 1) + row[1:len(row) - 2]
                                        for u, row in enumerate(user_rows(data))]))
    if not np.array_equal(rb_pairs, tcf_pairs):
        problems.append(f"train: {len(rb_pairs)} (user, target) pairs vs tcf's {len(tcf_pairs)}, or differ")
    if problems:
        raise SystemExit("error: RecBole's split differs from tcf's: " + "; ".join(problems))


class _TimeCap(Exception):
    """Raised between RecBole epochs once --recbole-max-seconds of training have passed."""


def run_recbole(cfg: Config, data: Prepared, work: Path, device: str, extra: dict,
                max_seconds: float | None = None) -> dict:
    _recbole_shims()
    from recbole.config import Config as RBConfig
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec as RBSASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    inter_path = write_atomic(data, work / "recbole" / RB_NAME)
    conf = recbole_config(cfg, work, device, extra)
    saved_env, saved_argv = os.environ.get("CUDA_VISIBLE_DEVICES"), sys.argv
    sys.argv = sys.argv[:1]  # RecBole reads --key=value from the command line; ours are not for it
    try:
        config = RBConfig(model="SASRec", dataset=RB_NAME, config_dict=conf)
    finally:
        sys.argv = saved_argv
    if saved_env is None:  # RecBole rewrites CUDA_VISIBLE_DEVICES from gpu_id; put it back
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved_env
    t_wall = time.perf_counter()
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # same users, items and interactions as tcf?
    counts = {"users": dataset.user_num - 1, "items": dataset.item_num - 1,
              "interactions": sum(1 for _ in inter_path.open(encoding="utf-8")) - 1,
              "train": len(train_data._dataset), "valid": len(valid_data._dataset),
              "test": len(test_data._dataset)}
    want = {"users": data.n_users, "items": data.n_items, "interactions": int(data.lengths.sum()),
            "train": int((data.lengths - 3).sum()), "valid": data.n_users, "test": data.n_users}
    print(f"recbole: counts {counts} (tcf {want})")
    if counts != want:
        raise SystemExit("error: RecBole's dataset does not match tcf's")
    tok_user = dataset.field2id_token["user_id"]
    tok_item = dataset.field2id_token["item_id"]
    rb_user_row = np.array([-1] + [int(x) for x in tok_user[1:]], dtype=np.int64)
    rb_item_dense = np.array([0] + [int(x) for x in tok_item[1:]], dtype=np.int64)
    _check_split(data, train_data._dataset, valid_data._dataset, test_data._dataset,
                 rb_user_row, rb_item_dense, cfg.dataset.max_seq_len)
    print("recbole: train/valid/test targets and input windows identical to tcf's")

    # per-split history to mask, indexed by RecBole user id, in RecBole item ids
    dense_rb = np.zeros(data.n_items + 1, dtype=np.int64)
    dense_rb[rb_item_dense[1:]] = np.arange(1, len(rb_item_dense))
    row_rb = np.empty(data.n_users, dtype=np.int64)
    row_rb[rb_user_row[1:]] = np.arange(1, len(rb_user_row))
    histories = {}
    for name, loader in (("valid", valid_data), ("test", test_data)):
        h = data.eval_split(name).history
        table = np.zeros((dataset.user_num, h.shape[1]), dtype=np.int64)
        table[row_rb] = dense_rb[h]
        histories[id(loader)] = torch.as_tensor(table)

    dev = config["device"]

    class BenchTrainer(Trainer):
        """Times epochs and validations, masks history, keeps the best weights in memory."""

        def __init__(self, config, model):
            super().__init__(config, model)
            self.epoch_seconds: list[float] = []
            self.valid_seconds: list[float] = []
            self.best_state = None
            self.best_epoch = None
            self._hist = None

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            if max_seconds is not None and time.perf_counter() - t_fit > max_seconds:
                raise _TimeCap
            _sync(dev.type)
            t0 = time.perf_counter()
            loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            _sync(dev.type)
            self.epoch_seconds.append(time.perf_counter() - t0)
            return loss

        def _valid_epoch(self, valid_data, show_progress=False):
            t0 = time.perf_counter()
            out = super()._valid_epoch(valid_data, show_progress)
            _sync(dev.type)
            self.valid_seconds.append(time.perf_counter() - t0)
            print(f"recbole: epoch {len(self.epoch_seconds)} {self.epoch_seconds[-1]:.2f}s "
                  f"valid hit@10 {out[0]:.4f} ({self.valid_seconds[-1]:.2f}s)", flush=True)
            return out

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            # in memory instead of RecBole's pickle (no torch.load of a full pickle needed)
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_epoch = epoch + 1

        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            self._hist = histories.get(id(eval_data))
            return super().evaluate(eval_data, False, model_file, show_progress)

        def _full_sort_batch_eval(self, batched_data):
            interaction, history_index, pos_u, pos_i = batched_data
            if self._hist is not None and history_index is None:
                h = self._hist[interaction["user_id"].cpu()]
                rows, cols = (h != 0).nonzero(as_tuple=True)
                history_index = (rows.to(dev), h[rows, cols].to(dev))
            return super()._full_sort_batch_eval((interaction, history_index, pos_u, pos_i))

    init_seed(config["seed"], config["reproducibility"])
    model = RBSASRec(config, train_data._dataset).to(dev)
    trainer = BenchTrainer(config, model)
    t_fit, capped = time.perf_counter(), False
    try:
        trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    except _TimeCap:
        capped = True
        print(f"recbole: stopped after {len(trainer.epoch_seconds)} epochs (--recbole-max-seconds)")
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    test = trainer.evaluate(test_data)
    _sync(dev.type)
    total = time.perf_counter() - t_wall
    valid = trainer.best_valid_result or {}
    metrics = {f"valid_{k}": float(v) for k, v in valid.items()}
    metrics.update({f"test_{k}": float(v) for k, v in test.items()})
    return {
        "epoch_seconds": trainer.epoch_seconds,
        "epoch_seconds_mean": _epoch_mean(trainer.epoch_seconds),
        "epoch_seconds_mean_all": (statistics.fmean(trainer.epoch_seconds)
                                   if trainer.epoch_seconds else None),
        "eval_seconds": trainer.valid_seconds[-1] if trainer.valid_seconds else None,
        "epochs": len(trainer.epoch_seconds),
        "best_epoch": trainer.best_epoch,
        "metrics": metrics,
        "test_hr@10": metrics.get("test_hit@10"),
        "test_ndcg@10": metrics.get("test_ndcg@10"),
        "valid_hr@10": metrics.get("valid_hit@10"),
        "train_examples_per_epoch": counts["train"],
        "train_batches_per_epoch": len(train_data),
        "batch_unit": "(prefix, next item) examples",
        "time_capped": capped,
        "wall_seconds": total,
        "config": {k: v for k, v in conf.items() if k not in ("data_path", "checkpoint_dir")},
    }


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (no scipy needed)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a - b over pairs (the same seed) and its 95% t interval (nan without two pairs)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    df = len(d) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df
    half = t * statistics.stdev(d) / len(d) ** 0.5
    return mean, mean - half, mean + half


def _over_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """The first seed's run, with speed as the mean over seeds of each seed's warm epochs, accuracy as the
    mean (and std) over all seeds, and every seed's figures for paired comparisons."""
    out = dict(runs[0])
    out["seeds"] = {str(s): {k: r[k] for k in ("test_hr@10", "test_ndcg@10", "epochs", "best_epoch",
                                                "epoch_seconds_mean")} for s, r in zip(seeds, runs, strict=True)}
    warm = [r["epoch_seconds_mean"] for r in runs if r["epoch_seconds_mean"] is not None]
    out["epoch_seconds_mean"] = statistics.fmean(warm) if warm else None
    for key in ("test_hr@10", "test_ndcg@10"):
        values = [r[key] for r in runs]
        out[key] = statistics.fmean(values)
        out[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def _ratios(results: dict[str, dict]) -> dict[str, float]:
    if not {"tcf", "recbole"} <= results.keys():
        return {}
    rb, tcf = results["recbole"], results["tcf"]
    pairs = {"epoch_seconds_recbole_over_tcf": (rb["epoch_seconds_mean"], tcf["epoch_seconds_mean"]),
             "eval_seconds_recbole_over_tcf": (rb["eval_seconds"], tcf["eval_seconds"]),
             "hr@10_tcf_over_recbole": (tcf["test_hr@10"], rb["test_hr@10"]),
             "ndcg@10_tcf_over_recbole": (tcf["test_ndcg@10"], rb["test_ndcg@10"])}
    return {k: a / b for k, (a, b) in pairs.items() if a is not None and b}


def _paired(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """tcf minus RecBole, seed by seed, with the 95% interval of the mean difference."""
    if not {"tcf", "recbole"} <= results.keys():
        return {}
    a, b = results["tcf"]["seeds"], results["recbole"]["seeds"]
    common = sorted(set(a) & set(b), key=int)
    out = {}
    for key in ("test_hr@10", "test_ndcg@10"):
        mean, lo, hi = paired_difference([a[s][key] for s in common], [b[s][key] for s in common])
        out[key] = {"seeds": len(common), "tcf_minus_recbole": mean, "ci95_low": lo, "ci95_high": hi}
    return out


# -- main ------------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the config's)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="(prefix, next item) examples per step, RecBole's unit; tcf gets the number of user "
                        "windows holding as many examples, so both take the same steps per epoch")
    p.add_argument("--seeds", default="42,43,44,45,46",
                   help="comma-separated seeds; accuracy is averaged over them and compared seed by seed")
    p.add_argument("--patience", type=int, help="early-stopping patience on valid HR@10 (default: config)")
    p.add_argument("--threads", type=int, help="torch CPU threads for both tools (default: torch's)")
    p.add_argument("--tools", default="tcf,recbole", help="comma-separated: tcf, recbole")
    p.add_argument("--out", default=str(ROOT / "bench" / "train_speed.json"), help="JSON results")
    p.add_argument("--config", default=str(ROOT / "configs" / "ml100k_sasrec.yaml"))
    p.add_argument("--data-src", help="RecBole ml-100k folder (default: the one in the recbole package)")
    p.add_argument("--workdir", help="scratch folder (default: a new temporary folder)")
    p.add_argument("--recbole-max-seconds", type=float,
                   help="stop RecBole's training (then test its best model) once this many seconds "
                        "have passed; the JSON says time_capped")
    p.add_argument("--tcf-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra tcf config override, e.g. train.amp=off (repeatable)")
    p.add_argument("--recbole-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RecBole config entry, e.g. hidden_act=gelu (repeatable)")
    args = p.parse_args(argv)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or set(tools) - {"tcf", "recbole"}:
        p.error("--tools takes tcf and/or recbole")
    if args.device not in ("cpu", "cuda"):
        p.error("--device takes cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available")
    rb_dir = _recbole_dir()
    src = Path(args.data_src) if args.data_src else None
    if src is None and rb_dir is not None:
        src = rb_dir / "dataset_example" / "ml-100k"
    if src is None or not src.is_dir():
        p.error("no ml-100k: install recbole==1.2.1 or pass --data-src")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tcf-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    overrides = [f"dataset.path={work / 'ml-100k'}", f"train.device={args.device}"]
    for flag, key in ((args.epochs, "train.epochs"), (args.patience, "train.patience")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfgs = load_config(args.config, overrides + args.tcf_set)
    if len(cfgs) != 1:
        p.error(f"{args.config} expands to {len(cfgs)} runs; the benchmark needs one")
    cfg = cfgs[0]
    extra = _parse_sets(args.recbole_set)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]

    print(f"bench: device {args.device}, torch {torch.__version__} ({torch.get_num_threads()} CPU threads), "
          f"workdir {work}")
    print(f"bench: L={cfg.dataset.max_seq_len} d={cfg.model.embedding_dim} blocks={cfg.model.num_blocks} "
          f"heads={cfg.model.num_heads} dropout={cfg.model.dropout} batch={cfg.train.batch_size} "
          f"epochs<={cfg.train.epochs} patience={cfg.train.patience} lr={cfg.train.lr}")
    _, data = build_data(src, work, cfg)
    train_pairs = int(np.maximum(data.lengths - 3, 0).sum())
    cfg.train.batch_size = max(2, round(args.batch_size * data.n_users / train_pairs))
    extra.setdefault("train_batch_size", args.batch_size)
    print(f"bench: batch = {args.batch_size} examples: RecBole {args.batch_size} prefixes, tcf "
          f"{cfg.train.batch_size} users' {cfg.train.examples} ({train_pairs / data.n_users:.1f} examples each)")

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    report = {
        "device": args.device, "gpu": gpu, "host": platform.node(), "torch": torch.__version__,
        "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
        "epoch_seconds_note": "epoch_seconds_mean excludes the first epoch (warm-up)",
        "dataset": {"source": str(src), "users": data.n_users, "items": data.n_items,
                    "interactions": int(data.lengths.sum())},
        "settings": {"max_seq_len": cfg.dataset.max_seq_len, "min_seq_len": cfg.dataset.min_seq_len,
                     "embedding_dim": cfg.model.embedding_dim, "num_blocks": cfg.model.num_blocks,
                     "num_heads": cfg.model.num_heads, "dropout": cfg.model.dropout,
                     "batch_size": cfg.train.batch_size, "recbole_batch_size": extra["train_batch_size"],
                     "epochs": cfg.train.epochs,
                     "patience": cfg.train.patience, "lr": cfg.train.lr, "seed": cfg.seed,
                     "tcf_amp": cfg.train.amp, "tcf_loss": cfg.train.loss},
        "tools": {},
        "ratios": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = report["tools"]
    for tool in tools:
        runs = []
        for seed in seeds:
            print(f"== {tool} seed {seed}", flush=True)
            c = cfg.model_copy(deep=True)
            c.seed = seed
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            if tool == "tcf":
                runs.append(run_tcf(c, data, work, args.device))
            else:
                runs.append(run_recbole(c, data, work, args.device, extra, args.recbole_max_seconds))
            runs[-1]["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
                                        else None)
        results[tool] = _over_seeds(runs, seeds)
        report["ratios"] = _ratios(results)
        report["paired_difference"] = _paired(results)
        # written after each tool, so a run cut short still leaves the finished tool's figures
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print()
    print("epoch s = mean training seconds per epoch, first epoch excluded as warm-up; "
          "eval s = one full-ranking validation")
    print(f"{'tool':<8} {'epoch s':>9} {'eval s':>8} {'epochs':>6} {'best':>5} {'HR@10':>8} {'NDCG@10':>8} "
          f"{'peak MiB':>9}")
    for tool, r in results.items():
        print(f"{tool:<8} {_fmt(r['epoch_seconds_mean'], '9.3f')} {_fmt(r['eval_seconds'], '8.3f')} "
              f"{r['epochs']:>6} {_fmt(r['best_epoch'], '>5')} {_fmt(r['test_hr@10'], '8.4f')} "
              f"{_fmt(r['test_ndcg@10'], '8.4f')} {_fmt(r['peak_gpu_mib'], '9.1f')}  (mean of {len(r['seeds'])} seeds; "
              f"HR@10 std {r['test_hr@10_std']:.4f})")
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.3f}")
    for k, v in report.get("paired_difference", {}).items():
        print(f"{k} tcf - RecBole over {v['seeds']} paired seeds: {v['tcf_minus_recbole'] * 100:+.2f} "
              f"(95% CI {v['ci95_low'] * 100:+.2f} .. {v['ci95_high'] * 100:+.2f}) x100")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
