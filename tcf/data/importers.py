"""Convert public rating dumps (MovieLens, RecBole atomic files) into the tcf dataset layout.

Output: ``behaviors.tsv`` (header ``user_id<TAB>items``) and ``items.tsv`` (header ``item_id<TAB>text``).
Ratings are treated as implicit interactions (every rating counts, whatever its value). Each user's
items are ordered by timestamp, ties kept in file order; users appear in order of first appearance.
Items keep their original id strings; only items with a text are kept, and interactions with other
items are dropped (and counted), so the result always loads in strict mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tcf.data.output import check_output_folder, clean_field, dataset_folder, write_tsv
from tcf.data.reader import BEHAVIORS_FILE
from tcf.errors import DataError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
_NO_GENRE = {"unknown", "(no genres listed)"}


def item_text(title: str, year: str = "", genres: list[str] | tuple[str, ...] = ()) -> str:
    """``Title (Year). Genres: a, b`` — the year only when it is a number not already in the title."""
    text = clean_field(title)
    if not text:
        return ""
    year = year.strip()
    if year.isdigit() and f"({year})" not in text:
        text = f"{text} ({year})"
    genres = [clean_field(g) for g in genres if g.strip() and g.strip().lower() not in _NO_GENRE]
    if genres:
        text = f"{text}. Genres: {', '.join(genres)}"
    return text


def _lines(path: Path, encoding: str) -> list[str]:
    """Decoded lines (index 0 = line 1), trailing blank lines dropped; DataError on a bad byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    if encoding == "utf-8" and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(path, data.count(b"\n", 0, e.start) + 1, f"invalid {encoding}") from None
    lines = [s[:-1] if s.endswith("\r") else s for s in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _write(
    out: Path,
    fmt: str,
    item_keys: list[str],
    item_texts: list[str],
    users: list[str],
    items: list[str],
    times: list[float],
) -> dict:
    """Order interactions per user by time and write the two TSVs atomically."""
    text_of = dict(zip(item_keys, item_texts, strict=True))
    keep = [i for i, key in enumerate(items) if key in text_of]
    user_code: dict[str, int] = {}
    codes = np.fromiter((user_code.setdefault(users[i], len(user_code)) for i in keep), np.int64, len(keep))
    ts = np.asarray([times[i] for i in keep], dtype=np.float64)
    order = np.lexsort((np.arange(len(keep)), ts, codes))  # user, then time, then file order
    user_names = list(user_code)
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    rows = []
    for chunk in np.split(order, bounds) if len(order) else []:
        rows.append((user_names[codes[chunk[0]]], " ".join(items[keep[j]] for j in chunk.tolist())))
    if not rows:
        raise DataError(out, None, "no interaction with an item that has a text: nothing to write")
    with dataset_folder(out) as tmp:
        write_tsv(tmp / "items.tsv", "item_id\ttext", zip(item_keys, item_texts, strict=True))
        write_tsv(tmp / BEHAVIORS_FILE, "user_id\titems", rows)
    return {
        "format": fmt,
        "users": len(rows),
        "items": len(item_keys),
        "interactions": len(keep),
        "interactions_without_text": len(items) - len(keep),
    }


def _item_table(rows: list[tuple[int, str, str]], path: Path) -> tuple[list[str], list[str]]:
    """(line, key, text) rows -> keys/texts of items with a text; duplicated keys are an error."""
    keys: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for line, key, text in rows:
        if key in seen:
            raise DataError(path, line, f"duplicated item id {key!r} (first on line {seen[key]})")
        seen[key] = line
        if text:
            keys.append(key)
            texts.append(text)
    return keys, texts


def _ml100k(src: Path) -> tuple[list[str], list[str], list[str], list[str], list[float]]:
    genres = list(ML100K_GENRES)
    if (src / "u.genre").is_file():
        genres = [s.split("|")[0] for s in _lines(src / "u.genre", "latin-1") if s.strip()]
    path = src / "u.item"
    table = []
    for no, s in enumerate(_lines(path, "latin-1"), start=1):
        f = s.split("|")
        if len(f) < 5 + len(genres) or not f[0].strip():
            expected = f"id|title|release date|video date|url|{len(genres)} genre flags"
            raise DataError(path, no, f"expected '{expected}'")
        flags = f[5 : 5 + len(genres)]
        names = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]
        table.append((no, f[0].strip(), item_text(f[1], "", names)))
    keys, texts = _item_table(table, path)
    path = src / "u.data"
    users, items, times = [], [], []
    for no, s in enumerate(_lines(path, "latin-1"), start=1):
        f = s.split()
        if len(f) != 4:
            raise DataError(path, no, "expected 'user<TAB>item<TAB>rating<TAB>timestamp'")
        users.append(f[0])
        items.append(f[1])
        times.append(_number(f[3], path, no))
    return keys, texts, users, items, times


