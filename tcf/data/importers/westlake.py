"""MicroLens and PixelRec (westlake-repl): an interactions CSV (user, item, timestamp) and an item CSV with
titles. The two ship the same shape under different column names, so one importer serves both names.

MicroLens-50k / -100k: ``MicroLens-50k_pairs.csv`` with the header ``user,item,timestamp`` (milliseconds);
titles in ``MicroLens-50k_titles.csv`` (header ``item,title``) or ``MicroLens-100k_title_en.csv`` (no
header: ``item,title`` rows). PixelRec (Pixel200K, Pixel1M, Pixel8M, PixelRec50K): ``Pixel200K.csv`` in the
interaction folder, header ``item_id,user_id,timestamp`` (seconds), and ``Pixel200K.csv`` in the item
information folder, header ``item_id,view_number,...,title,tag,description``.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from tcf.data.importers.common import (
    Interactions,
    columns,
    csv_rows,
    csv_table,
    key,
    number,
    one_file,
    read_lines,
    sentences,
    source_folder,
    start,
    width,
    write_dataset,
)
from tcf.errors import DataError

USER = ("user_id", "user")
ITEM = ("item_id", "item")
TIME = ("timestamp",)
TITLE = ("title",)


def _header(path: Path) -> set[str]:
    """The lower-cased names on a CSV file's first line (empty when it cannot be read)."""
    try:
        first = next(read_lines(path), None)
    except DataError:
        return set()
    return {name.strip().lower() for name in next(csv.reader([first[1]]), [])} if first else set()


def _files(src: Path, interactions: str | Path | None, items: str | Path | None) -> tuple[Path, Path]:
    """The two files: named (relative to ``src``), or told apart among the CSV files in ``src`` and the folders
    in it by their header: ``user``/``user_id`` + ``item``/``item_id`` + ``timestamp`` is the interactions
    file; ``item``/``item_id`` + ``title``, or a name with ``title`` in it (MicroLens-100k's has no header),
    the item file."""
    found = sorted(p for p in (*src.glob("*.csv"), *src.glob("*/*.csv")) if p.is_file())
    headers = {p: _header(p) for p in found} if not (interactions and items) else {}

    def has(p: Path, *names: tuple[str, ...]) -> bool:
        return all(headers[p] & set(n) for n in names)

    if interactions:
        inter_path = src / interactions
    else:
        inter_path = one_file(src, [p for p in found if has(p, USER, ITEM, TIME)], "interactions (user, item, "
                              "timestamp) CSV", "--interactions")  # fmt: skip
    if items:
        return inter_path, src / items
    titled = [p for p in found if p != inter_path and (has(p, ITEM, TITLE) or "title" in p.name.lower())]
    return inter_path, one_file(src, titled, "item (item, title) CSV", "--items")


def _interactions(path: Path) -> Interactions:
    header, rows = csv_table(path)
    at = columns(path, header, {"user": USER, "item": ITEM, "timestamp": TIME})
    user, item, time = at["user"], at["item"], at["timestamp"]
    names = [h.strip() for h in header]  # errors name the column as the file does
    log = Interactions()
    for no, f in rows:
        log.add(key(f[user], names[user], path, no), key(f[item], names[item], path, no),
                number(f[time], names[time], path, no))
    return log


def _titles(path: Path, wanted: dict[str, int]) -> dict[str, str]:
    """Titles of the ``wanted`` items; the file has a header naming ``item``/``item_id`` and ``title``, or
    none at all and two columns (MicroLens-100k: item, title)."""
    rows = csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(path, None, "file is empty")
    names = {h.strip().lower() for h in first[1]}
    if names & set(ITEM) and names & set(TITLE):
        header = first[1]
        at = columns(path, header, {"item": ITEM, "title": TITLE})
    elif len(first[1]) == 2:
        header, at, rows = ["item", "title"], {"item": 0, "title": 1}, itertools.chain([first], rows)
    else:
        raise DataError(path, 1, f"title: no such column in the header ({', '.join(first[1])})")
    name = header[at["item"]].strip()
    texts: dict[str, str] = {}
    seen: dict[str, int] = {}
    for no, f in rows:
        width(path, no, f, len(header))
        item = key(f[at["item"]], name, path, no)
        if item in seen:
            raise DataError(path, no, f"{name}: {item!r} is on line {seen[item]} already")
        seen[item] = no
        if item in wanted and (title := sentences(f[at["title"]])):
            texts[item] = title
    return texts


def import_pairs(
    src: Path, out: Path, fmt: str, interactions: str | Path | None = None, items: str | Path | None = None
) -> dict:
    """Interactions CSV + titles CSV -> one sequence per user, by timestamp, ties in file order; text = the
    title (an item with an empty title has no text)."""
    out = start(out)
    src = source_folder(src, f"a {fmt} folder with an interactions CSV and an item CSV")
    inter_path, item_path = _files(src, interactions, items)
    log = _interactions(inter_path)
    return write_dataset(out, fmt, log, _titles(item_path, log.items))


def import_microlens(src: Path, out: Path, interactions: str | Path | None = None,
                     items: str | Path | None = None) -> dict:  # fmt: skip
    """MicroLens-50k/100k: ``*_pairs.csv`` + ``*_titles.csv`` or ``*_title_en.csv`` (:func:`import_pairs`).

    >>> import_microlens(Path("MicroLens-100k"), Path("data/microlens100k"))   # doctest: +SKIP
    {'format': 'microlens', 'users': 100000, 'items': ..., 'interactions': ..., ...}
    """
    return import_pairs(src, out, "microlens", interactions, items)


def import_pixelrec(src: Path, out: Path, interactions: str | Path | None = None,
                    items: str | Path | None = None) -> dict:  # fmt: skip
    """PixelRec: the interaction and item information CSVs of one size (:func:`import_pairs`)."""
    return import_pairs(src, out, "pixelrec", interactions, items)
