"""OPT as a block stack: token embedding (+ project_in), mask-derived learned positions, causal blocks.

The final layer norm exists only for pre-LN configs (every size but 350m); ``project_out`` is never
built, so OPT-350m's stored width is hidden_size (1024), as the method specifies.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask
from transformers.models.opt.modeling_opt import OPTDecoderLayer, OPTLearnedPositionalEmbedding

from tcf.lm.base import BlockStack
from tcf.lm.families.opt import OPT


class OPTStack(BlockStack):
    family = OPT

    def __init__(self, config, start, stop, include_embedding, include_final):
        super().__init__(config, start, stop, include_embedding, include_final)
        if include_embedding:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.word_embed_proj_dim, config.pad_token_id)
            self.embed_positions = OPTLearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
            if config.word_embed_proj_dim != config.hidden_size:
                self.project_in = nn.Linear(config.word_embed_proj_dim, config.hidden_size, bias=False)
            else:
                self.project_in = None
        self.layers = nn.ModuleDict({str(i): OPTDecoderLayer(config, layer_idx=i) for i in range(start, stop)})
        self.final_layer_norm = None
        if include_final and self.has_final_norm(config):
            self.final_layer_norm = nn.LayerNorm(
                config.hidden_size, elementwise_affine=config.layer_norm_elementwise_affine
            )

    @staticmethod
    def has_final_norm(config) -> bool:
        return bool(config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm", False))

    def checkpoint_names(self, local_name: str) -> list[str]:
        return [f"model.decoder.{local_name}", f"decoder.{local_name}"]

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.long()
        positions = torch.cumsum(mask, dim=1)
        positions = positions * mask - 1  # pads get -1 (+ offset 2), exactly as HF OPT
        hidden = self.embed_tokens(ids)
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        return hidden + self.embed_positions(mask, position_ids=positions)

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: list[nn.Module],
            start: int) -> torch.Tensor:
        # positional: transformers 5.x renamed the 4th (cache) argument between minor releases
        attn_mask = create_causal_mask(self.config, hidden, mask, None,
                                       **self.mask_options(create_causal_mask, "allow_is_causal_skip", mask))
        for block in blocks:
            hidden = block(hidden, attention_mask=attn_mask)
        return hidden

    def final(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(hidden) if self.final_layer_norm is not None else hidden
