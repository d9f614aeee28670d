"""A sentence-transformers folder as tcf reads it: where its transformer sits and how it pools.

Such a folder lists its modules in ``modules.json``, in order: a ``Transformer`` (its ``path``: ``""`` when the
weights sit at the root, e.g. ``"0_Transformer"`` in older folders), a ``Pooling`` whose ``config.json`` names
the pooling mode, and often a ``Normalize`` (L2). tcf runs the transformer itself, block range by block range,
and takes pooling and normalisation as the defaults of ``text_encoder.pooling: auto`` and
``text_encoder.normalize: auto``; other modules (Dense, …) are not applied: the projection MLP takes their place.
JSON only, no torch and no sentence-transformers::

    modules = read_modules(folder)             # None: not a sentence-transformers folder
    transformer_dir(folder)                    # the folder holding config.json and the weights
    modules_of(model_dir)                      # the modules a transformer folder belongs to, or None
    pooling_mode(root / modules.pooling / "config.json")   # 'mean', 'first' or 'last'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcf.errors import TcfError

MODULES_FILE = "modules.json"
_PREFIX = "sentence_transformers.models."
TRANSFORMER, POOLING, NORMALIZE = (f"{_PREFIX}{name}" for name in ("Transformer", "Pooling", "Normalize"))
# the Pooling module's config keys tcf computes, and its pooling of each
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "first",
                 "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class Modules:
    """What tcf uses of ``modules.json``: module folders relative to the root ("" = the root itself)."""

    root: Path
    transformer: str
    pooling: str | None  # the Pooling module's folder; None when there is none
    normalize: bool  # a Normalize module follows the pooling


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TcfError(f"{path}: missing (named by {MODULES_FILE})") from None
    except OSError as exc:
        raise TcfError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TcfError(f"{path}: not valid JSON: {exc}") from exc


def _inside(root: Path, relative: object, path: Path) -> str:
    """A module's ``path``, checked to stay inside the folder (no absolute paths, no '..')."""
    if not isinstance(relative, str):
        raise TcfError(f"{path}: a module's path must be a string, not {relative!r}")
    target = (root / relative).resolve()
    if relative.startswith(("/", "\\")) or not target.is_relative_to(root.resolve()):
        raise TcfError(f"{path}: module path {relative!r} leads outside {root}")
    return relative.strip("/")


def read_modules(root: str | Path) -> Modules | None:
    """``root``'s ``modules.json`` (None when it has none); TcfError naming the file when it is malformed."""
    root = Path(root)
    path = root / MODULES_FILE
    if not path.is_file():
        return None
    entries = _read_json(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TcfError(f"{path}: not a list of modules")
    entries = sorted(entries, key=lambda e: e.get("idx", 0) if isinstance(e.get("idx"), int) else 0)
    types = [e.get("type") for e in entries]
    if TRANSFORMER not in types:
        raise TcfError(f"{path}: no {TRANSFORMER} module (tcf encodes with the transformer it names)")
    at = types.index(TRANSFORMER)
    transformer = _inside(root, entries[at].get("path", ""), path)
    pooling_at = types.index(POOLING) if POOLING in types else None
    pooling = _inside(root, entries[pooling_at].get("path", ""), path) if pooling_at is not None else None
    normalize = NORMALIZE in types[(pooling_at if pooling_at is not None else at) + 1:]
    return Modules(root, transformer, pooling, normalize)


def transformer_dir(folder: str | Path) -> Path:
    """The folder whose ``config.json`` and weights are the model: ``folder`` itself, or the sub-folder its
    ``modules.json`` names for the transformer."""
    folder = Path(folder)
    modules = read_modules(folder)
    return folder / modules.transformer if modules is not None and modules.transformer else folder


def modules_of(model_dir: str | Path) -> Modules | None:
    """The sentence-transformers modules that ``model_dir`` (a transformer folder) belongs to: its own
    ``modules.json``, or its parent's when that names ``model_dir`` as the transformer; None otherwise."""
    model_dir = Path(model_dir)
    own = read_modules(model_dir)
    if own is not None and not own.transformer:
        return own
    parent = read_modules(model_dir.parent) if (model_dir.parent / MODULES_FILE).is_file() else None
    if parent is not None and parent.transformer and (model_dir.parent / parent.transformer).resolve() == \
            model_dir.resolve():
        return parent
    return None


def pooling_mode(config_path: Path) -> str:
    """The pooling of :data:`tcf.lm.pooling.POOLINGS` that a Pooling module's ``config.json`` asks for;
    TcfError when it asks for one tcf does not compute (max, sqrt-length mean, weighted mean) or for several."""
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise TcfError(f"{config_path}: not a JSON object")
    on = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
    if len(on) != 1 or on[0] not in POOLING_MODES:
        asked = ", ".join(on) or "no pooling mode"
        raise TcfError(f"{config_path}: asks for {asked}; tcf pools one of mean, first (cls), last: set "
                       "text_encoder.pooling to mean, first or last")
    return POOLING_MODES[on[0]]

