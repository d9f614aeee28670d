"""H&M Personalized Fashion Recommendations (Kaggle): ``transactions_train.csv`` + ``articles.csv``.

``transactions_train.csv``: ``t_dat`` (``2018-09-20``), ``customer_id``, ``article_id``, ``price``,
``sales_channel_id``, 31 million rows in date order. ``articles.csv``: ``article_id``, ``prod_name``,
``product_type_name``, ``colour_group_name``, ..., ``detail_desc`` (25 columns, found by name).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from tcf.data.importers.common import (
    Interactions,
    columns,
    csv_table,
    key,
    sentences,
    source_folder,
    start,
    write_dataset,
)
from tcf.errors import DataError

ARTICLE_DIGITS = 10


def article_id(value: str, path: Path, line: int) -> str:
    """The 10-digit article id as a string (``0108775015``); one a spreadsheet shortened gets its zeros back."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > ARTICLE_DIGITS:
        raise DataError(path, line, f"article_id: {text!r} is not a number of at most {ARTICLE_DIGITS} digits")
    return text.zfill(ARTICLE_DIGITS)


def _transactions(path: Path) -> Interactions:
    header, rows = csv_table(path)
    at = columns(path, header, {"t_dat": ("t_dat",), "customer_id": ("customer_id",), "article_id": ("article_id",)})
    day, customer, article = at["t_dat"], at["customer_id"], at["article_id"]
    days: dict[str, float] = {}  # two years of dates: parse each once
    log = Interactions()
    for no, f in rows:
        time = days.get(f[day])
        if time is None:
            try:
                time = days[f[day]] = float(date.fromisoformat(f[day].strip()).toordinal())
            except ValueError:
                raise DataError(path, no, f"t_dat: {f[day].strip()!r} is not a date like 2018-09-20") from None
        log.add(key(f[customer], "customer_id", path, no), article_id(f[article], path, no), time)
    return log


def item_text(name: str, product_type: str, colour: str, description: str) -> str:
    """``Name. Type, Colour. Description`` (each part only when not empty); empty without a name."""
    kind = ", ".join(p.strip() for p in (product_type, colour) if p.strip())
    return sentences(name, kind, description)


def _articles(path: Path, wanted: dict[str, int]) -> dict[str, str]:
    header, rows = csv_table(path)
    names = ("article_id", "prod_name", "product_type_name", "colour_group_name", "detail_desc")
    at = columns(path, header, {n: (n,) for n in names})
    texts: dict[str, str] = {}
    seen: dict[str, int] = {}
    for no, f in rows:
        article = article_id(f[at["article_id"]], path, no)
        if article in seen:
            raise DataError(path, no, f"article_id: {article!r} is on line {seen[article]} already")
        seen[article] = no
        if article in wanted and (text := item_text(*(f[at[n]] for n in names[1:]))):
            texts[article] = text
    return texts


def import_hm(src: Path, out: Path) -> dict:
    """H&M -> one sequence per customer: purchases by day (the file gives no finer time), ties in file order.

    Two purchases of one article by one customer on one day are one interaction (an exact duplicate). Item
    text: ``prod_name. product_type_name, colour_group_name. detail_desc`` (empty parts left out, no ``.``
    added after a part ending in ``.``, ``!`` or ``?``), e.g. ``Strap top. Vest top, Black. Jersey top with
    narrow shoulder straps.``; an article without a name has no text.

    >>> import_hm(Path("h-and-m-personalized-fashion-recommendations"), Path("data/hm"))   # doctest: +SKIP
    {'format': 'hm', 'users': ..., 'items': ..., 'interactions': ..., 'duplicates': ..., ...}
    """
    out = start(out)
    src = source_folder(src, "the H&M folder with transactions_train.csv and articles.csv")
    log = _transactions(src / "transactions_train.csv")
    return write_dataset(out, "hm", log, _articles(src / "articles.csv", log.items))
