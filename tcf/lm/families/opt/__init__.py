"""OPT: decoder-only, learned positions, final layer norm (except 350m), mean pooling. Stack in ``stack.py``."""

from tcf.lm.families.spec import ConfigKeys, Family, Layout

# the "model." prefix is optional: OPTForCausalLM saves "model.decoder.layers.0", OPTModel "decoder.layers.0"
OPT = Family(
    name="opt",
    model_types=("opt",),
    layout=Layout(block=r"^(?:model\.)?decoder\.layers\.(\d+)\.",
                  embedding=r"^(?:model\.)?decoder\.(?:embed_tokens|embed_positions|project_in)\.",
                  final=r"^(?:model\.)?decoder\.final_layer_norm\."),
    stack=f"{__name__}.stack:OPTStack",
    keys=ConfigKeys(ffn="ffn_dim"),
)
