"""One vector per item from a language model's final hidden states, and the one place its rules are decided.

The first token suits encoders pre-trained to summarise the text there ([CLS] / <s>: BERT, RoBERTa); the
masked mean and the last real token suit decoders. Each family's default is its ``Family.pooling``; a
sentence-transformers folder's own Pooling and Normalize modules come first (it was trained to be used so).

    pooled = pool(hidden, mask)     # {"mean": [B, H], "first": [B, H], "last": [B, H]}, fp32
    rule = pooling_rule(model_dir, pooling="auto", normalize="auto")   # Pooling(kind='mean', normalize=True)
    vectors = rule.finish(pooled[rule.kind])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tcf.errors import TcfError

POOLINGS = ("mean", "first", "last")


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Item embeddings from final hidden states [B, L, H] (zeros at padding) and the [B, L] bool mask, in fp32:
    masked mean over real tokens, the first token, the last real token."""
    h = hidden.float()
    counts = mask.sum(1)
    last = h[torch.arange(len(h), device=h.device), counts - 1]
    return {"mean": h.sum(1) / counts[:, None].to(h.dtype), "first": h[:, 0], "last": last}


@dataclass(frozen=True)
class Pooling:
    """How a text tower turns token states into an item vector: which pooling, then whether to L2-normalise.

    Pre-inference stores every pooling unnormalised; the rule is applied where the vectors are read."""

    kind: str  # one of POOLINGS
    normalize: bool

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` [N, H] (this rule's kind) as the tower's input: fp32, L2-normalised when asked."""
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def pooling_rule(model_dir: str | Path, pooling: str = "auto", normalize: str | bool = "auto") -> Pooling:
    """The rule for the checkpoint in ``model_dir`` (a transformer folder) under ``text_encoder.pooling`` and
    ``text_encoder.normalize``: an explicit value wins; ``auto`` takes the sentence-transformers folder's
    Pooling module (mean / cls / last token) and whether a Normalize module follows it, else the family's
    pooling without normalisation."""
    from tcf.lm.checkpoint import model_family
    from tcf.lm.st_modules import modules_of, pooling_mode

    if pooling != "auto" and pooling not in POOLINGS:
        raise TcfError(f"text_encoder.pooling: {pooling!r} is not one of auto, {', '.join(POOLINGS)}")
    if normalize != "auto" and not isinstance(normalize, bool):
        raise TcfError(f"text_encoder.normalize: {normalize!r} is not one of auto, true, false")
    modules = modules_of(model_dir) if "auto" in (pooling, normalize) else None
    if pooling == "auto":
        if modules is not None and modules.pooling is not None:
            pooling = pooling_mode(modules.root / modules.pooling / "config.json")
        else:
            pooling = model_family(model_dir).pooling
    if normalize == "auto":
        normalize = modules is not None and modules.normalize
    return Pooling(pooling, bool(normalize))
