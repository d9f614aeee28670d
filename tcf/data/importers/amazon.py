"""Amazon Reviews 2018 and 2023: a reviews file and a ``meta_`` file, JSON lines, optionally ``.gz``.

2018 (nijianmo.github.io/amazon): reviews ``reviewerID``, ``asin``, ``unixReviewTime`` (seconds); meta
``asin``, ``title``, ``brand``, ``category`` (a list). 2023 (amazon-reviews-2023.github.io): reviews
``user_id``, ``parent_asin``, ``timestamp`` (milliseconds); meta ``parent_asin``, ``title``, ``store``,
``categories`` (a list). The version is read off the first review; the meta file must be the same one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tcf.data.importers.common import (
    Interactions,
    json_records,
    key,
    number,
    one_file,
    sentences,
    source_folder,
    start,
    unescape,
    write_dataset,
)
from tcf.errors import DataError

JSON_NAMES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


@dataclass(frozen=True)
class Schema:
    """The field names of one release."""

    user: str
    item: str
    time: str
    brand: str
    categories: str


SCHEMAS = {
    "2018": Schema(user="reviewerID", item="asin", time="unixReviewTime", brand="brand", categories="category"),
    "2023": Schema(user="user_id", item="parent_asin", time="timestamp", brand="store", categories="categories"),
}


def _get(record: dict, field: str, path: Path, line: int, hint: str = "") -> object:
    if field not in record:
        raise DataError(path, line, f"{field}: missing{hint}")
    return record[field]


def _string(record: dict, field: str, path: Path, line: int) -> str:
    """An optional text field: absent or null is empty."""
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, f"{field}: expected a string, found {type(value).__name__}")
    return value


def _reviews(path: Path) -> tuple[str, Interactions]:
    log = Interactions()
    version = ""
    for no, record in json_records(path):
        if not version:
            version = "2018" if "reviewerID" in record else "2023" if "user_id" in record else ""
            if not version:
                raise DataError(path, no, "reviewerID: missing (and no user_id: neither Amazon 2018 nor 2023 "
                                "reviews)")  # fmt: skip
            s = SCHEMAS[version]
        user = key(_get(record, s.user, path, no), s.user, path, no)
        item = key(_get(record, s.item, path, no), s.item, path, no)
        log.add(user, item, number(_get(record, s.time, path, no), s.time, path, no))
    if not version:
        raise DataError(path, None, "no reviews")
    return version, log


def item_text(record: dict, s: Schema, path: Path, line: int) -> str:
    """``Title. Brand: B. Categories: a, b`` (brand and categories when present; HTML entities decoded);
    empty without a title."""
    title = unescape(_string(record, "title", path, line))
    brand = unescape(_string(record, s.brand, path, line)).strip()
    categories = record.get(s.categories) or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DataError(path, line, f"{s.categories}: expected a list of strings")
    categories = [unescape(c).strip() for c in categories if c.strip()]
    return sentences(title, f"Brand: {brand}" if brand else "",
                     f"Categories: {', '.join(categories)}" if categories else "")  # fmt: skip


def _meta(path: Path, version: str, wanted: dict[str, int]) -> tuple[dict[str, str], int]:
    """Texts of the ``wanted`` items and the count of meta lines that repeat an item (the first one counts)."""
    s = SCHEMAS[version]
    hint = f" (the reviews are Amazon {version}'s: is this their meta file?)"
    texts: dict[str, str] = {}
    seen: set[str] = set()
    repeats = 0
    for no, record in json_records(path):
        item = key(_get(record, s.item, path, no, hint), s.item, path, no)
        text = item_text(record, s, path, no)
        if item in seen:
            repeats += 1
            continue
        seen.add(item)
        if text and item in wanted:
            texts[item] = text
    return texts, repeats


def _files(src: Path, reviews: str | Path | None, meta: str | Path | None) -> tuple[Path, Path]:
    """The reviews and meta files: named (relative to ``src``), or the only ``meta_*`` JSON file and the only
    other JSON file in ``src``."""
    found = sorted(p for p in src.iterdir() if p.name.endswith(JSON_NAMES) and p.is_file())
    if meta:
        meta_path = src / meta
    else:
        meta_path = one_file(src, [p for p in found if p.name.startswith("meta_")], "meta_*.json[l][.gz]", "--meta")
    if reviews:
        return src / reviews, meta_path
    others = [p for p in found if not p.name.startswith("meta_") and p != meta_path]
    return one_file(src, others, "reviews *.json[l][.gz]", "--reviews"), meta_path


def import_amazon(
    src: Path, out: Path, reviews: str | Path | None = None, meta: str | Path | None = None, k_core: int = 0
) -> dict:
    """Amazon Reviews 2018 or 2023 -> one sequence per reviewer, reviews by time, ties in file order.

    Items are ``asin`` (2018) or ``parent_asin`` (2023), the id the meta file describes; text is
    ``Title. Brand: B. Categories: a, b`` (2023: the ``store`` is the brand). A meta line that repeats an
    item is skipped (counted as ``meta_duplicates``). With ``k_core`` (k > 1), users and items with fewer
    than k interactions are dropped, again and again until none is left (after the exact duplicates and
    the items without a text).

    >>> import_amazon(Path("amazon/Beauty"), Path("data/beauty"), k_core=5)   # doctest: +SKIP
    {'format': 'amazon-2018', 'users': ..., 'items': ..., 'interactions': ..., ...}
    """
    out = start(out)
    src = source_folder(src, "a folder with an Amazon reviews file and its meta_ file")
    reviews_path, meta_path = _files(src, reviews, meta)
    version, log = _reviews(reviews_path)
    texts, repeats = _meta(meta_path, version, log.items)
    return write_dataset(out, f"amazon-{version}", log, texts, min_interactions=k_core,
                         extra={"meta_duplicates": repeats})  # fmt: skip
