"""Read single tensors from a (sharded) safetensors checkpoint without loading the whole model.

reader = CheckpointReader("models/opt-125m")
w = reader.get(reader.resolve(["model.decoder.layers.3.fc1.weight", "decoder.layers.3.fc1.weight"]))
reader.read_names   # ["model.decoder.layers.3.fc1.weight"]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from engine.errors import TcfError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointReader:
    """Maps tensor names to safetensors files and reads tensors one at a time, recording each name read."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise TcfError(f"model directory not found: {self.model_dir}")
        self.read_names: list[str] = []
        self._files: dict[str, Path] = {}
        index = self.model_dir / INDEX_FILE
        single = self.model_dir / SINGLE_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise TcfError(f"{index}: not a safetensors index ({exc})") from exc
            self._files = {name: self.model_dir / file for name, file in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self._files = {name: single for name in f.keys()}
        else:
            raise TcfError(
                f"{self.model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (block-wise loading needs safetensors weights)"
            )

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def names(self) -> list[str]:
        """Every tensor name in the checkpoint (from the index or the file header; no tensor is read)."""
        return list(self._files)

    def resolve(self, candidates: Sequence[str]) -> str:
        """The first of ``candidates`` present in the checkpoint; TcfError naming the first candidate otherwise."""
        for name in candidates:
            if name in self._files:
                return name
        tried = ", ".join(candidates)
        raise TcfError(f"{self.model_dir}: checkpoint has no tensor {candidates[0]!r} (tried: {tried})")

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (on CPU, in its stored dtype) and record its name in ``read_names``."""
        path = self._files.get(name)
        if path is None:
            raise TcfError(f"{self.model_dir}: checkpoint has no tensor {name!r}")
        if not path.is_file():
            raise TcfError(f"{self.model_dir}: shard {path.name} (holding {name!r}) is missing")
        with safe_open(str(path), framework="pt") as f:
            tensor = f.get_tensor(name)
        self.read_names.append(name)
        return tensor
