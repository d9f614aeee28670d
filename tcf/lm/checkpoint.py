"""What a checkpoint weighs, per block, read from safetensors headers without loading a single weight.

A ``.safetensors`` file starts with 8 bytes (little-endian u64, the header length) and a JSON header
mapping each tensor name to ``{"dtype", "shape", "data_offsets"}``; sharded checkpoints add a
``*.safetensors.index.json`` whose ``weight_map`` names the shard of each tensor::

    fp = block_weight_bytes("models/opt-1.3b", compute_dtype="bf16")
    fp.block_bytes[3], fp.embedding_bytes, fp.final_bytes     # bytes on the GPU in bf16
    shape = model_shape("models/opt-1.3b")                    # n_blocks, hidden, heads, ffn
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tcf.errors import TcfError

# bytes per element of every safetensors dtype
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

# compute dtype names accepted everywhere in tcf.preinfer
DTYPE_BYTES = {"fp32": 4, "float32": 4, "f32": 4, "fp16": 2, "float16": 2, "f16": 2, "half": 2,
               "bf16": 2, "bfloat16": 2, "fp64": 8, "float64": 8}

MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own cap


def dtype_bytes(dtype: object) -> int:
    """Bytes per element of a compute dtype given as a name ('bf16', 'fp32', …) or a ``torch.dtype``."""
    if not isinstance(dtype, str):
        size = getattr(dtype, "itemsize", None)
        if isinstance(size, int):
            return size
        dtype = str(dtype).removeprefix("torch.")
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise TcfError(f"unknown dtype {dtype!r}: use one of bf16, fp16, fp32") from None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: F32, BF16, …
    shape: tuple[int, ...]
    nbytes: int  # as stored
    file: str
    offset: int = 0  # where the data starts in ``file``

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def bytes_as(self, compute_bytes: int | None) -> int:
        """Bytes once cast to the compute dtype (floating tensors only; integer buffers keep their size)."""
        if compute_bytes is None or self.dtype not in FLOAT_DTYPES:
            return self.nbytes
        return self.numel * compute_bytes


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name -> :class:`TensorInfo` from one file's header; reads only the header bytes."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            head = f.read(8)
            if len(head) < 8:
                raise TcfError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise TcfError(f"{path}: not a safetensors file (header length {length} for a {size}-byte file)")
            raw = f.read(length)
    except OSError as exc:
        raise TcfError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TcfError(f"{path}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TcfError(f"{path}: safetensors header is not a JSON object")
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise TcfError(f"{path}: tensor {name!r}: malformed header entry {meta!r}") from exc
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise TcfError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        nbytes = int(stop) - int(start)
        if nbytes != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]:
            raise TcfError(f"{path}: tensor {name!r}: {nbytes} bytes stored for {dtype} {list(shape)}")
        if 8 + length + int(stop) > size:
            raise TcfError(f"{path}: tensor {name!r} ends past the end of the file (truncated shard?)")
        out[name] = TensorInfo(name, dtype, shape, nbytes, str(path), 8 + length + int(start))
    return out


def checkpoint_tensors(model_dir: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of a (possibly sharded) safetensors checkpoint directory, by name."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TcfError(f"{model_dir}: not a directory")
    indexes = sorted(model_dir.glob("*.safetensors.index.json"))
    if indexes:
        index = indexes[0]
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TcfError(f"{index}: cannot read weight_map: {exc}") from exc
        tensors: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = model_dir / shard
            if not shard_path.is_file():
                raise TcfError(f"{index}: shard {shard!r} is missing from {model_dir}")
            tensors.update(read_safetensors_header(shard_path))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise TcfError(f"{index}: {len(missing)} tensor(s) listed but not in their shard, e.g. {missing[0]!r}")
        return tensors
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise TcfError(f"{model_dir}: no .safetensors files (block-wise inference needs safetensors checkpoints)")
    tensors = {}
    for f in files:
        tensors.update(read_safetensors_header(f))
    return tensors


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in the checkpoint (headers only): the model size of scaling plots."""
    return sum(t.numel for t in checkpoint_tensors(model_dir).values())


@dataclass(frozen=True)
class Layout:
    """Which tensor names are blocks (regex with the block index as group 1), embedding, and final norm.
    Names matching none are ignored (pooler, decoder of T5, lm_head, …)."""

    block: str
    embedding: str
    final: str | None


