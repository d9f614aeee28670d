"""A checkpoint folder as tcf reads it: its ``config.json``, and its tensors from safetensors headers alone.

A ``.safetensors`` file starts with 8 bytes (little-endian u64, the header length) and a JSON header
mapping each tensor name to ``{"dtype", "shape", "data_offsets"}``; sharded checkpoints add a
``*.safetensors.index.json`` whose ``weight_map`` names the shard of each tensor. Everything here reads
headers and JSON only (no torch, no transformers), so planning a 70B model takes milliseconds::

    size = model_size("models/opt-1.3b", compute_dtype="bf16")
    size.footprint.block_bytes[3], size.footprint.embedding_bytes   # bytes on the GPU in bf16
    size.shape                                                      # n_blocks, hidden, heads, ffn
    checkpoint_tensors("models/opt-1.3b")["model.decoder.layers.3.fc1.weight"].offset
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.lm.families import family
from tcf.lm.families.spec import Family, Layout

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


def _model_dir(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise TcfError(f"{model_dir}: not a model directory (not found)")
    return model_dir


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """``config.json`` as a dict, checked to name a supported ``model_type``: the one place it is read.

    Every problem is one TcfError naming the file: no such directory, no config.json, unreadable, not a
    JSON object, or a family tcf cannot run block by block."""
    path = _model_dir(model_dir) / "config.json"
    if not path.is_file():
        raise TcfError(f"{path.parent}: not a model directory (no config.json)")
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise TcfError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TcfError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise TcfError(f"{path}: not a JSON object")
    try:
        family(config.get("model_type"))
    except TcfError as exc:
        raise TcfError(f"{path}: {exc}") from None
    return config


def model_family(model_dir: str | Path) -> Family:
    """The family of the checkpoint in ``model_dir`` (from its config.json)."""
    return family(read_config(model_dir)["model_type"])


def checkpoint_tensors(model_dir: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder, by name, from its safetensors headers: the one discovery rule.

    With a ``*.safetensors.index.json`` the checkpoint is what its ``weight_map`` lists, each tensor in the
    shard it names (as transformers loads it); without one, the tensors of every ``*.safetensors`` file."""
    model_dir = _model_dir(model_dir)
    indexes = sorted(model_dir.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise TcfError(f"{model_dir}: {len(indexes)} safetensors indexes ({', '.join(i.name for i in indexes)}); "
                       "which one is the checkpoint is ambiguous")
    if indexes:
        return _indexed_tensors(indexes[0])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise TcfError(f"{model_dir}: no .safetensors files (block-wise inference needs safetensors checkpoints)")
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in tensors:
                raise TcfError(f"{model_dir}: tensor {name!r} is in both {Path(tensors[name].file).name} and "
                               f"{f.name}; which file is the checkpoint is ambiguous")
            tensors[name] = info
    return tensors


def _indexed_tensors(index: Path) -> dict[str, TensorInfo]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = {str(shard) for shard in weight_map.values()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise TcfError(f"{index}: not a safetensors index (cannot read its weight_map: {exc})") from exc
    headers: dict[str, dict[str, TensorInfo]] = {}
    for shard in sorted(shards):
        if not (index.parent / shard).is_file():
            raise TcfError(f"{index}: shard {shard!r} is missing from {index.parent}")
        headers[shard] = read_safetensors_header(index.parent / shard)
    missing = sorted(name for name, shard in weight_map.items() if name not in headers[str(shard)])
    if missing:
        raise TcfError(f"{index}: {len(missing)} tensor(s) listed but not in their shard, e.g. {missing[0]!r}")
    return {name: headers[str(shard)][name] for name, shard in weight_map.items()}


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in the checkpoint (headers only): the model size of scaling plots."""
    return sum(t.numel for t in checkpoint_tensors(model_dir).values())


@dataclass(frozen=True)
class Footprint:
    """GPU bytes (in the compute dtype) of each block, the embedding stage and the final norm; tensors of
    none of them (e.g. T5's decoder) are never loaded. ``block_params`` counts elements per block, for
    FLOP estimates."""

    block_bytes: list[int]
    block_params: list[int]
    embedding_bytes: int
    final_bytes: int

    @property
    def n_blocks(self) -> int:
        return len(self.block_bytes)


def block_weight_bytes(model_dir: str | Path, layout: Layout, compute_dtype: object = None) -> Footprint:
    """Per-block weight bytes of a checkpoint whose tensors follow ``layout``, from headers only.

    ``compute_dtype`` (e.g. 'bf16') converts floating tensors to the size they take when run in that
    dtype (fp32 weights run in bf16 take half); None keeps the stored size.
    """
    compute = dtype_bytes(compute_dtype) if compute_dtype is not None else None
    block_re, emb_re = re.compile(layout.block), re.compile(layout.embedding)
    final_re = re.compile(layout.final) if layout.final else None
    per_block: dict[int, list[int]] = {}
    emb = final = 0
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
    if not per_block:
        raise TcfError(f"{model_dir}: no tensor matches the block pattern {layout.block!r}")
    n = max(per_block) + 1
    gaps = [i for i in range(n) if i not in per_block]
    if gaps:
        raise TcfError(f"{model_dir}: checkpoint has no weights for block(s) {gaps[:5]} of 0..{n - 1}")
    return Footprint([per_block[i][0] for i in range(n)], [per_block[i][1] for i in range(n)], emb, final)


@dataclass(frozen=True)
class ModelShape:
    """What the activation model needs to know about a transformer stack."""

    n_blocks: int
    hidden: int
    heads: int
    ffn: int
    gated_ffn: bool = False  # SwiGLU-style FFNs hold three [T, ffn] tensors instead of two


def model_shape(model_dir: str | Path) -> ModelShape:
    """:class:`ModelShape` from ``config.json``, through its family's config keys."""
    return _shape(read_config(model_dir), Path(model_dir) / "config.json")


def _shape(config: dict[str, Any], path: Path) -> ModelShape:
    fam = family(config["model_type"])

    def number(key: str) -> int:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TcfError(f"{path}: {key} must be a positive integer for a {fam.name} model, not {value!r}")
        return value

    keys = fam.keys
    return ModelShape(number(keys.blocks), number(keys.hidden), number(keys.heads), number(keys.ffn),
                      fam.gated_ffn(config))


@dataclass(frozen=True)
class ModelSize:
    """What planning a checkpoint's pre-inference needs: its per-block weights and its shape."""

    footprint: Footprint
    shape: ModelShape


def model_size(model_dir: str | Path, compute_dtype: object = None) -> ModelSize:
    """Per-block bytes (in ``compute_dtype``; None: as stored) and shape of the checkpoint in ``model_dir``,
    its tensors found by its family's layout; reads config.json and the safetensors headers only."""
    config = read_config(model_dir)
    return ModelSize(block_weight_bytes(model_dir, family(config["model_type"]).layout, compute_dtype),
                     _shape(config, Path(model_dir) / "config.json"))
