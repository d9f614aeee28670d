"""What tcf knows about a model family, as plain data: nothing here imports torch or transformers.

A :class:`Family` says how its checkpoints name their tensors (:class:`Layout`, to weigh blocks from
safetensors headers), which ``config.json`` keys give its shape (:class:`ConfigKeys`), whether its FFNs
are gated, how its items are pooled by default, and where its BlockStack lives (imported on demand).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcf.lm.base import BlockStack


@dataclass(frozen=True)
class Layout:
    """Regexes over checkpoint tensor names: a block's (the block index as group 1), the embedding stage's
    and the final norm's. Names matching none are never loaded (a pooler, T5's decoder, an LM head)."""

    block: str
    embedding: str
    final: str | None


@dataclass(frozen=True)
class ConfigKeys:
    """The ``config.json`` keys holding the number of blocks, the hidden size, the heads and the FFN width."""

    blocks: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    heads: str = "num_attention_heads"
    ffn: str = "intermediate_size"


def ungated(config: Mapping[str, Any]) -> bool:
    return False


def gated(config: Mapping[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Family:
    """One family of checkpoints: the ``config.model_type`` values it covers and everything tcf needs of them.

    ``gated_ffn(config)`` tells SwiGLU-style FFNs (three [T, ffn] tensors, not two) from ``config.json``;
    ``pooling`` is the default item pooling (``text_encoder.pooling: auto``); ``stack`` names the
    ``"module:Class"`` of its BlockStack, imported only by :meth:`stack_class` (transformers' modeling code
    takes seconds to import, and `tcf plan` or `tcf queue add` only need the facts).
    """

    name: str
    model_types: tuple[str, ...]
    layout: Layout
    stack: str
    keys: ConfigKeys = field(default_factory=ConfigKeys)
    pooling: str = "mean"
    gated_ffn: Callable[[Mapping[str, Any]], bool] = ungated

    def stack_class(self) -> type[BlockStack]:
        """The family's BlockStack class (imports its modeling code)."""
        module, name = self.stack.split(":")
        return getattr(importlib.import_module(module), name)
