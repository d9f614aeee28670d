"""Training objectives: in-batch softmax with popularity correction (IBCE) and BCE (as the TCF paper trains),
and the full softmax over all items (CE).

Both return a SUM over rows/entries; the caller divides by what it wants to average over
(e.g. the number of valid rows across all ranks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Probability floor for items never seen in training, so log p is finite (they never appear as
# in-batch candidates anyway, since batches are built from training sequences).
POP_FLOOR = 1e-12


def log_popularity(popularity: np.ndarray | torch.Tensor) -> torch.Tensor:
    """log(n_i / sum_j n_j) as float32 [I+1]; entry 0 (padding) is 0.0 (p_0 := 1); zero counts get
    log(POP_FLOOR) instead of -inf."""
    n = torch.as_tensor(popularity).detach().to("cpu", torch.float64)
    total = n[1:].sum()
    if total <= 0:
        raise ValueError("popularity counts are all zero")
    out = (n / total).clamp_min(POP_FLOOR).log()
    out[0] = 0.0
    return out.float()


def _unique_padded(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, return_inverse=True)`` with the unique values padded to ``len(ids)`` by the
    largest int64, so their count never has to reach the host: on a GPU that sync stalled every step."""
    ordered, perm = ids.sort()
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    group = new.cumsum(0) - 1
    inverse = torch.empty_like(group).scatter_(0, perm, group)
    uniq = torch.full_like(ordered, torch.iinfo(ordered.dtype).max).scatter_(0, group, ordered)
    return uniq, inverse


def _cross_entropy_sum(z: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.cross_entropy(z, targets, reduction="sum")
    return (F.cross_entropy(z, targets, reduction="none") * weights).sum()


def ibce_loss(queries: torch.Tensor, query_user: torch.Tensor, target_slot: torch.Tensor,
              cand_vecs: torch.Tensor, cand_ids: torch.Tensor, user_windows: torch.Tensor,
              log_pop: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch softmax cross-entropy with logQ correction, summed over rows (times ``weights`` [R] if given:
    a static-shape step keeps padding rows at weight 0 instead of selecting the real ones).

    queries [R, d]; query_user [R] (row of user_windows); target_slot [R] (index into the M
    candidates); cand_vecs [M, d]; cand_ids [M]; user_windows [Bg, W] ids (0 = pad); log_pop [I+1].
    z[r, m] = <q_r, v_m> - log p(cand_ids[m]), with -inf for padding candidates, candidates whose id
    is in the row's user window, and other copies of the row's target id (which would be false
    negatives); the target slot itself stays unmasked, so no row is fully masked.
    """
    dev = cand_ids.device
    # Window membership without an [R, W, M] tensor: flag (user, unique id) pairs, then gather.
    uniq, inv = _unique_padded(cand_ids)
    k = uniq.numel()
    pos = torch.searchsorted(uniq, user_windows.contiguous()).clamp_max(k - 1)
    col = torch.where(uniq[pos] == user_windows, pos, k)              # k = "not a candidate"
    flags = torch.zeros(user_windows.shape[0], k + 1, dtype=torch.bool, device=dev)
    flags.scatter_(1, col, True)
    mask = flags[query_user[:, None], inv[None, :]]                     # [R, M]
    mask |= (cand_ids == 0)[None, :]
    mask |= cand_ids[None, :] == cand_ids[target_slot][:, None]
    mask.scatter_(1, target_slot[:, None], False)  # scalar fill; ``mask[r, t] = False`` copies False and waits

    with torch.autocast(queries.device.type, enabled=False):  # logits in fp32, even under bf16 AMP
        z = queries.float() @ cand_vecs.float().T - log_pop.to(dev)[cand_ids].float()[None, :]
    z = z.masked_fill(mask, float("-inf"))
    return _cross_entropy_sum(z, target_slot, weights)


def ce_loss(queries: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Full softmax over every item (RecBole's ``CE``), summed over rows (times ``weights`` [R] if given;
    a row of weight 0 may have target 0, padding).

    queries [R, d]; targets [R] item ids; table [I+1, d] vectors of all items (row 0, padding, is
    never a candidate). Exact rather than sampled, so affordable when the item table is cheap to
    compute (ID towers, frozen text towers).
    """
    if weights is not None:  # a padding row's target is no candidate: its loss would be inf, and inf * 0 nan
        targets = targets.masked_fill(weights == 0, 1)
    with torch.autocast(queries.device.type, enabled=False):  # logits in fp32, even under bf16 AMP
        z = queries.float() @ table.float().T
    z[:, 0] = float("-inf")
    return _cross_entropy_sum(z, targets, weights)


def sample_negatives(windows: torch.Tensor, n_items: int, shape: tuple[int, ...],
                     generator: torch.Generator, max_rounds: int = 32) -> torch.Tensor:
    """Uniform negatives from 1..I, never an id in the user's window row.

    windows [B, W] ids (0 = pad); shape (B, ...) -> long tensor of that shape on windows' device.
    Draws on the generator's device (deterministic for a seeded generator). Rejected draws are
    redrawn for up to ``max_rounds`` rounds; anything still rejected (a window covering almost all
    items) is drawn exactly from that row's allowed items. Raises ValueError if none are allowed.
    """
    if shape[0] != windows.shape[0]:
        raise ValueError(f"shape {tuple(shape)} does not start with the batch size {windows.shape[0]}")
    dev = generator.device
    w = windows.to(dev)
    neg = torch.randint(1, n_items + 1, tuple(shape), generator=generator, device=dev)
    flat = neg.view(w.shape[0], -1)

    def rejected() -> torch.Tensor:
        return (flat[:, :, None] == w[:, None, :]).any(-1)

    for _ in range(max_rounds):
        bad = rejected()
        n_bad = int(bad.sum())
        if n_bad == 0:
            return neg.to(windows.device)
        flat[bad] = torch.randint(1, n_items + 1, (n_bad,), generator=generator, device=dev)
    bad = rejected()
    if bad.any():
        row = bad.nonzero()[:, 0]
        allowed = torch.ones(row.numel(), n_items + 1, dtype=torch.bool, device=dev)
        allowed[:, 0] = False
        allowed.scatter_(1, w[row], False)
        if not allowed.any(1).all():
            raise ValueError("a user's window contains every item: no negative can be sampled")
        flat[bad] = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)
    return neg.to(windows.device)


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits: positives labelled 1, negatives 0; SUM over all entries."""
    pos, neg = pos_scores.float(), neg_scores.float()
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum"))
