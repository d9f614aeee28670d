"""Block-wise pre-inference support: GPU providers, checkpoint footprints and the block-range planner.

Engine code only, no UI imports. ``from tcf.preinfer import plan_ranges, get_provider``.
"""

from tcf.lm.checkpoint import (
    Footprint,
    ModelShape,
    TensorInfo,
    block_weight_bytes,
    checkpoint_tensors,
    model_shape,
    read_safetensors_header,
)
from tcf.preinfer.planner import (
    BudgetTooSmall,
    Plan,
    RangePlan,
    activation_bytes_per_item,
    format_plan,
    parse_bytes,
    parse_ranges,
    plan_ranges,
)
from tcf.util.gpu import FakeProvider, GpuInfo, NullProvider, NvmlProvider, free_memory, get_provider

__all__ = [
    "BudgetTooSmall", "FakeProvider", "Footprint", "GpuInfo", "ModelShape", "NullProvider", "NvmlProvider", "Plan",
    "RangePlan", "TensorInfo", "activation_bytes_per_item", "block_weight_bytes", "checkpoint_tensors",
    "format_plan", "free_memory", "get_provider", "model_shape", "parse_bytes", "parse_ranges", "plan_ranges",
    "read_safetensors_header",
]
