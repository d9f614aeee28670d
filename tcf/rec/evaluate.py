"""Full-ranking evaluation: every user against every item, history masked, split across ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from tcf.data.prepare import EvalSplit
from tcf.rec.batches import eval_shard
from tcf.rec.metrics import full_ranking_ranks, rank_metrics
from tcf.rec.pop import Popularity
from tcf.util.dist import DistContext, gather_uneven


def mean_metrics(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Mean HR@K / NDCG@K over the users of ``ranks`` (summed in float64)."""
    return {name: float(v.double().mean()) for name, v in rank_metrics(ranks, ks).items()}


def evaluate(model: nn.Module | Popularity, split: EvalSplit, n_items: int, ks: Sequence[int],
             ctx: DistContext, batch_size: int = 1024, amp: torch.dtype | None = None) -> dict[str, float]:
    """Mean HR@K / NDCG@K over all users of ``split``; identical on every rank."""
    return mean_metrics(evaluate_ranks(model, split, n_items, ctx, batch_size, amp), ks)


@torch.no_grad()
def evaluate_ranks(model: nn.Module | Popularity, split: EvalSplit, n_items: int, ctx: DistContext,
                   batch_size: int = 1024, amp: torch.dtype | None = None) -> torch.Tensor:
    """The rank of every user's target (:func:`full_ranking_ranks`), in the split's user order, on every rank:
    what means and breakdowns (tcf.rec.buckets) are taken over.

    ``amp``: the training's autocast dtype, for the query encoder (a SASRec over every user is most of an
    evaluation's work); the item table and the scores stay fp32, so ranks are not decided by bf16 ties."""
    device = ctx.device
    users = eval_shard(len(split.targets), ctx.rank, ctx.world_size)
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    # the shard's rows on the device at once: a host copy per batch would wait for the GPU each time
    all_targets = torch.as_tensor(split.targets[users], device=device)
    all_history = torch.as_tensor(split.history[users], device=device)
    all_inputs = torch.as_tensor(split.inputs[users], device=device)
    # a two-tower's user ids: the split's rows of the dataset (a narrowed test split is not rows 0..U-1)
    user_ids = (torch.arange(users.start, users.stop, device=device) if split.users is None
                else torch.as_tensor(split.users[users], device=device))
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
        rows = slice(lo - users.start, hi - users.start)
        targets, history = all_targets[rows], all_history[rows]
        if table is None:
            scores = pop_scores.expand(hi - lo, -1)
        elif hasattr(model, "encode"):  # sequential: query from the input window
            with autocast:
                query = model.query(table, all_inputs[rows])
            scores = query.float() @ table.T
        else:  # two-tower: query from the user id
            with autocast:
                query = model.query(user_ids[rows])
            scores = query.float() @ table.T
        ranks.append(full_ranking_ranks(scores, targets, history))
    local = torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long, device=device)
    all_ranks = gather_uneven(local, ctx)
    if table is not None and was_training:
        model.train()
    return all_ranks
