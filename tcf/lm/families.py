"""Which tcf.lm module handles each ``config.model_type``: checked without importing any of them.

Importing a family module imports transformers' modeling code (seconds); `tcf plan` and `tcf queue add`
only need to know that a checkpoint's family is supported.
"""

from __future__ import annotations

from tcf.errors import TcfError

#: ``config.model_type`` -> the tcf.lm module of its family (which registers its BlockStack on import)
FAMILIES = {"bert": "bert", "roberta": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama",
            "opt": "opt", "t5": "t5"}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def check_supported(model_type: str) -> None:
    """TcfError naming the supported families unless ``model_type`` is one."""
    if model_type not in FAMILIES:
        raise TcfError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
