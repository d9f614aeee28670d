"""Full-ranking evaluation: every user against every item, history masked, split across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tcf.data.prepare import EvalSplit
from tcf.rec.batches import eval_shard
from tcf.rec.metrics import full_ranking_ranks, rank_metrics
from tcf.rec.pop import Popularity
from tcf.util.dist import DistContext, gather_uneven


@torch.no_grad()
def evaluate(model: nn.Module | Popularity, split: EvalSplit, n_items: int, ks: Sequence[int],
             ctx: DistContext, batch_size: int = 1024) -> dict[str, float]:
    """Mean HR@K / NDCG@K over all users of ``split``; identical on every rank."""
    device = ctx.device
    users = eval_shard(len(split.targets), ctx.rank, ctx.world_size)
    if isinstance(model, Popularity):
        table = None
        pop_scores = model.item_scores().to(device, torch.float32)
    else:
        was_training = model.training
        model.eval()
        table = model.item_table(n_items, ctx=ctx).float()
    ranks = []
    for lo in range(users.start, users.stop, batch_size):
        hi = min(lo + batch_size, users.stop)
        targets = torch.as_tensor(split.targets[lo:hi], device=device)
        history = torch.as_tensor(split.history[lo:hi], device=device)
        if table is None:
            scores = pop_scores.expand(hi - lo, -1)
        elif hasattr(model, "encode"):  # sequential: query from the input window
            inputs = torch.as_tensor(split.inputs[lo:hi], device=device)
            scores = model.query(table, inputs).float() @ table.T
        else:  # two-tower: query from the user id
            scores = model.query(torch.arange(lo, hi, device=device)).float() @ table.T
        ranks.append(full_ranking_ranks(scores, targets, history))
    local = torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long, device=device)
    all_ranks = gather_uneven(local, ctx)
    if table is not None and was_training:
        model.train()
    return {name: float(v.double().mean()) for name, v in rank_metrics(all_ranks, ks).items()}
