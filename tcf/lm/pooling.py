"""One vector per item from a language model's final hidden states, three ways.

The first token suits encoders pre-trained to summarise the text there ([CLS] / <s>: BERT, RoBERTa); the
masked mean and the last real token suit decoders. Each family's default is its ``Family.pooling``.

    pooled = pool(hidden, mask)     # {"mean": [B, H], "first": [B, H], "last": [B, H]}, fp32
"""

from __future__ import annotations

import torch

POOLINGS = ("mean", "first", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Item embeddings from final hidden states [B, L, H] (zeros at padding) and the [B, L] bool mask, in fp32:
    masked mean over real tokens, the first token, the last real token."""
    h = hidden.float()
    counts = mask.sum(1)
    last = h[torch.arange(len(h), device=h.device), counts - 1]
    return {"mean": h.sum(1) / counts[:, None].to(h.dtype), "first": h[:, 0], "last": last}
