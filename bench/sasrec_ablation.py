#!/usr/bin/env python
"""Where tcf's SASRec differs from RecBole's (and from the reference TCF code), one switch at a time.

Each variant changes one behaviour of tcf, in this process, and trains the config on MovieLens-100k (the
data ``bench/train_speed.py`` builds: identical sequences for both tools) with several seeds; the JSON
holds every seed's test HR@10 / NDCG@10, so any two variants (or a variant and RecBole's runs from
``train_speed.py``) can be compared seed by seed (``--compare``).

    python bench/sasrec_ablation.py --variant baseline --seeds 42,43,44,45,46,47,48,49 --out /tmp/a.json
    python bench/sasrec_ablation.py --compare /tmp/a.json /tmp/b.json       # paired differences, 95% CI

Variants (behaviour of RecBole / the reference where it differs):
- ``baseline``: tcf as it is.
- ``ties-later``: a validation HR@10 equal to the best so far counts as an improvement (RecBole's
  ``early_stopping`` uses >=; tcf used >), so the later of equal checkpoints is kept.
- ``left-positions``: positions counted from the oldest item of the window (RecBole: right padding,
  position 0 = oldest) instead of from the newest (SASRec's left padding).
- ``prefixes``: RecBole's batches (``train.examples: prefixes``): every (prefix, next item) is its own
  example, shuffled over all users, one loss term each, instead of user windows with a loss at every
  position.
- ``qkvo-bias``: biases on the attention's Q, K, V and output projections (RecBole; tcf and the reference
  have none).
- ``ln-eps``: LayerNorm eps 1e-12 (RecBole) instead of 1e-6 (the reference, tcf).
- ``pad-class``: the full softmax (``ce``) has one more class with logit 0, RecBole's padding item 0 (a
  zero embedding it never masks) instead of none.
- ``norm-no-decay``: AdamW decays only matrices (2-D parameters: projections, embeddings), not biases or
  LayerNorm parameters (nanoGPT's and BERT's groups) instead of every parameter (the reference, tcf).
- ``prefixes-by-user``: prefixes as above, but each batch holds whole users (all prefixes of ~batch_size
  shuffled users) instead of prefixes shuffled over all users: which half of ``prefixes`` helps, the
  right-aligned (inference-shaped) examples or the mixing of users.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import train_speed  # noqa: E402

from tcf.config import load_config  # noqa: E402
from tcf.rec import objective as objective_mod  # noqa: E402
from tcf.rec import sasrec as sasrec_mod  # noqa: E402
from tcf.rec import trainer as trainer_mod  # noqa: E402
from tcf.rec.batches import epoch_permutation  # noqa: E402


def _ties_later() -> None:
    original = trainer_mod.Trainer._validate_and_checkpoint

    def validate(self, s, state, epoch):
        best = state.best_hr
        state.best_hr = best - 1e-12 if best >= 0 else best  # an equal value now beats it
        metrics = original(self, s, state, epoch)
        if state.best_epoch != epoch:
            state.best_hr = best
        return metrics

    trainer_mod.Trainer._validate_and_checkpoint = validate


def _left_positions() -> None:
    def encode(self, item_vecs, mask):
        n = item_vecs.shape[1]
        index = (mask.long().cumsum(1) - 1).clamp_min(0)  # 0 = the oldest real item
        h = self.drop(self.ln_in(item_vecs + self.positions(index)))
        idx = torch.arange(n, device=item_vecs.device)
        causal = idx[None, :] <= idx[:, None]
        allowed = (causal & mask[:, None, :]) | torch.eye(n, dtype=torch.bool, device=item_vecs.device)
        for block in self.blocks:
            h = block(h, allowed[:, None])
        return h

    sasrec_mod.SASRec.encode = encode


def _qkvo_bias() -> None:
    original = sasrec_mod._Block.__init__

    def init(self, dim, n_heads, dropout):
        original(self, dim, n_heads, dropout)
        for name in ("q", "k", "v", "o"):
            setattr(self, name, nn.Linear(dim, dim))  # re-initialised with the model by init_weights_

    sasrec_mod._Block.__init__ = init


def _pad_class() -> None:
    original = objective_mod.ce_loss

    def ce_loss(queries, targets, table, weights=None):
        return original(queries, targets, torch.cat([table, table.new_zeros(1, table.shape[1])]), weights)

    objective_mod.ce_loss = ce_loss


def _norm_no_decay() -> None:
    original = trainer_mod.param_groups

    def param_groups(model, cfg):
        groups = []
        for g in original(model, cfg):
            matrices = [p for p in g["params"] if p.dim() >= 2]
            rest = [p for p in g["params"] if p.dim() < 2]
            groups += [{**g, "params": matrices}, {**g, "params": rest, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    trainer_mod.param_groups = param_groups


def _prefixes_by_user(per_user: np.ndarray) -> None:
    """Batches of whole users: the prefix rows are ordered by user, so a permutation of users, each
    user's rows kept together, cut into batches of the same size."""
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    original = trainer_mod.global_batches

    def global_batches(n, batch_size, seed, epoch, world_size=1):
        if n != int(per_user.sum()):
            return original(n, batch_size, seed, epoch, world_size)
        users = epoch_permutation(len(per_user), seed, epoch).numpy()
        rows = np.concatenate([np.arange(starts[u], starts[u] + per_user[u]) for u in users])
        return list(torch.from_numpy(rows).split(batch_size))

    trainer_mod.global_batches = global_batches


