"""Content hash of a dataset, so artifacts derived from it (splits, latents) are reused only when valid."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tcf.data.reader import BEHAVIORS_FILE
from tcf.errors import DataError

_CHUNK = 1 << 20


def dataset_fingerprint(path: Path, item_file: str) -> str:
    """sha256 hex over both files' bytes, streamed.

    Each file is framed by its role, name and size, so moving bytes from one file to the other, or
    renaming the item file (news.tsv -> items.tsv), changes the fingerprint.
    """
    h = hashlib.sha256()
    folder = Path(path)
    for role, name in (("behaviors", BEHAVIORS_FILE), ("items", item_file)):
        file = folder / name
        try:
            size = file.stat().st_size
            h.update(f"{role}\0{name}\0{size}\0".encode())
            with open(file, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError:
            raise DataError(file, None, "file not found") from None
    return h.hexdigest()
