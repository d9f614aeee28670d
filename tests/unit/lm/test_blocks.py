"""Block stacks chained over every split of the blocks reproduce the whole HF model, reading only their tensors."""

from __future__ import annotations

import importlib
import itertools
import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralModel,
    OPTConfig,
    OPTForCausalLM,
    OPTModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5EncoderModel,
)

from tcf.errors import TcfError
from tcf.lm import CheckpointReader, load_stage, supported_model_types

N_BLOCKS = 3
VOCAB = 99
SMALL = dict(vocab_size=VOCAB, num_hidden_layers=N_BLOCKS, hidden_size=32, num_attention_heads=4)


def _opt(**extra):
    return OPTConfig(**SMALL, ffn_dim=64, max_position_embeddings=64, pad_token_id=1, **extra)


def _bert(cls):
    return cls(**SMALL, intermediate_size=64, max_position_embeddings=64, pad_token_id=1)


def _decoder(cls, **extra):
    return cls(
        **SMALL, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, **extra
    )


# name -> (model class to save, config factory, the saved model's base model (the reference))
FAMILIES = {
    "opt": (OPTForCausalLM, lambda: _opt(), lambda m: m.model.decoder),
    "opt-model": (OPTModel, lambda: _opt(), lambda m: m.decoder),
    "opt-350m-like": (
        OPTForCausalLM,
        lambda: _opt(word_embed_proj_dim=16, do_layer_norm_before=False),
        lambda m: m.model.decoder,
    ),
    "bert": (BertModel, lambda: _bert(BertConfig), lambda m: m),
    "roberta": (RobertaForMaskedLM, lambda: _bert(RobertaConfig), lambda m: m.roberta),
    "t5": (
        T5EncoderModel,
        lambda: T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=N_BLOCKS, num_heads=4),
        lambda m: m,
    ),
    "llama": (LlamaForCausalLM, lambda: _decoder(LlamaConfig), lambda m: m.model),
    "mistral": (MistralModel, lambda: _decoder(MistralConfig, sliding_window=3), lambda m: m),
    "qwen2": (
        Qwen2ForCausalLM,
        lambda: _decoder(Qwen2Config, use_sliding_window=True, sliding_window=3, max_window_layers=1),
        lambda m: m.model,
    ),
}