VARIANTS: dict[str, Callable[[np.ndarray], None]] = {
    "baseline": lambda per_user: None, "ties-later": lambda per_user: _ties_later(),
    "left-positions": lambda per_user: _left_positions(), "prefixes": lambda per_user: None,
    "prefixes-by-user": _prefixes_by_user, "qkvo-bias": lambda per_user: _qkvo_bias(),
    "ln-eps": lambda per_user: setattr(sasrec_mod, "LN_EPS", 1e-12),
    "pad-class": lambda per_user: _pad_class(),
    "norm-no-decay": lambda per_user: _norm_no_decay()}  # both prefixes variants set train.examples below


def _seeds_of(path: str) -> dict[str, dict]:
    doc = json.loads(Path(path).read_text())
    tool = doc["tools"][next(iter(doc["tools"]))] if "tools" in doc else doc
    return tool["seeds"]


def compare(a_path: str, b_path: str) -> None:
    a, b = _seeds_of(a_path), _seeds_of(b_path)
    common = sorted(set(a) & set(b), key=int)
    print(f"{len(common)} paired seeds: {', '.join(common)}")
    for key in ("test_hr@10", "test_ndcg@10"):
        xs, ys = [a[s][key] for s in common], [b[s][key] for s in common]
        mean, lo, hi = train_speed.paired_difference(xs, ys)
        print(f"{key}: {statistics.fmean(xs) * 100:.2f} vs {statistics.fmean(ys) * 100:.2f}  "
              f"difference {mean * 100:+.2f} (95% CI {lo * 100:+.2f} .. {hi * 100:+.2f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=sorted(VARIANTS), default="baseline")
    p.add_argument("--seeds", default="42,43,44,45,46,47,48,49")
    p.add_argument("--config", default=str(ROOT / "configs" / "ml100k_sasrec.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tcf config override")
    p.add_argument("--batch-size", type=int, default=256,
                   help="examples per step, as train_speed.py; 0 keeps the config's batch of user windows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON of every seed's results")
    p.add_argument("--compare", nargs=2, metavar="JSON", help="paired differences of two result files")
    args = p.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return 0
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tcf-ablation-"))
    cfg = load_config(args.config, [f"dataset.path={work / 'ml-100k'}", f"train.device={args.device}", *args.set])[0]
    src = train_speed._recbole_dir() / "dataset_example" / "ml-100k"
    _, data = train_speed.build_data(src, work, cfg)
    pairs = int(np.maximum(data.lengths - 3, 0).sum())
    if args.variant.startswith("prefixes"):
        cfg.train.examples = "prefixes"
    if args.batch_size:  # examples per step as RecBole's batch: users' worth of windows or prefixes
        cfg.train.batch_size = max(2, round(args.batch_size * data.n_users / pairs))
    VARIANTS[args.variant]((data.train_sequences()[:, :-1] != 0).sum(1))
    seeds, out = [int(s) for s in args.seeds.split(",")], {}
    for seed in seeds:
        c = cfg.model_copy(deep=True)
        c.seed = seed
        r = train_speed.run_tcf(c, data, work / f"seed{seed}", args.device)
        out[str(seed)] = {k: r[k] for k in ("test_hr@10", "test_ndcg@10", "valid_hr@10", "best_epoch", "epochs")}
        print(f"{args.variant} seed {seed}: {json.dumps(out[str(seed)])}", flush=True)
    summary = {"variant": args.variant, "config": args.config, "set": args.set, "seeds": out,
               **{k: statistics.fmean(v[k] for v in out.values()) for k in ("test_hr@10", "test_ndcg@10")}}
    print(json.dumps({k: v for k, v in summary.items() if k != "seeds"}))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
