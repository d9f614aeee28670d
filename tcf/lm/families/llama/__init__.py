"""Llama, Mistral and Qwen2: decoder-only, rotary positions, RMSNorm, SwiGLU FFNs, mean pooling.
Stack in ``stack.py``."""

from tcf.lm.families.spec import Family, Layout, gated

LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    layout=Layout(block=r"^(?:model\.)?layers\.(\d+)\.", embedding=r"^(?:model\.)?embed_tokens\.",
                  final=r"^(?:model\.)?norm\."),
    stack=f"{__name__}.stack:LlamaStack",
    gated_ffn=gated,
)