def _batch(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids of lengths 7, 4, 1 and 6 with their 0/1 mask."""
    gen = torch.Generator().manual_seed(1)
    lengths = [7, 4, 1, 6]
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[mask == 0] = pad_id
    return ids, mask


def _reference(base, ids, mask) -> torch.Tensor:
    project_out = getattr(base, "project_out", None)
    if project_out is not None:
        base.project_out = None  # the method stores hidden_size-wide states: no OPT project_out
    try:
        with torch.no_grad():
            return base(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        if project_out is not None:
            base.project_out = project_out


def _save(family: str, path, sharded: bool):
    model_cls, make_config, base_of = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(make_config()).eval()
    model.save_pretrained(path, max_shard_size="20KB" if sharded else "10GB")
    return model, base_of(model)


def _splits(n: int):
    """Every chain of stages: embedding + blocks [0, c1), [c1, c2), ..., [ck, n) + final norm."""
    for k in range(n + 1):
        for cuts in itertools.combinations(range(n), k):
            yield list(itertools.pairwise([0, *cuts, n]))  # a cut at 0 makes an embedding-only first stage


_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|block)\.(\d+)\.")


def _check_reads(family: str, stage, start: int, stop: int, include_embedding: bool) -> None:
    blocks_read = set()
    for name in stage.tensors_read:
        found = _BLOCK.search(name)
        if found is None:
            assert include_embedding or stage.include_final, f"{name} read by a blocks-only stage"
            continue
        index = int(found.group(1))
        if family == "t5" and name.endswith("relative_attention_bias.weight"):
            assert index == 0
            continue
        assert start <= index < stop, f"{name} read for blocks [{start}, {stop})"
        blocks_read.add(index)
    assert blocks_read == set(range(start, stop))
    assert len(stage.tensors_read) == len(set(stage.tensors_read))


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_chained_ranges_match_whole_model(tmp_path, family, sharded):
    if sharded and family not in ("opt", "llama", "t5", "bert"):
        pytest.skip("sharding is exercised on a subset of families to keep the suite fast")
    model, base = _save(family, tmp_path, sharded)
    if sharded:
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    ids, mask = _batch(model.config.pad_token_id)
    expected = _reference(base, ids, mask)

    stages = {}
    for chain in _splits(N_BLOCKS):
        hidden = ids
        for position, (start, stop) in enumerate(chain):
            key = (start, stop, position == 0, position == len(chain) - 1)
            if key not in stages:
                stages[key] = load_stage(tmp_path, start, stop, include_embedding=key[2], include_final=key[3])
                _check_reads(family, stages[key], start, stop, key[2])
            with torch.no_grad():
                hidden = stages[key](hidden, mask)
        assert hidden.shape == expected.shape
        diff = (hidden - expected).abs().max().item()
        assert diff <= 1e-5, f"{family} chain {chain}: max abs diff {diff}"


def test_split_enumeration_covers_every_chain():
    chains = list(_splits(3))
    assert len(chains) == 8
    assert [(0, 3)] in chains and [(0, 0), (0, 1), (1, 2), (2, 3)] in chains


def test_stage_reads_only_its_blocks(tmp_path):
    _save("opt", tmp_path, sharded=True)
    stage = load_stage(tmp_path, 1, 2, include_embedding=False, include_final=False)
    assert stage.tensors_read
    assert all(name.startswith("model.decoder.layers.1.") for name in stage.tensors_read)
    assert set(stage.layers) == {"1"}


def test_project_out_is_never_read_and_350m_like_has_no_final_norm(tmp_path):
    _save("opt-350m-like", tmp_path, sharded=False)
    stage = load_stage(tmp_path, 0, N_BLOCKS, include_embedding=True, include_final=True)
    assert "model.decoder.project_in.weight" in stage.tensors_read
    assert not any("project_out" in n or n.endswith("decoder.final_layer_norm.weight") for n in stage.tensors_read)
    with torch.no_grad():
        out = stage(*_batch(1))
    assert out.shape[-1] == 32  # hidden_size, not word_embed_proj_dim


def test_t5_range_after_block_0_reads_block_0_bias_only(tmp_path):
    _save("t5", tmp_path, sharded=False)
    stage = load_stage(tmp_path, 2, 3, include_embedding=False, include_final=False)
    block0 = [n for n in stage.tensors_read if n.startswith("encoder.block.0.")]
    assert block0 == ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]


def test_dtype_and_device(tmp_path):
    _save("llama", tmp_path, sharded=False)
    stage = load_stage(tmp_path, 0, 1, include_embedding=True, include_final=False, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in stage.parameters())
    with torch.no_grad():
        assert stage(*_batch(0)).dtype == torch.bfloat16


def test_bad_ranges_are_user_errors(tmp_path):
    _save("bert", tmp_path, sharded=False)
    with pytest.raises(TcfError, match="outside"):
        load_stage(tmp_path, 0, N_BLOCKS + 1, include_embedding=True, include_final=False)
    with pytest.raises(TcfError, match="embedding"):
        load_stage(tmp_path, 1, 2, include_embedding=True, include_final=False)
    with pytest.raises(TcfError, match="final"):
        load_stage(tmp_path, 0, 1, include_embedding=False, include_final=True)
    stage = load_stage(tmp_path, 1, 2, include_embedding=False, include_final=False)
    with pytest.raises(TcfError, match="not loaded"):
        stage.run_blocks(torch.zeros(1, 2, 32), torch.ones(1, 2), 0, 2)


def test_missing_directory(tmp_path):
    with pytest.raises(TcfError, match="not found"):
        load_stage(tmp_path / "nope", 0, 1, include_embedding=True, include_final=False)


def test_unsupported_model_type_names_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(TcfError, match="unsupported model_type 'gpt2'.*opt") as err:
        load_stage(tmp_path, 0, 1, include_embedding=True, include_final=False)
    for model_type in ("bert", "llama", "mistral", "opt", "qwen2", "roberta", "t5"):
        assert model_type in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))
    with pytest.raises(TcfError, match="unsupported model_type 'no-such-family'; supported: bert, llama"):
        load_stage(tmp_path, 0, 1, include_embedding=True, include_final=False)
    assert set(supported_model_types()) == {"bert", "llama", "mistral", "opt", "qwen2", "roberta", "t5"}


def test_missing_tensor_names_tensor_and_directory(tmp_path):
    _save("opt", tmp_path, sharded=False)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.decoder.layers.2.fc1.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    load_stage(tmp_path, 0, 2, include_embedding=True, include_final=False)  # blocks 0-1 still load
    with pytest.raises(TcfError, match=r"layers\.2\.fc1\.weight") as err:
        load_stage(tmp_path, 2, 3, include_embedding=False, include_final=True)
    assert str(tmp_path) in str(err.value)


def test_no_safetensors_is_a_user_error(tmp_path):
    _save("bert", tmp_path, sharded=False)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(TcfError, match="no .safetensors files"):
        CheckpointReader(tmp_path)


def test_any_safetensors_file_name_is_a_checkpoint_but_an_ambiguous_one_is_an_error(tmp_path):
    """One discovery rule for planning and loading: any ``*.safetensors`` file, or the shards an index names."""
    model, base = _save("llama", tmp_path, sharded=False)
    (tmp_path / "model.safetensors").rename(tmp_path / "weights.safetensors")
    ids, mask = _batch(model.config.pad_token_id)
    with torch.no_grad():
        out = load_stage(tmp_path, 0, N_BLOCKS, include_embedding=True, include_final=True)(ids, mask)
    torch.testing.assert_close(out, _reference(base, ids, mask), rtol=0, atol=1e-5)
    save_file({"model.norm.weight": torch.ones(32)}, tmp_path / "extra.safetensors")
    with pytest.raises(TcfError, match="'model.norm.weight' is in both extra.safetensors and weights.safetensors"):
        CheckpointReader(tmp_path)
    (tmp_path / "extra.safetensors").unlink()
    for name in ("a.safetensors.index.json", "b.safetensors.index.json"):
        (tmp_path / name).write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(TcfError, match="2 safetensors indexes"):
        CheckpointReader(tmp_path)


@pytest.mark.parametrize("family", ["opt", "bert", "t5", "llama", "qwen2"])
def test_stage_without_mask_inspection_computes_the_same(tmp_path, family):
    """A fine-tuned tower turns off transformers' look at the mask (a host sync per step): same outputs,
    on padded and unpadded batches."""
    model, _ = _save(family, tmp_path, sharded=False)
    stage = load_stage(tmp_path, 0, N_BLOCKS, include_embedding=True, include_final=True)
    ids, mask = _batch(model.config.pad_token_id)
    for batch, m in ((ids, mask), (ids[:1], mask[:1])):  # row 0 alone has no padding
        with torch.no_grad():
            stage.inspect_masks = True
            inspected = stage(batch, m)
            stage.inspect_masks = False
            blind = stage(batch, m)
        torch.testing.assert_close(blind, inspected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["opt", "bert", "t5", "llama", "qwen2"])
def test_unpadded_batches_need_no_mask(tmp_path, family):
    """``padded=False`` (the caller knows every row is full) gives the masked result without the mask
    reaching the attention: where the embedding ignores the mask, even a wrong mask changes nothing."""
    model, _ = _save(family, tmp_path, sharded=False)
    stage = load_stage(tmp_path, 0, N_BLOCKS, include_embedding=True, include_final=True)
    stage.inspect_masks = False
    ids = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    ones = torch.ones_like(ids)
    with torch.no_grad():
        masked = stage(ids, ones)
        torch.testing.assert_close(stage(ids, ones, padded=False), masked, rtol=1e-5, atol=1e-5)
        if family != "opt":  # OPT's learned positions come from the mask
            wrong = ones.clone()
            wrong[:, 3:] = 0
            torch.testing.assert_close(stage(ids, wrong, padded=False), masked, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(stage(ids, wrong), masked, rtol=1e-3, atol=1e-3)


def test_mask_builders_are_told_not_to_inspect():
    """The flags exist in the installed transformers: without them the tower would wait on every step."""
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    from tcf.lm.base import BlockStack

    stage = BlockStack.__new__(BlockStack)
    stage.inspect_masks = False
    mask = torch.ones(2, 3)
    assert stage.mask_options(create_causal_mask, "allow_is_causal_skip", mask) == {"allow_is_causal_skip": False}
    assert stage.mask_options(create_bidirectional_mask, "allow_is_bidirectional_skip", mask) == {
        "allow_is_bidirectional_skip": False}
    # no padding mask (an unpadded batch): the skip reads nothing, so the causal kernel may be used
    assert stage.mask_options(create_causal_mask, "allow_is_causal_skip", None) == {}
    stage.inspect_masks = True
    assert stage.mask_options(create_causal_mask, "allow_is_causal_skip", mask) == {}


def test_the_family_table_sends_each_model_type_to_the_stack_of_its_own_family():
    from tcf.lm.base import BlockStack
    from tcf.lm.families import FAMILIES
    from tcf.lm.families.llama.stack import _CLASSES
    from tcf.lm.pooling import POOLINGS

    for model_type, fam in FAMILIES.items():
        cls = fam.stack_class()
        assert issubclass(cls, BlockStack) and cls.family is fam and model_type in fam.model_types
        package = importlib.import_module(cls.__module__.rpartition(".")[0])
        assert fam in vars(package).values()  # the facts and the stack share one home
        assert fam.pooling in POOLINGS
    assert set(_CLASSES) == set(FAMILIES["llama"].model_types)


def test_checking_a_model_directory_imports_no_modeling_code_until_a_stage_is_built(tmp_path):
    """`tcf plan` and queue checks only validate the family: transformers and its modeling code take seconds."""
    _save("opt", tmp_path, sharded=False)
    code = f"""
import sys
from tcf.config import TextEncoderConfig
from tcf.preinfer.encode import model_dir_of

def modeling():
    return sorted(m for m in sys.modules if m.split(".")[0] == "transformers" or m == "tcf.lm.families.opt.stack")

model_dir_of(TextEncoderConfig(model={str(tmp_path)!r}))
print(modeling())
from tcf.lm import family
family("opt").stack_class()
print(modeling())
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.splitlines()
    assert before == "[]" and "'tcf.lm.families.opt.stack'" in after
    assert "'transformers.models.opt.modeling_opt'" in after


def test_a_checkpoints_family_facts_import_neither_torch_nor_transformers(tmp_path):
    """Its config, family, shape and per-block bytes come from JSON and safetensors headers alone."""
    _save("t5", tmp_path, sharded=True)
    code = f"""
import sys
from tcf.lm.checkpoint import model_family, model_size
fam, size = model_family({str(tmp_path)!r}), model_size({str(tmp_path)!r}, "bf16")
print(fam.name, fam.pooling, size.shape.n_blocks, size.shape.hidden, size.shape.gated_ffn, size.footprint.n_blocks)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"t5 mean {N_BLOCKS} 32 False {N_BLOCKS}", "[]"]
