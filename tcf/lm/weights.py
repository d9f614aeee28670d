"""Read single tensors from a (sharded) safetensors checkpoint without loading the whole model.

reader = CheckpointReader("models/opt-125m")
w = reader.get(reader.resolve(["model.decoder.layers.3.fc1.weight", "decoder.layers.3.fc1.weight"]))
reader.read_names   # ["model.decoder.layers.3.fc1.weight"]

Tensors are views of a private memory map of their shard (the safetensors layout is a JSON header then
raw little-endian data), so reading one costs nothing until its bytes are copied to where they are
used (the GPU, pinned memory, another dtype), and the copy comes straight from the page cache.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path

import torch

from tcf.errors import TcfError
from tcf.lm.checkpoint import TensorInfo, checkpoint_tensors

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointReader:
    """Reads a checkpoint's tensors one at a time (found by :func:`~tcf.lm.checkpoint.checkpoint_tensors`),
    recording each name read."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        self.read_names: list[str] = []
        self._infos = checkpoint_tensors(self.model_dir)
        self._maps: dict[Path, mmap.mmap] = {}

    def resolve(self, candidates: Sequence[str]) -> str:
        """The first of ``candidates`` present in the checkpoint; TcfError naming the first candidate otherwise."""
        for name in candidates:
            if name in self._infos:
                return name
        tried = ", ".join(candidates)
        raise TcfError(f"{self.model_dir}: checkpoint has no tensor {candidates[0]!r} (tried: {tried})")

    def info(self, name: str) -> TensorInfo:
        info = self._infos.get(name)
        if info is None:
            raise TcfError(f"{self.model_dir}: checkpoint has no tensor {name!r}")
        if info.dtype not in TORCH_DTYPES:
            raise TcfError(f"{info.file}: tensor {name!r} has dtype {info.dtype}, which torch cannot read")
        return info

    def get(self, name: str) -> torch.Tensor:
        """One tensor (on CPU, in its stored dtype, a read-only-by-convention view of the file's pages);
        its name is recorded in ``read_names``."""
        info = self.info(name)
        path = Path(info.file)
        if path not in self._maps:
            with open(path, "rb") as f:  # a private mapping: writable for torch, never written back
                self._maps[path] = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        dtype = TORCH_DTYPES[info.dtype]
        count = info.nbytes // dtype.itemsize
        flat = (torch.frombuffer(self._maps[path], dtype=dtype, count=count, offset=info.offset) if count
                else torch.empty(0, dtype=dtype))
        self.read_names.append(name)
        return flat.view(info.shape)
