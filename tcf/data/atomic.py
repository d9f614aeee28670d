"""Write a dataset folder under a temporary sibling name and rename it when complete.

A crash or an error mid-write leaves only a hidden ``.NAME.tmp-*`` folder (removed on error), never
a half-written folder that looks like a finished dataset.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tcf.errors import DataError

_BREAKS = re.compile(r"[\t\r\n]+")


def check_output_folder(out: Path) -> None:
    """Refuse an output path that exists and is not an empty folder (never overwrite data)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, None, "output folder already exists and is not empty")


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to ``out``, on error delete it.

    >>> with atomic_folder("data/synth") as tmp:         # doctest: +SKIP
    ...     (tmp / "behaviors.tsv").write_text("user_id\\titems\\n")
    """
    out = Path(out)
    check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, out)  # POSIX: also replaces an empty folder, fails on a non-empty one
        except OSError as e:
            raise DataError(out, None, f"cannot move the finished output into place: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_field(text: str) -> str:
    """One TSV field: tabs and line breaks become spaces so a text never breaks the two-column layout."""
    return _BREAKS.sub(" ", text).strip()


def write_tsv(path: Path, header: str, rows: Iterable[tuple[str, str]]) -> int:
    """Write ``header`` then ``key<TAB>value`` rows as UTF-8 with LF endings; returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        for key, value in rows:
            f.write(f"{key}\t{value}\n")
            n += 1
    return n
