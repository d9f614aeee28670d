"""Checkpoints written atomically and read with ``weights_only=True``.

A crash mid-write leaves the previous checkpoint intact (:func:`tcf.util.atomic.atomic_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tcf.util.atomic import atomic_file
from tcf.util.signals import signals_held


def save_atomic(obj: Any, path: Path) -> None:
    """Write ``path`` whole; a SIGINT/SIGTERM that comes meanwhile takes effect once it is in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_held(), atomic_file(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, device: torch.device | str = "cpu") -> Any:
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
