"""BERT and RoBERTa as block stacks: stock embeddings (token type 0), padding-only attention, no final norm.

RoBERTa's embeddings derive positions from the token ids (pads keep the padding position), so the
ids must be padded with the config's pad token, as a RoBERTa tokenizer does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings, RobertaLayer

from tcf.lm.base import BlockStack
from tcf.lm.families.bert import BERT, ROBERTA


class BertStack(BlockStack):
    family = BERT
    _embeddings = BertEmbeddings
    _layer = BertLayer
    _prefix = "bert."

    def __init__(self, config, start, stop, include_embedding, include_final):
        super().__init__(config, start, stop, include_embedding, include_final)
        if include_embedding:
            with torch.device("cpu"):  # holds non-persistent buffers (position/token-type ids) that must be real
                self.embeddings = self._embeddings(config)
        self.layers = nn.ModuleDict({str(i): self._layer(config, layer_idx=i) for i in range(start, stop)})

    def checkpoint_names(self, local_name: str) -> list[str]:
        if local_name.startswith("layers."):
            local_name = "encoder.layer." + local_name.removeprefix("layers.")
        return [f"{self._prefix}{local_name}", local_name]

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids=ids)

    def run(self, hidden: torch.Tensor, mask: torch.Tensor | None, blocks: list[nn.Module],
            start: int) -> torch.Tensor:
        attn_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask,
            **self.mask_options(create_bidirectional_mask, "allow_is_bidirectional_skip", mask))
        for block in blocks:
            hidden = block(hidden, attn_mask)
        return hidden


class RobertaStack(BertStack):
    family = ROBERTA
    _embeddings = RobertaEmbeddings
    _layer = RobertaLayer
    _prefix = "roberta."
