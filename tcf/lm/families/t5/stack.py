"""The T5 / flan-T5 encoder as a block stack: raw shared embedding, padding-only attention, final RMS norm.

T5 keeps its relative position bias table in block 0 only and shares the computed bias with every
later block. Here no block owns it: ``relative_bias`` holds block 0's table (read from the
checkpoint whatever the range) and the bias is computed once per call, so a range starting at
block s > 0 sees exactly the bias the whole model would.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.t5.modeling_t5 import T5Attention, T5Block, T5LayerNorm

from tcf.lm.base import BlockStack
from tcf.lm.families.t5 import T5

_BIAS = "relative_bias.relative_attention_bias.weight"
_BLOCK0_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _bias_table(config) -> T5Attention:
    """A T5Attention reduced to its relative-bias table (its projections are never used here)."""
    attention = T5Attention(config, has_relative_attention_bias=True)
    for name in ("q", "k", "v", "o"):
        delattr(attention, name)
    return attention


class T5EncoderStack(BlockStack):
    family = T5

    def __init__(self, config, start, stop, include_embedding, include_final):
        config.is_decoder = False
        config.use_cache = False
        super().__init__(config, start, stop, include_embedding, include_final)
        if include_embedding:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.relative_bias = _bias_table(config) if stop > start else None
        self.layers = nn.ModuleDict(
            {str(i): T5Block(config, has_relative_attention_bias=False, layer_idx=i) for i in range(start, stop)}
        )
        if include_final:
            self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def checkpoint_names(self, local_name: str) -> list[str]:
        if local_name == "embed_tokens.weight":
            return ["shared.weight", "encoder.embed_tokens.weight"]
        if local_name == _BIAS:
            return [_BLOCK0_BIAS]
        if local_name.startswith("layers."):
            local_name = "block." + local_name.removeprefix("layers.")
        return [f"encoder.{local_name}"]

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: list[nn.Module],
            start: int) -> torch.Tensor:
        length = hidden.shape[1]
        position_bias = self.relative_bias.compute_bias(length, length, device=hidden.device).to(hidden.dtype)
        attn_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask,
            **self.mask_options(create_bidirectional_mask, "allow_is_bidirectional_skip", mask))
        for block in blocks:
            hidden = block(hidden, attn_mask, position_bias)[0]
        return hidden

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(hidden)
