"""Language-model families as block stacks, and per-block weight loading from safetensors checkpoints.

from tcf.lm import load_stage
emb = load_stage(model_dir, 0, 0, include_embedding=True, include_final=False)
top = load_stage(model_dir, 0, n, include_embedding=False, include_final=True)
out = top(emb(ids, mask), mask)
"""

import importlib
from typing import Any

# Exported lazily (PEP 562): importing tcf.lm.families must not import torch or transformers.
_EXPORTS = {"family": "families", "supported_model_types": "families",
            "load_config": "loader", "load_stage": "loader", "CheckpointReader": "weights"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tcf.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tcf.lm.{_EXPORTS[name]}"), name)
