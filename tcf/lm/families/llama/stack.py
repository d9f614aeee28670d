"""Llama, Mistral and Qwen2 as block stacks: token embedding, causal + padding mask, rotary positions, RMSNorm.

Rotary cos/sin are recomputed for every range from positions 0..T-1 (right padding, as HF does without
a cache); per-layer sliding-window masks follow each family's config exactly as its HF model does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2

from tcf.lm.base import BlockStack
from tcf.lm.families.llama import LLAMA


@dataclass(frozen=True)
class _Classes:
    layer: type[nn.Module]
    norm: type[nn.Module]
    rotary: type[nn.Module]


_CLASSES = {
    "llama": _Classes(
        modeling_llama.LlamaDecoderLayer, modeling_llama.LlamaRMSNorm, modeling_llama.LlamaRotaryEmbedding
    ),
    "mistral": _Classes(
        modeling_mistral.MistralDecoderLayer, modeling_mistral.MistralRMSNorm, modeling_mistral.MistralRotaryEmbedding
    ),
    "qwen2": _Classes(
        modeling_qwen2.Qwen2DecoderLayer, modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.Qwen2RotaryEmbedding
    ),
}


class LlamaStack(BlockStack):
    family = LLAMA

    def __init__(self, config, start, stop, include_embedding, include_final):
        super().__init__(config, start, stop, include_embedding, include_final)
        classes = _CLASSES[config.model_type]
        if include_embedding:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleDict({str(i): classes.layer(config, i) for i in range(start, stop)})
        with torch.device("cpu"):  # inv_freq is a non-persistent buffer: computed, never loaded
            self.rotary_emb = classes.rotary(config=config)
        if include_final:
            self.norm = classes.norm(config.hidden_size, eps=config.rms_norm_eps)

    def checkpoint_names(self, local_name: str) -> list[str]:
        return [f"model.{local_name}", local_name]

    def _layer_type(self, index: int) -> str:
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None and self.config.model_type == "qwen2":
            return layer_types[index]
        if self.config.model_type == "mistral" and self.config.sliding_window is not None:
            return "sliding_attention"
        return "full_attention"

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: list[nn.Module],
            start: int) -> torch.Tensor:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        # config, embeds, mask and (no) cache positionally: transformers 5.x renamed the cache argument
        args = (self.config, hidden, mask, None)
        masks: dict[str, torch.Tensor | None] = {}
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for index, block in enumerate(blocks, start=start):
            kind = self._layer_type(index)
            if kind not in masks:
                make = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
                options = self.mask_options(make, "allow_is_causal_skip", mask)
                masks[kind] = make(*args, position_ids=position_ids, **options)
            hidden = block(
                hidden, attention_mask=masks[kind], position_ids=position_ids, position_embeddings=position_embeddings
            )
        return hidden

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)
