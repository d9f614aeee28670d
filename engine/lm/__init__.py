"""Language-model families as block stacks, and per-block weight loading from safetensors checkpoints.

from engine.lm import load_stage
emb = load_stage(model_dir, 0, 0, include_embedding=True, include_final=False)
top = load_stage(model_dir, 0, n, include_embedding=False, include_final=True)
out = top(emb(ids, mask), mask)
"""

from engine.lm import bert, llama, opt, t5  # noqa: F401  (registers the families)
from engine.lm.base import BlockStack, adapter_class, supported_model_types
from engine.lm.loader import load_config, load_stage
from engine.lm.weights import CheckpointReader

__all__ = ["BlockStack", "CheckpointReader", "adapter_class", "load_config", "load_stage", "supported_model_types"]
