"""Every family of the family table through the CLI: `tcf plan`, `tcf infer` and a frozen-text `tcf run` on a tiny
random model saved the way models ship, the block-wise latents equal to what transformers computes whole."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tcf.cli import app
from tcf.data.reader import load_dataset
from tcf.errors import TcfError
from tcf.lm import load_config, supported_model_types
from tcf.lm.checkpoint import model_family, model_size, read_config
from tcf.lm.pooling import POOLINGS
from tcf.lm.tiny import train_tokenizer
from tcf.preinfer.latents import LatentStore

N_BLOCKS = 2
MAX_TOKENS = 12
SIZE = dict(hidden_size=32, num_hidden_layers=N_BLOCKS, num_attention_heads=4, max_position_embeddings=64)
DECODER = dict(SIZE, intermediate_size=64, num_key_value_heads=2)


def _opt(t):
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM, OPTConfig(**SIZE, ffn_dim=64, word_embed_proj_dim=32, **t)


def _bert(t):
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM, BertConfig(**SIZE, intermediate_size=64, **t)


def _roberta(t):  # positions count from the pad id, which must be the tokenizer's
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM, RobertaConfig(**SIZE, intermediate_size=64, **t)


def _t5(t):  # flan-T5's gated FFN, saved with its decoder as flan-T5 ships
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration, T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=N_BLOCKS, num_heads=4,
                                                feed_forward_proj="gated-gelu", decoder_start_token_id=0, **t)


def _llama(t):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM, LlamaConfig(**DECODER, **t)


def _mistral(t):  # a window shorter than the texts, so it matters
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig(**DECODER, sliding_window=4, **t)


def _qwen2(t):  # sliding window on the layers above the first
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM, Qwen2Config(**DECODER, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                         **t)


# model_type -> (model class to save, its config), given the tokenizer's vocabulary size and special ids
TINY: dict[str, Callable] = {"opt": _opt, "bert": _bert, "roberta": _roberta, "t5": _t5, "llama": _llama,
                             "mistral": _mistral, "qwen2": _qwen2}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, small_dataset):
    """One byte-level BPE tokenizer (BOS first, right padding) trained on the item texts, shared by the models."""
    from transformers import AutoTokenizer

    folder = train_tokenizer(tmp_path_factory.mktemp("tokenizer"), load_dataset(small_dataset).item_texts)
    return folder, AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def cli():
    """`tcf ...` in this process (no interpreter start, transformers imported once): its stdout. The SIGTERM
    handler the commands install is put back afterwards."""
    runner, previous = CliRunner(), signal.getsignal(signal.SIGTERM)

    def invoke(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, f"tcf {' '.join(args)}: {result.output}\n{result.exception!r}"
        return result.stdout

    yield invoke
    signal.signal(signal.SIGTERM, previous)


def _build(model_type: str, folder: Path, tokenizer) -> Path:
    tok_dir, tok = tokenizer
    shutil.copytree(tok_dir, folder)
    special = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id)
    model_cls, config = TINY[model_type](special)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(folder, max_shard_size="40KB")  # sharded, as large models ship
    assert list(folder.glob("*.safetensors.index.json"))
    return folder


def _reference(model_dir: Path, texts: list[str], depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final hidden states, hidden states after ``depth`` blocks, mask) of the whole model, in fp32."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if model.config.model_type == "t5":
        model = model.get_encoder()
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    return out.last_hidden_state, out.hidden_states[depth], enc["attention_mask"].bool()


def _check_latents(latents: Path, model_dir: Path, texts_by_key: dict[str, str]) -> None:
    store = LatentStore(latents)
    keys = store.item_keys()
    final, boundary, mask = _reference(model_dir, [texts_by_key[k] for k in keys], depth=1)
    assert store.lengths().tolist() == mask.sum(1).tolist()  # tcf tokenized as the tokenizer does
    real = mask[..., None]
    stored = store.read(1)[:, : mask.shape[1]]
    assert (stored - boundary * real).abs().max().item() <= 1e-5
    last = final[torch.arange(len(keys)), mask.sum(1) - 1]
    expected = {"mean": (final * real).sum(1) / mask.sum(1, keepdim=True), "first": final[:, 0], "last": last}
    assert set(expected) == set(POOLINGS)
    for kind, value in expected.items():
        diff = (store.read(kind) - value).abs().max().item()
        assert diff <= 1e-5, f"pooled {kind}: max abs diff {diff}"


def test_the_tiny_models_cover_the_family_table():
    assert set(TINY) == set(supported_model_types())


@pytest.mark.parametrize("content,error", [
    (None, "not a model directory (no config.json)"),
    ("{not json", "config.json: not valid JSON"),
    ("[1, 2]", "config.json: not a JSON object"),
    ('{"hidden_size": 8}', "config.json: unsupported model_type None; supported: bert, llama, mistral"),
    ('{"model_type": "gpt2"}', "config.json: unsupported model_type 'gpt2'; supported: bert, llama, mistral"),
])
def test_a_bad_config_json_is_one_error_naming_the_file(tmp_path, content, error):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    for read in (read_config, model_family, model_size, load_config):
        with pytest.raises(TcfError) as info:
            read(tmp_path)
        assert str(info.value).startswith(str(tmp_path)) and error in str(info.value)
    with pytest.raises(TcfError, match="not a model directory \\(not found\\)"):
        read_config(tmp_path / "missing")


@pytest.mark.parametrize("model_type", supported_model_types())
def test_every_family_plans_encodes_and_trains_through_the_cli(model_type, tmp_path, small_dataset, tokenizer, cli):
    model_dir = _build(model_type, tmp_path / model_type, tokenizer)
    config = tmp_path / "exp.yaml"
    config.write_text(f"""dataset:
  path: {small_dataset}
