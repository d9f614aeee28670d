"""Text item towers (method §3.3–3.4): item vectors from a language model's view of the item text.

* :class:`FrozenTextTower`: the pooled final embeddings of every item (from pre-inference) through the
  projection MLP; only the MLP trains.
* :class:`FineTunedTextTower`: the top N pretrained blocks (and the final norm) re-run on the stored
  latents after L−N blocks, then pooling and the projection MLP. The blocks start from the checkpoint's
  weights; the recommender's initialisation never touches them (the reference's BUG-3), and the pooling
  works for every family (its BUG-5).

Both map dense item ids (0 = padding, a zero vector before the MLP) to rows of the latents artifact
through ``rows``, so the artifact's row order (its ``items.json``) and the training ids stay independent.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.attention import sdpa_kernel

from tcf.errors import TcfError
from tcf.lm.attention import ATTENTION_BACKENDS
from tcf.lm.checkpoint import model_shape
from tcf.lm.pooling import POOLINGS, Pooling, pool, pooling_rule
from tcf.preinfer.latents import ArrayFile, LatentStore
from tcf.rec.latent_gather import LatentGather
from tcf.rec.towers import MLP
from tcf.util.dist import DistContext


@dataclass(frozen=True)
class TextSource:
    """Where a text tower's inputs are: a finished latents artifact and the checkpoint it came from."""

    latents: Path
    model_dir: Path
    unfreeze: int
    pooling: str  # "auto": the folder's or the family's default (tcf.lm.pooling.pooling_rule)
    normalize: str | bool = "auto"

    def pooling_rule(self) -> Pooling:
        return pooling_rule(self.model_dir, self.pooling, self.normalize)

    def item_vectors(self, rows: np.ndarray | None = None) -> torch.Tensor:
        """The frozen tower's input: every item's pooled vector (or those of latents ``rows``), fp32 [N, H]."""
        rule = self.pooling_rule()
        return rule.finish(LatentStore(self.latents).read(rule.kind, rows))


def item_rows(store: LatentStore, item_keys: list[str]) -> torch.Tensor:
    """Row of the latents artifact for each dense item id (id 0, padding, gets row -1)."""
    where = {key: row for row, key in enumerate(store.item_keys())}
    missing = [k for k in item_keys[1:] if k not in where]
    if missing:
        raise TcfError(f"{store.folder}: the latents have no item {missing[0]!r} ({len(missing)} missing); "
                       "they were computed for another item file")
    return torch.tensor([-1] + [where[k] for k in item_keys[1:]], dtype=torch.long)


class FrozenTextTower(nn.Module):
    """Pooled LM embedding per item (a fixed table) -> projection MLP."""

    def __init__(self, table: torch.Tensor, dim: int, projection_layers: int = 1, dropout: float = 0.1,
                 init: str = "xavier"):
        super().__init__()
        # derived from the artifact at build time, so not part of the model's checkpoint
        self.register_buffer("table", table.float(), persistent=False)
        self.mlp = MLP(table.shape[1], dim, projection_layers, dropout, init)

    @classmethod
    def from_source(cls, source: TextSource, item_keys: list[str], dim: int, projection_layers: int = 1,
                    dropout: float = 0.1, init: str = "xavier") -> FrozenTextTower:
        rows = item_rows(LatentStore(source.latents), item_keys)
        pooled = source.item_vectors(rows[1:].numpy())
        table = torch.cat([torch.zeros(1, pooled.shape[1]), pooled])
        return cls(table, dim, projection_layers, dropout, init)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.table[ids])


class Announced(NamedTuple):
    """The next forward's items, known on the host: unique ids (ascending, no padding), their latents
    rows, and under DDP how the ranks share them (:func:`_deal`)."""

    unique: np.ndarray
    rows: np.ndarray
    split: tuple[np.ndarray, np.ndarray] | None


