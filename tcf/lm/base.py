"""A contiguous slice of a language model: optional embedding stage, blocks [start, stop), optional final norm.

Each family's ``stack`` module (``tcf.lm.families.<name>.stack``) subclasses ``BlockStack``; its
:class:`~tcf.lm.families.spec.Family` names that class, so it is imported only when a stage is built.
Blocks are kept in ``self.layers`` under their original index (``layers.10``), so the local parameter
names map one-to-one onto checkpoint tensor names.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig

from tcf.errors import TcfError
from tcf.lm.families.spec import Family


class BlockStack(nn.Module):
    """Runs blocks [start, stop) of a model; ``embed`` and ``final`` exist only when built with them.

    ``forward(x, mask)`` takes token ids when the embedding stage is included, else the stored output
    of block ``start - 1`` ([B, T, H]); ``mask`` is the [B, T] 0/1 padding mask of the token ids.
    """

    family: ClassVar[Family]  # the facts of the family this stack runs
    #: Whether transformers may read an attention mask's contents to drop it when a batch has no padding
    #: (a faster kernel). Reading it waits for the GPU to finish all queued work; a fine-tuned tower's
    #: batches are always padded, so it turns this off and its steps never wait on the host.
    inspect_masks: bool = True

    def __init__(self, config: PretrainedConfig, start: int, stop: int, include_embedding: bool, include_final: bool):
        super().__init__()
        n = self.count_blocks(config)
        if not 0 <= start <= stop <= n:
            raise TcfError(f"block range [{start}, {stop}) is outside the model's {n} blocks")
        if include_embedding and start != 0:
            raise TcfError(f"the embedding stage can only precede block 0, not block {start}")
        if include_final and stop != n:
            raise TcfError(f"the final norm applies only after the last block ({n - 1}), not after block {stop - 1}")
        if start == stop and not include_embedding:
            raise TcfError("an empty block range without the embedding stage computes nothing")
        self.config = config
        self.start, self.stop = start, stop
        self.include_embedding, self.include_final = include_embedding, include_final
        self.tensors_read: list[str] = []  # checkpoint tensor names loaded into this stage (set by load_stage)

    # --- family hooks ---------------------------------------------------------------------------------

    @classmethod
    def count_blocks(cls, config: PretrainedConfig) -> int:
        return getattr(config, cls.family.keys.blocks)

    @property
    def n_blocks(self) -> int:
        """Number of blocks in the whole model (not in this slice)."""
        return self.count_blocks(self.config)

    def checkpoint_names(self, local_name: str) -> list[str]:
        """Candidate checkpoint tensor names for a parameter of this module, most likely first."""
        raise NotImplementedError

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids to the first block's input (most families: their token embedding alone)."""
        return self.embed_tokens(ids)

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: list[nn.Module],
            start: int) -> torch.Tensor:
        """``blocks`` (at least one, the first being block ``start``) on ``hidden``; ``mask`` None: no row is
        padded."""
        raise NotImplementedError

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    # --- shared ---------------------------------------------------------------------------------------

    def mask_options(self, make: Callable, skip_flag: str, mask: torch.Tensor | None) -> dict[str, bool]:
        """Keyword arguments for transformers' mask builder ``make``: its ``skip_flag`` off unless
        :attr:`inspect_masks` (older transformers without the flag always inspect). Without a padding mask
        the skip reads nothing, so it stays on: no mask is built and attention takes the causal kernel."""
        off = not self.inspect_masks and mask is not None and skip_flag in _parameters(make)
        return {skip_flag: False} if off else {}

    def _check_range(self, start: int, stop: int) -> None:
        if not self.start <= start <= stop <= self.stop:
            raise TcfError(f"blocks [{start}, {stop}) are not loaded; this stage holds [{self.start}, {self.stop})")

    def _blocks(self, start: int, stop: int) -> list[nn.Module]:
        self._check_range(start, stop)
        return [self.layers[str(i)] for i in range(start, stop)]

    def run_blocks(self, hidden: torch.Tensor, mask: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        """Blocks [start, stop) on ``hidden`` (none: ``hidden`` itself); ``mask`` None: no row is padded."""
        blocks = self._blocks(start, stop)
        return self.run(hidden, mask, blocks, start) if blocks else hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor, padded: bool = True) -> torch.Tensor:
        """``padded=False`` is the caller's promise that ``mask`` is all ones (it knows its token lengths):
        the attention then runs unmasked (causal where the family is) without anyone reading the mask,
        which would make the host wait for the GPU on every call."""
        hidden = self.embed(x, mask) if self.include_embedding else x
        hidden = self.run_blocks(hidden, mask if padded else None, self.start, self.stop)
        if self.include_final:
            hidden = self.final(hidden)
        return hidden


@functools.cache
def _parameters(fn: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)
