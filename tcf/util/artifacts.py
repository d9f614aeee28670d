"""Content-addressed artifacts: ``<root>/<kind>/<hash>/`` written whole or not at all.

An artifact (token ids, latents, dataset splits) is named by the hash of everything that determines
it, so a second experiment that needs the same thing finds it instead of recomputing it. It is
built in a hidden temporary folder and renamed into place with its ``meta.json`` last, so a crash
never leaves a folder that looks complete.

Usage::

    key = {"dataset": fingerprint, "tokenizer": "opt-125m", "max_tokens": 30}
    if (path := find_artifact(root, "tokens", key)) is None:
        with build_artifact(root, "tokens", key) as tmp:
            save_tokens(tmp)
        path = find_artifact(root, "tokens", key)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tcf.errors import TcfError
from tcf.util.atomic import atomic_folder

META = "meta.json"


def artifact_hash(key: dict[str, Any]) -> str:
    """Stable hash of an artifact's defining inputs (order of keys does not matter)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _check_kind(kind: str) -> None:
    if not kind or Path(kind).name != kind or kind.startswith("."):
        raise TcfError(f"invalid artifact kind {kind!r}")


def artifact_path(root: str | Path, kind: str, key: dict[str, Any]) -> Path:
    _check_kind(kind)
    return Path(root) / kind / artifact_hash(key)


def find_artifact(root: str | Path, kind: str, key: dict[str, Any]) -> Path | None:
    """The complete artifact for ``key``, or None (a folder without meta.json is not complete)."""
    path = artifact_path(root, kind, key)
    return path if (path / META).is_file() else None


@contextmanager
def build_artifact(root: str | Path, kind: str, key: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes the artifact, on error it vanishes.

    A finished artifact already in place (a concurrent build of the same content won) stands; an
    unfinished leftover is replaced."""
    final = artifact_path(root, kind, key)
    with atomic_folder(final, replace=lambda existing: not (existing / META).is_file()) as tmp:
        yield tmp
        meta = {"kind": kind, "hash": final.name, "key": key, **(extra or {})}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())