# keyed by config.json's model_type; prefixes are optional so both "model.decoder.layers.0" and "decoder.layers.0" match
LAYOUTS: dict[str, Layout] = {
    "opt": Layout(r"^(?:model\.)?decoder\.layers\.(\d+)\.",
                  r"^(?:model\.)?decoder\.(?:embed_tokens|embed_positions|project_in)\.",
                  r"^(?:model\.)?decoder\.final_layer_norm\."),
    "bert": Layout(r"^(?:bert\.)?encoder\.layer\.(\d+)\.", r"^(?:bert\.)?embeddings\.", None),
    "t5": Layout(r"^encoder\.block\.(\d+)\.", r"^(?:shared|encoder\.embed_tokens)\.", r"^encoder\.final_layer_norm\."),
    "llama": Layout(r"^(?:model\.)?layers\.(\d+)\.", r"^(?:model\.)?embed_tokens\.", r"^(?:model\.)?norm\."),
}


@dataclass(frozen=True)
class Footprint:
    """GPU bytes (in the compute dtype) of each block, the embedding stage and the final norm.

    ``block_params`` counts elements per block, for FLOP estimates. ``ignored_bytes`` is what the
    block-wise path never loads (e.g. T5's decoder)."""

    block_bytes: list[int]
    block_params: list[int]
    embedding_bytes: int
    final_bytes: int
    ignored_bytes: int = 0
    compute_bytes: int | None = None
    ignored_names: list[str] = field(default_factory=list, repr=False)

    @property
    def n_blocks(self) -> int:
        return len(self.block_bytes)


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise TcfError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise TcfError(f"{path}: not valid JSON: {exc}") from exc


def block_weight_bytes(model_dir: str | Path, layout: Layout | str | None = None,
                       compute_dtype: object = None) -> Footprint:
    """Per-block weight bytes of a checkpoint, from headers only.

    ``layout`` is a :class:`Layout`, a model_type key of :data:`LAYOUTS`, or None to use config.json's
    ``model_type``. ``compute_dtype`` (e.g. 'bf16') converts floating tensors to the size they take when
    run in that dtype (fp32 weights run in bf16 take half); None keeps the stored size.
    """
    if layout is None or isinstance(layout, str):
        kind = layout or read_config(model_dir).get("model_type")
        if kind not in LAYOUTS:
            raise TcfError(f"{model_dir}: no block layout known for model_type {kind!r} "
                           f"(known: {', '.join(sorted(LAYOUTS))})")
        layout = LAYOUTS[kind]
    compute = dtype_bytes(compute_dtype) if compute_dtype is not None else None
    block_re, emb_re = re.compile(layout.block), re.compile(layout.embedding)
    final_re = re.compile(layout.final) if layout.final else None
    per_block: dict[int, list[int]] = {}
    emb = final = ignored = 0
    ignored_names: list[str] = []
    for t in checkpoint_tensors(model_dir).values():
        size = t.bytes_as(compute)
        m = block_re.search(t.name)
        if m:
            acc = per_block.setdefault(int(m.group(1)), [0, 0])
            acc[0] += size
            acc[1] += t.numel
        elif emb_re.search(t.name):
            emb += size
        elif final_re is not None and final_re.search(t.name):
            final += size
        else:
            ignored += size
            ignored_names.append(t.name)
    if not per_block:
        raise TcfError(f"{model_dir}: no tensor matches the block pattern {layout.block!r}")
    n = max(per_block) + 1
    gaps = [i for i in range(n) if i not in per_block]
    if gaps:
        raise TcfError(f"{model_dir}: checkpoint has no weights for block(s) {gaps[:5]} of 0..{n - 1}")
    return Footprint([per_block[i][0] for i in range(n)], [per_block[i][1] for i in range(n)], emb, final,
                     ignored, compute, sorted(ignored_names))


@dataclass(frozen=True)
class ModelShape:
    """What the activation model needs to know about a transformer stack."""

    n_blocks: int
    hidden: int
    heads: int
    ffn: int
    gated_ffn: bool = False  # SwiGLU-style FFNs hold three [T, ffn] tensors instead of two


def _first(cfg: dict, path: Path, *keys: str) -> int:
    for k in keys:
        if isinstance(cfg.get(k), int):
            return cfg[k]
    raise TcfError(f"{path}: none of {', '.join(keys)} is set")


def model_shape(model_dir: str | Path) -> ModelShape:
    """:class:`ModelShape` from ``config.json`` (OPT, BERT, T5 encoder, Llama-style keys)."""
    cfg, path = read_config(model_dir), Path(model_dir) / "config.json"
    gated = cfg.get("model_type") in {"llama", "mistral", "qwen2"} or "gated" in str(cfg.get("feed_forward_proj", ""))
    return ModelShape(
        n_blocks=_first(cfg, path, "num_layers", "num_hidden_layers", "n_layer"),
        hidden=_first(cfg, path, "hidden_size", "d_model", "n_embd"),
        heads=_first(cfg, path, "num_attention_heads", "num_heads", "n_head"),
        ffn=_first(cfg, path, "ffn_dim", "intermediate_size", "d_ff", "n_inner"),
        gated_ffn=gated,
    )
