"""Writing a dataset folder: never over existing data, whole or not at all, fields that keep the TSV layout.

A crash or an error mid-write leaves only a hidden temporary sibling (removed on error), never a
half-written folder that looks like a finished dataset (:func:`tcf.util.atomic.atomic_folder`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tcf.errors import DataError
from tcf.util.atomic import atomic_folder

_BREAKS = re.compile(r"[\t\r\n]+")


def check_output_folder(out: Path) -> None:
    """Refuse an output path that exists and is not an empty folder (never overwrite data)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, None, "output folder already exists and is not empty")


@contextmanager
def dataset_folder(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes the new dataset ``out`` when the block ends cleanly.

    >>> with dataset_folder("data/synth") as tmp:         # doctest: +SKIP
    ...     (tmp / "behaviors.tsv").write_text("user_id\\titems\\n")
    """
    out = Path(out).resolve()  # a link is followed: the data goes where it points, the link stays
    check_output_folder(out)
    try:
        with atomic_folder(out) as tmp:
            yield tmp
    except OSError as e:
        raise DataError(out, None, f"cannot write the dataset: {e.strerror or e}") from None


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
