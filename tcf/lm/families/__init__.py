"""The family table: every ``config.model_type`` tcf runs block by block, and the family that knows it.

Each family has one home, a package here: its ``__init__`` holds the facts (a :class:`Family`: tensor
layout, config keys, gated FFNs, default pooling) and imports neither torch nor transformers; its
``stack`` module holds the BlockStack, imported only when a stage is built::

    family("qwen2").pooling          # 'mean'
    family("qwen2").stack_class()    # LlamaStack (imports transformers' modeling code)

:data:`FAMILIES` is the only list of families; everything else asks it.
"""

from __future__ import annotations

from tcf.errors import TcfError
from tcf.lm.families import bert, llama, opt, t5
from tcf.lm.families.spec import Family

#: ``config.model_type`` -> its family
FAMILIES: dict[str, Family] = {
    model_type: f for f in (opt.OPT, bert.BERT, bert.ROBERTA, t5.T5, llama.LLAMA) for model_type in f.model_types
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family(model_type: object) -> Family:
    """The family of ``config.model_type``; TcfError naming the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise TcfError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
    return FAMILIES[model_type]
