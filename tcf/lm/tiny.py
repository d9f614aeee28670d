"""Tiny random-weight language models that ship like real ones: for the demo and the tests.

No machine here reaches the model hub, so the demo's text encoder is an OPT built from an
``OPTConfig`` with a byte-level BPE tokenizer trained on the item texts, saved with
``save_pretrained`` into a folder that ``tcf`` then loads like any local checkpoint.

Usage::

    build_tiny_opt("models/tiny-opt", texts, hidden=64, n_blocks=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tcf.util.atomic import atomic_folder

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def train_tokenizer(model_dir: str | Path, texts: Sequence[str], vocab_size: int = 400, pad: bool = True,
                    bos: bool = True) -> Path:
    """A byte-level BPE tokenizer that prepends BOS, as OPT's does, saved the way a model ships it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    if bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if pad:
        specials["pad_token"] = "<pad>"
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(str(model_dir))
    return Path(model_dir)


def build_tiny_opt(model_dir: str | Path, texts: Sequence[str], hidden: int, n_blocks: int, *,
                   vocab_size: int = 300, heads: int = 4, seed: int = 0, dropout: float = 0.1,
                   **save_kwargs) -> Path:
    """A random-weight OPT (FFN 2x hidden) with a tokenizer trained on ``texts``, written whole or not at all.

    ``dropout`` is the model's own (active while its top blocks are fine-tuned); ``save_kwargs`` go to
    ``save_pretrained`` (e.g. ``max_shard_size`` for a sharded checkpoint).
    """
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars for a file that takes milliseconds

    final = Path(model_dir)
    with atomic_folder(final, replace=True) as tmp:
        train_tokenizer(tmp, texts, vocab_size=vocab_size)
        tok = AutoTokenizer.from_pretrained(str(tmp))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = OPTModel(OPTConfig(
                hidden_size=hidden, num_hidden_layers=n_blocks, ffn_dim=2 * hidden, num_attention_heads=heads,
                vocab_size=len(tok), max_position_embeddings=64, word_embed_proj_dim=hidden, dropout=dropout,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        model.save_pretrained(tmp, **save_kwargs)
    return final
