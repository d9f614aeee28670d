"""BERT and RoBERTa: bidirectional encoders without a final norm, pooled at their first token ([CLS] / <s>),
the position their pre-training summarises the text in. Stacks in ``stack.py``."""

from tcf.lm.families.spec import Family, Layout


def _encoder(prefix: str) -> Layout:
    """Tensor names of a BERT-style encoder saved bare or under ``prefix`` (BertForMaskedLM: "bert.")."""
    return Layout(block=rf"^(?:{prefix}\.)?encoder\.layer\.(\d+)\.", embedding=rf"^(?:{prefix}\.)?embeddings\.",
                  final=None)


BERT = Family(name="bert", model_types=("bert",), layout=_encoder("bert"), stack=f"{__name__}.stack:BertStack",
              pooling="first")
ROBERTA = Family(name="roberta", model_types=("roberta",), layout=_encoder("roberta"),
                 stack=f"{__name__}.stack:RobertaStack", pooling="first")
