"""MovieLens ml-100k (``u.data`` + ``u.item``) and ml-1m (``ratings.dat`` + ``movies.dat``), detected by file names.

Ratings are implicit interactions (every rating counts, whatever its value). Text: ``Title (Year). Genres:
a, b`` (:func:`~tcf.data.importers.common.item_text`); every movie with a title is an item, rated or not.
"""

from __future__ import annotations

from pathlib import Path

from tcf.data.importers.common import Interactions, item_text, number, read_lines, start, table, write_dataset
from tcf.errors import DataError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip


def _ml100k(src: Path) -> tuple[Interactions, dict[str, str]]:
    genres = list(ML100K_GENRES)
    if (src / "u.genre").is_file():
        genres = [s.split("|")[0] for _, s in read_lines(src / "u.genre", "latin-1") if s.strip()]
    path = src / "u.item"
    rows = []
    for no, s in read_lines(path, "latin-1"):
        f = s.split("|")
        if len(f) < 5 + len(genres) or not f[0].strip():
            expected = f"id|title|release date|video date|url|{len(genres)} genre flags"
            raise DataError(path, no, f"expected '{expected}'")
        flags = f[5 : 5 + len(genres)]
        names = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]
        rows.append((no, f[0].strip(), item_text(f[1], "", names)))
    texts = table(rows, path)
    path = src / "u.data"
    log = Interactions()
    for no, s in read_lines(path, "latin-1"):
        f = s.split()
        if len(f) != 4:
            raise DataError(path, no, "expected 'user<TAB>item<TAB>rating<TAB>timestamp'")
        log.add(f[0], f[1], number(f[3], "timestamp", path, no))
    return log, texts


def _ml1m(src: Path) -> tuple[Interactions, dict[str, str]]:
    path = src / "movies.dat"
    rows = []
    for no, s in read_lines(path, "latin-1"):
        f = s.split("::")
        if len(f) != 3 or not f[0].strip():
            raise DataError(path, no, "expected 'id::Title (Year)::Genre|Genre'")
        rows.append((no, f[0].strip(), item_text(f[1], "", f[2].split("|"))))
    texts = table(rows, path)
    path = src / "ratings.dat"
    log = Interactions()
    for no, s in read_lines(path, "latin-1"):
        f = s.split("::")
        if len(f) != 4:
            raise DataError(path, no, "expected 'user::item::rating::timestamp'")
        log.add(f[0].strip(), f[1].strip(), number(f[3], "timestamp", path, no))
    return log, texts


def import_movielens(src: Path, out: Path) -> dict:
    """MovieLens ml-100k (u.data + u.item) or ml-1m (ratings.dat + movies.dat), detected by file names.

    >>> import_movielens(Path("ml-100k"), Path("data/ml100k"))   # doctest: +SKIP
    {'format': 'ml-100k', 'users': 943, 'items': 1682, 'interactions': 100000, ...}
    """
    src, out = Path(src), start(out)
    if (src / "u.data").is_file() and (src / "u.item").is_file():
        return write_dataset(out, "ml-100k", *_ml100k(src), every_item=True)
    if (src / "ratings.dat").is_file() and (src / "movies.dat").is_file():
        return write_dataset(out, "ml-1m", *_ml1m(src), every_item=True)
    raise DataError(src, None, "not a MovieLens folder: expected u.data + u.item (ml-100k) "
                    "or ratings.dat + movies.dat (ml-1m)")  # fmt: skip
