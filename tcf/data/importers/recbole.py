"""RecBole atomic files ``NAME.inter`` + ``NAME.item``: fields found by name in the ``name:type`` header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tcf.data.importers.common import Interactions, item_text, number, read_lines, start, table, write_dataset
from tcf.errors import DataError


def _field(names: list[str], path: Path, *prefixes: str, contains: str = "", required: bool = True) -> int:
    for i, name in enumerate(names):
        if any(name.startswith(p) for p in prefixes) or (contains and contains in name):
            return i
    if required:
        wanted = " or ".join(f"'{p}...'" for p in prefixes) or f"'...{contains}...'"
        raise DataError(path, 1, f"no {wanted} field in the header")
    return -1


def _atomic_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Field names of the header ``name:type<TAB>...`` and the rows after it, streamed."""
    lines = read_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(path, None, "file is empty (expected a header line)")
    names = [f.split(":", 1)[0].strip() for f in first[1].split("\t")]

    def rows() -> Iterator[tuple[int, list[str]]]:
        for no, s in lines:
            f = s.split("\t")
            if len(f) != len(names):
                raise DataError(path, no, f"expected {len(names)} tab-separated fields, found {len(f)}")
            yield no, f

    return names, rows()


def _inter_path(src: Path) -> Path:
    if src.is_file() and src.suffix == ".inter":
        return src
    found = sorted(src.glob("*.inter")) if src.is_dir() else []
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        what = f"several .inter files ({names})" if found else "no .inter file"
        raise DataError(src, None, f"{what}: expected one RecBole NAME.inter with its NAME.item")
    return found[0]


def import_recbole(src: Path, out: Path) -> dict:
    """RecBole atomic files ``NAME.inter`` + ``NAME.item`` (``src`` = their folder or the .inter file).

    Fields are found by name: ``user_id*``, ``item_id*``, ``timestamp*`` (optional: file order without
    it) in .inter; ``item_id*``, a ``*title*`` field, optional ``*year*`` and ``genre*``/``class*``
    (token_seq, space-separated) in .item. Text = ``Title (Year). Genres: a, b``.

    >>> import_recbole(Path("dataset/ml-100k"), Path("data/ml100k"))   # doctest: +SKIP
    {'format': 'recbole', 'users': 943, 'items': 1682, 'interactions': 100000, ...}
    """
    src, out = Path(src), start(out)
    inter = _inter_path(src)
    item_path = inter.with_suffix(".item")

    names, rows = _atomic_rows(item_path)
    key_i = _field(names, item_path, "item_id")
    title_i = _field(names, item_path, contains="title")
    year_i = _field(names, item_path, contains="year", required=False)
    genre_i = _field(names, item_path, "genre", "class", "categor", required=False)

    def items() -> Iterator[tuple[int, str, str]]:
        for no, f in rows:
            if not f[key_i].strip():
                raise DataError(item_path, no, "empty item id")
            year = f[year_i] if year_i >= 0 else ""
            genres = f[genre_i].split() if genre_i >= 0 else []
            yield no, f[key_i].strip(), item_text(f[title_i], year, genres)

    texts = table(items(), item_path)

    names, rows = _atomic_rows(inter)
    user_i = _field(names, inter, "user_id")
    item_i = _field(names, inter, "item_id")
    time_i = _field(names, inter, "timestamp", required=False)
    log = Interactions()
    for no, f in rows:
        user, item = f[user_i].strip(), f[item_i].strip()
        if not user or not item:
            raise DataError(inter, no, "empty user id" if not user else "empty item id")
        log.add(user, item, number(f[time_i], "timestamp", inter, no) if time_i >= 0 else 0.0)
    return write_dataset(out, "recbole", log, texts, every_item=True)