class FineTunedTextTower(nn.Module):
    """Top N LM blocks on stored latents -> pooling -> projection MLP, for the items of each batch only.

    The latents stay on disk: each batch's rows are read with ``pread`` into pinned memory (the next
    batch's while the current one computes, when the caller announces it with :meth:`prefetch`), so
    host memory does not grow with the number of items; a GPU with room keeps them all (LatentGather).

    Under DDP, an announced global batch is split by items, not by users: its unique items are dealt out
    to the ranks (in length order, so every rank pads to about the same length), each rank encodes its
    share, and the vectors are all-gathered with their gradients. Every item is encoded once per step
    instead of once on every rank whose users hold it, and the result is the single-process one.
    """

    def __init__(self, blocks: nn.Module, latents: ArrayFile, lengths: np.ndarray, rows: torch.Tensor,
                 pooling: str | Pooling, dim: int, projection_layers: int = 1, dropout: float = 0.1,
                 init: str = "xavier"):
        super().__init__()
        pooling = pooling if isinstance(pooling, Pooling) else Pooling(pooling, False)
        if pooling.kind not in POOLINGS:
            raise TcfError(f"text_encoder.pooling: {pooling.kind!r} is not one of {', '.join(POOLINGS)}")
        self.blocks = blocks
        blocks.inspect_masks = False  # no host sync per step (see BlockStack.inspect_masks)
        self.gather = LatentGather(latents, lengths)
        self.rows = rows.numpy().copy()  # dense item id -> latents row, looked up on the host
        self.pooling = pooling
        self.width = latents.shape[2]
        self.mlp = MLP(self.width, dim, projection_layers, dropout, init)
        self._announced: Announced | None = None  # host ids of the next forward
        self._missed: torch.Tensor | None = None  # ids a forward got but was not announced

    @classmethod
    def from_source(cls, source: TextSource, item_keys: list[str], dim: int, projection_layers: int = 1,
                    dropout: float = 0.1, init: str = "xavier") -> FineTunedTextTower:
        store = LatentStore(source.latents)
        from tcf.lm import load_stage  # transformers: only for text towers

        n_blocks = model_shape(source.model_dir).n_blocks
        depth = n_blocks - source.unfreeze
        if depth not in store.committed():
            raise TcfError(f"{source.latents}: no latents after {depth} blocks (pre-inference kept "
                           f"{store.committed() or 'none'}); rerun it with text_encoder.unfreeze: {source.unfreeze}")
        blocks = load_stage(source.model_dir, depth, n_blocks, include_embedding=False, include_final=True,
                            dtype=torch.float32, device="cpu")
        return cls(blocks, store.open(depth), store.lengths(), item_rows(store, item_keys),
                   source.pooling_rule(), dim, projection_layers, dropout, init)

    @property
    def item_lengths(self) -> np.ndarray:
        """Token count of each dense item id (0 for id 0, padding): the order that keeps the item table's
        chunks short (:func:`tcf.rec.towers.encode_all_items`)."""
        return np.concatenate([[0], self.gather.lengths[self.rows[1:]]])

    def _unique(self, ids: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unique item ids, ascending, padding dropped; their latents rows)."""
        unique = np.unique(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids))
        unique = unique[unique != 0]
        return unique, self.rows[unique]

    def prefetch(self, ids: torch.Tensor | np.ndarray, ctx: DistContext | None = None) -> None:
        """Announce the ids of the next forward (a host copy): it starts reading their latents now and
        will not copy its ids back from the GPU, a wait for every queued kernel. Under DDP (``ctx``) pass
        the whole global batch: the ranks then share its items (see the class docstring)."""
        unique, rows = self._unique(ids)
        split = _deal(self.gather.lengths[rows], ctx) if ctx is not None and ctx.distributed and len(rows) else None
        self._announced = Announced(unique, rows, split)
        if len(rows):
            self.gather.prefetch(rows if split is None else rows[split[0]])

    def check_announced(self) -> None:
        """Raise if a forward's ids differed from what :meth:`prefetch` announced (one host sync)."""
        missed, self._missed = self._missed, None
        if missed is not None and int(missed):
            raise TcfError("internal error: the fine-tuned text tower was announced other ids than it got")

    def _encode(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """Pooled top-block outputs [len(rows), H] (fp32) of latents rows ``rows``."""
        weight = next(self.blocks.parameters())
        x, mask = self.gather.take(rows, device)
        with sdpa_kernel(ATTENTION_BACKENDS) if device.type == "cuda" else contextlib.nullcontext():
            hidden = self.blocks(x.to(weight.dtype), mask.long())
        hidden = hidden.masked_fill(~mask[..., None], 0)
        return self.pooling.finish(pool(hidden, mask)[self.pooling.kind])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        device = next(self.blocks.parameters()).device
        announced, self._announced = self._announced, None
        unique, rows, split = announced if announced is not None else (*self._unique(ids), None)
        if split is None:
            pooled = torch.zeros(len(unique) + 1, self.width, device=device)  # row 0: padding
            if len(unique):
                pooled[1:] = self._encode(rows, device)
            table = self.mlp(pooled)
        else:  # this rank's share, then everyone's, in ``unique`` order
            mine, source = split
            shared = torch.cat(dist_fn.all_gather(self.mlp(self._encode(rows[mine], device))))
            source_rows = torch.as_tensor(source).to(device, non_blocking=True)
            table = torch.cat([self.mlp(torch.zeros(1, self.width, device=device)), shared[source_rows]])
        lookup = torch.as_tensor(np.concatenate([[0], unique])).to(device, non_blocking=True)
        flat = ids.reshape(-1)
        position = torch.searchsorted(lookup, flat).clamp_max(len(unique))
        if announced is not None:  # checked at the caller's next sync, not here
            missed = (lookup[position] != flat).sum()
            self._missed = missed if self._missed is None else self._missed + missed
        # not table[position]: its backward accumulates repeated items in a thread-dependent order on CPUs
        # (index_put_), so the same run gave different results; the embedding backward sums in a fixed one
        return nn.functional.embedding(position, table).view(*ids.shape, -1)


def _deal(lengths: np.ndarray, ctx: DistContext) -> tuple[np.ndarray, np.ndarray]:
    """Deal items (their token ``lengths``) round-robin in length order: (this rank's item indices, padded
    with its first to the common width so every rank's blocks run; for each item, its row in the
    all-gathered [world * width] vectors)."""
    order = np.argsort(lengths, kind="stable")
    world = ctx.world_size
    width = -(-len(order) // world)
    source = np.empty(len(order), dtype=np.int64)
    for r in range(world):
        part = order[r::world]
        source[part] = r * width + np.arange(len(part))
    mine = order[ctx.rank::world]
    mine = np.concatenate([mine, np.repeat(order[:1], width - len(mine))])
    return mine, source