def _ml1m(src: Path) -> tuple[list[str], list[str], list[str], list[str], list[float]]:
    path = src / "movies.dat"
    table = []
    for no, s in enumerate(_lines(path, "latin-1"), start=1):
        f = s.split("::")
        if len(f) != 3 or not f[0].strip():
            raise DataError(path, no, "expected 'id::Title (Year)::Genre|Genre'")
        table.append((no, f[0].strip(), item_text(f[1], "", f[2].split("|"))))
    keys, texts = _item_table(table, path)
    path = src / "ratings.dat"
    users, items, times = [], [], []
    for no, s in enumerate(_lines(path, "latin-1"), start=1):
        f = s.split("::")
        if len(f) != 4:
            raise DataError(path, no, "expected 'user::item::rating::timestamp'")
        users.append(f[0].strip())
        items.append(f[1].strip())
        times.append(_number(f[3], path, no))
    return keys, texts, users, items, times


def _number(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(path, line, f"timestamp {value.strip()!r} is not a number") from None


def import_movielens(src: Path, out: Path) -> dict:
    """MovieLens ml-100k (u.data + u.item) or ml-1m (ratings.dat + movies.dat), detected by file names.

    >>> import_movielens(Path("ml-100k"), Path("data/ml100k"))   # doctest: +SKIP
    {'format': 'ml-100k', 'users': 943, 'items': 1682, 'interactions': 100000, ...}
    """
    src, out = Path(src), Path(out)
    check_output_folder(out)
    if (src / "u.data").is_file() and (src / "u.item").is_file():
        return _write(out, "ml-100k", *_ml100k(src))
    if (src / "ratings.dat").is_file() and (src / "movies.dat").is_file():
        return _write(out, "ml-1m", *_ml1m(src))
    raise DataError(src, None, "not a MovieLens folder: expected u.data + u.item (ml-100k) "
                    "or ratings.dat + movies.dat (ml-1m)")  # fmt: skip


def _atomic_header(path: Path, line: str) -> list[str]:
    """RecBole header ``name:type<TAB>...`` -> field names."""
    return [f.split(":", 1)[0].strip() for f in line.split("\t")]


def _field(names: list[str], path: Path, *prefixes: str, contains: str = "", required: bool = True) -> int:
    for i, name in enumerate(names):
        if any(name.startswith(p) for p in prefixes) or (contains and contains in name):
            return i
    if required:
        wanted = " or ".join(f"'{p}...'" for p in prefixes) or f"'...{contains}...'"
        raise DataError(path, 1, f"no {wanted} field in the header")
    return -1


def _atomic_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines = _lines(path, "utf-8")
    if not lines:
        raise DataError(path, None, "file is empty (expected a header line)")
    names = _atomic_header(path, lines[0])
    rows = []
    for no, s in enumerate(lines[1:], start=2):
        f = s.split("\t")
        if len(f) != len(names):
            raise DataError(path, no, f"expected {len(names)} tab-separated fields, found {len(f)}")
        rows.append((no, f))
    return names, rows


def import_recbole(src: Path, out: Path) -> dict:
    """RecBole atomic files ``NAME.inter`` + ``NAME.item`` (``src`` = their folder or the .inter file).

    Fields are found by name: ``user_id*``, ``item_id*``, ``timestamp*`` (optional: file order without
    it) in .inter; ``item_id*``, a ``*title*`` field, optional ``*year*`` and ``genre*``/``class*``
    (token_seq, space-separated) in .item. Text = ``Title (Year). Genres: a, b``.

    >>> import_recbole(Path("dataset/ml-100k"), Path("data/ml100k"))   # doctest: +SKIP
    {'format': 'recbole', 'users': 943, 'items': 1682, 'interactions': 100000, ...}
    """
    src, out = Path(src), Path(out)
    check_output_folder(out)
    if src.is_file() and src.suffix == ".inter":
        inter = src
    else:
        found = sorted(src.glob("*.inter")) if src.is_dir() else []
        if len(found) != 1:
            names = ", ".join(p.name for p in found)
            what = f"several .inter files ({names})" if found else "no .inter file"
            raise DataError(src, None, f"{what}: expected one RecBole NAME.inter with its NAME.item")
        inter = found[0]
    item_path = inter.with_suffix(".item")

    names, rows = _atomic_rows(item_path)
    key_i = _field(names, item_path, "item_id")
    title_i = _field(names, item_path, contains="title")
    year_i = _field(names, item_path, contains="year", required=False)
    genre_i = _field(names, item_path, "genre", "class", "categor", required=False)
    table = []
    for no, f in rows:
        if not f[key_i].strip():
            raise DataError(item_path, no, "empty item id")
        year = f[year_i] if year_i >= 0 else ""
        genres = f[genre_i].split() if genre_i >= 0 else []
        table.append((no, f[key_i].strip(), item_text(f[title_i], year, genres)))
    keys, texts = _item_table(table, item_path)

    names, rows = _atomic_rows(inter)
    user_i = _field(names, inter, "user_id")
    item_i = _field(names, inter, "item_id")
    time_i = _field(names, inter, "timestamp", required=False)
    users, items, times = [], [], []
    for no, f in rows:
        user, item = f[user_i].strip(), f[item_i].strip()
        if not user or not item:
            raise DataError(inter, no, "empty user id" if not user else "empty item id")
        users.append(user)
        items.append(item)
        times.append(_number(f[time_i], inter, no) if time_i >= 0 else 0.0)
    return _write(out, "recbole", keys, texts, users, items, times)
