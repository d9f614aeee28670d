"""Checkpoint footprints from safetensors headers: per-block bytes in the compute dtype, sharded or not."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tcf.errors import TcfError
from tcf.lm.checkpoint import (
    ModelShape,
    block_weight_bytes,
    checkpoint_tensors,
    model_shape,
    model_size,
    read_safetensors_header,
)
from tcf.lm.families import family
from tcf.lm.families.spec import Layout


def _opt_like_tensors(n_blocks=3, hidden=16, ffn=40, vocab=50, dtype=torch.float32):
    t = {"decoder.embed_tokens.weight": torch.zeros(vocab, hidden, dtype=dtype),
         "decoder.embed_positions.weight": torch.zeros(34, hidden, dtype=dtype),
         "decoder.final_layer_norm.weight": torch.zeros(hidden, dtype=dtype),
         "decoder.final_layer_norm.bias": torch.zeros(hidden, dtype=dtype)}
    for i in range(n_blocks):
        p = f"decoder.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = torch.zeros(hidden, hidden, dtype=dtype)
        t[p + "fc1.weight"] = torch.zeros(ffn + i, hidden, dtype=dtype)  # blocks differ in size on purpose
        t[p + "final_layer_norm.weight"] = torch.zeros(hidden, dtype=dtype)
        t[p + "step"] = torch.zeros(3, dtype=torch.int64)  # integer buffers keep their size under a cast
    return t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _expected(tensors, compute_bytes=None):
    def size(x):
        if compute_bytes is None or not x.is_floating_point():
            return _nbytes(x)
        return x.numel() * compute_bytes
    blocks: dict[int, int] = {}
    for name, x in tensors.items():
        if ".layers." in name:
            i = int(name.split(".")[2])
            blocks[i] = blocks.get(i, 0) + size(x)
    emb = sum(size(x) for k, x in tensors.items() if "embed" in k)
    final = sum(size(x) for k, x in tensors.items() if k.startswith("decoder.final_layer_norm"))
    return [blocks[i] for i in sorted(blocks)], emb, final


def test_header_matches_true_sizes(tmp_path):
    tensors = _opt_like_tensors()
    tensors["x.half"] = torch.zeros(3, 5, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    header = read_safetensors_header(tmp_path / "model.safetensors")
    assert set(header) == set(tensors)
    for name, x in tensors.items():
        assert header[name].nbytes == _nbytes(x), name
        assert header[name].shape == tuple(x.shape)
    assert header["x.half"].dtype == "BF16"


@pytest.mark.parametrize("compute", [None, "bf16", "fp32"])
def test_block_bytes_single_file(tmp_path, compute):
    tensors = _opt_like_tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    fp = block_weight_bytes(tmp_path, family("opt").layout, compute_dtype=compute)
    blocks, emb, final = _expected(tensors, {None: None, "bf16": 2, "fp32": 4}[compute])
    assert fp.block_bytes == blocks and fp.embedding_bytes == emb and fp.final_bytes == final
    assert fp.block_params == [sum(x.numel() for k, x in tensors.items() if f".layers.{i}." in k) for i in range(3)]
    if compute == "bf16":  # fp32 weights run in bf16 take half, the int64 buffers do not shrink
        full = block_weight_bytes(tmp_path, family("opt").layout)
        assert fp.block_bytes[0] == (full.block_bytes[0] - 24) // 2 + 24


def test_block_bytes_sharded_with_index(tmp_path):
    tensors = _opt_like_tensors(n_blocks=4)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / fname)
        weight_map.update(dict.fromkeys(keys, fname))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert set(checkpoint_tensors(tmp_path)) == set(tensors)
    fp = block_weight_bytes(tmp_path, family("opt").layout)
    assert (fp.block_bytes, fp.embedding_bytes, fp.final_bytes) == _expected(tensors)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(TcfError, match="shard 'model-00002-of-00002.safetensors' is missing"):
        checkpoint_tensors(tmp_path)


def test_real_hf_opt_checkpoint(tmp_path):
    from transformers import OPTConfig, OPTModel

    cfg = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, ffn_dim=48, num_attention_heads=4,
                    max_position_embeddings=40, word_embed_proj_dim=32)
    model = OPTModel(cfg)
    model.save_pretrained(tmp_path)
    size = model_size(tmp_path)  # layout from config.json's model_type
    fp = size.footprint
    assert fp.n_blocks == 3
    total = sum(_nbytes(p) for p in model.state_dict().values())
    assert sum(fp.block_bytes) + fp.embedding_bytes + fp.final_bytes == total
    assert fp.block_bytes[1] == sum(_nbytes(p) for p in model.decoder.layers[1].state_dict().values())
    assert model_shape(tmp_path) == size.shape == ModelShape(n_blocks=3, hidden=32, heads=4, ffn=48)


def test_t5_decoder_is_ignored(tmp_path):
    t = {"shared.weight": torch.zeros(10, 4), "encoder.block.0.layer.0.w": torch.zeros(4, 4),
         "encoder.final_layer_norm.weight": torch.zeros(4), "decoder.block.0.layer.0.w": torch.zeros(4, 4)}
    save_file(t, tmp_path / "model.safetensors")
    fp = block_weight_bytes(tmp_path, family("t5").layout)
    assert fp.block_bytes == [64] and fp.embedding_bytes == 160 and fp.final_bytes == 16  # no decoder byte


def test_checkpoint_errors(tmp_path):
    with pytest.raises(TcfError, match="no .safetensors files"):
        checkpoint_tensors(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not")
    with pytest.raises(TcfError, match="bad.safetensors"):
        checkpoint_tensors(tmp_path)
    (tmp_path / "bad.safetensors").unlink()
    save_file({"decoder.layers.0.w": torch.zeros(2), "decoder.layers.2.w": torch.zeros(2)},
              tmp_path / "model.safetensors")
    with pytest.raises(TcfError, match=r"no weights for block\(s\) \[1\]"):
        block_weight_bytes(tmp_path, family("opt").layout)
    with pytest.raises(TcfError, match="no tensor matches"):
        block_weight_bytes(tmp_path, Layout(r"^nothing\.(\d+)", r"^emb", None))
    with pytest.raises(TcfError, match="config.json"):
        model_size(tmp_path)