model:
  item_tower: text
  embedding_dim: 16
train:
  epochs: 1
  batch_size: 64
text_encoder:
  model: {model_dir}
  max_tokens: {MAX_TOKENS}
  latent_dtype: fp32
  gpu_memory_budget: 1GiB
""")
    plan = cli("plan", str(config), "--ranges", "0:1,1:2")
    assert re.findall(r"^(\d+:\d+)\s", plan, flags=re.M) == ["0:1", "1:2"]

    # two ranges, boundary 1 kept (the input of one fine-tuned block)
    out = cli("infer", str(config), "--ranges", "0:1,1:2", "--batch-size", "7", "-S", "text_encoder.unfreeze=1",
              "--db", str(tmp_path / "infer" / "e.db"))
    raw = load_dataset(small_dataset)
    texts = dict(zip(raw.item_keys, raw.item_texts, strict=True))
    _check_latents(Path(out.strip().splitlines()[-1]), model_dir, texts)
    # chunk-major: chunks of 60 tokens through both ranges, boundary 1 kept, the same latents
    out = cli("infer", str(config), "--ranges", "0:1,1:2", "--batch-size", "7", "--schedule", "chunk",
              "-S", "text_encoder.unfreeze=1", "-S", "text_encoder.chunk_tokens=60",
              "--db", str(tmp_path / "c" / "e.db"))
    chunked = Path(out.strip().splitlines()[-1])
    assert len(json.loads((chunked / "state.json").read_text())["chunks"]) > 3
    _check_latents(chunked, model_dir, texts)

    # a fresh store: the run plans and encodes on its own, then trains the frozen text tower
    db = tmp_path / "run" / "e.db"
    cli("run", str(config), "--db", str(db))
    with sqlite3.connect(db) as c:
        status, config_json = c.execute("SELECT status, config_json FROM runs").fetchone()
        kinds = sorted(k for (k,) in c.execute("SELECT kind FROM artifacts"))
    assert status == "finished" and json.loads(config_json)["text_encoder"]["unfreeze"] == 0
    assert kinds == ["latents", "tokens"]
