"""The T5 / flan-T5 encoder (the decoder is never loaded): relative position bias, final RMS norm, mean pooling.
Stack in ``stack.py``."""

from collections.abc import Mapping
from typing import Any

from tcf.lm.families.spec import ConfigKeys, Family, Layout


def _gated(config: Mapping[str, Any]) -> bool:
    """flan-T5 and T5 v1.1 use gated-gelu FFNs; the original T5 a plain relu one."""
    return "gated" in str(config.get("feed_forward_proj", ""))


T5 = Family(
    name="t5",
    model_types=("t5",),
    layout=Layout(block=r"^encoder\.block\.(\d+)\.", embedding=r"^(?:shared|encoder\.embed_tokens)\.",
                  final=r"^encoder\.final_layer_norm\."),
    stack=f"{__name__}.stack:T5EncoderStack",
    keys=ConfigKeys(blocks="num_layers", hidden="d_model", heads="num_heads", ffn="d_ff"),
    gated_ffn=_gated,
)
