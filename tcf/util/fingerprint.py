"""Content fingerprints of input files: what a run records of its inputs, so it can never resume on others.

    file_digest(Path("data/mind/behaviors.tsv"))   # sha256 of the bytes, streamed

A file is read once per process while it is unchanged (same inode, size and modification time); a file
rewritten in place, even to the same size, is read again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tcf.errors import TcfError

_CHUNK = 1 << 20
_seen: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 hex of the file's bytes; TcfError naming the file when it cannot be read."""
    path = Path(path).resolve()
    try:
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _seen:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            _seen[key] = h.hexdigest()
        return _seen[key]
    except OSError as e:
        raise TcfError(f"{path}: cannot read: {e.strerror or e}") from None
