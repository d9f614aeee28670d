"""MIND (Microsoft News): a train or dev folder with ``behaviors.tsv`` and ``news.tsv``, no header lines.

``behaviors.tsv``: impression id, user id, time (``11/15/2019 8:55:22 AM``), history (space-separated news
ids the user clicked before the impression log starts), impressions (``N123-1 N456-0``: shown news, 1 =
clicked). ``news.tsv``: news id, category, subcategory, title, abstract, url, title entities, abstract
entities.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from tcf.data.importers.common import (
    HISTORY,
    Interactions,
    key,
    read_lines,
    sentences,
    source_folder,
    start,
    width,
    write_dataset,
)
from tcf.errors import DataError

_TIME = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)")
_EPOCH = datetime(1970, 1, 1)


def mind_time(text: str, path: Path, line: int) -> float:
    """Seconds since 1970 of MIND's ``M/D/YYYY h:mm:ss AM`` (no time zone is given: read as UTC)."""
    m = _TIME.fullmatch(text.strip())
    if m is not None:
        month, day, year, hour, minute, second = (int(g) for g in m.groups()[:6])
        if 1 <= hour <= 12:
            hour = hour % 12 + (12 if m.group(7) == "PM" else 0)
            try:
                return (datetime(year, month, day, hour, minute, second) - _EPOCH).total_seconds()
            except ValueError:
                pass  # 2/30, 25 minutes past 61...
    raise DataError(path, line, f"time: {text.strip()!r} is not a MIND time like 11/15/2019 8:55:22 AM")


def _behaviors(path: Path) -> Interactions:
    log = Interactions()
    history_of: dict[str, tuple[int, int]] = {}  # user -> (hash of the history, line it was read from)
    for no, text in read_lines(path):
        f = width(path, no, text.split("\t"), 5, "tab")
        user = key(f[1], "user_id", path, no)
        time = mind_time(f[2], path, no)
        history = f[3].split()
        digest = hash(tuple(history))
        seen = history_of.get(user)
        if seen is None:
            history_of[user] = (digest, no)
            for news in history:
                log.add(user, news, HISTORY)
        elif seen[0] != digest:
            raise DataError(path, no, f"history: not the history of user {user!r} on line {seen[1]} "
                            "(MIND gives a user one history)")  # fmt: skip
        for shown in f[4].split():
            news, dash, label = shown.rpartition("-")
            if not dash or not news or label not in ("0", "1"):
                raise DataError(path, no, f"impressions: {shown!r} is not NEWS_ID-1 or NEWS_ID-0 "
                                "(a MIND test set has no clicks to import)")  # fmt: skip
            if label == "1":
                log.add(user, news, time)
    return log


def _news(path: Path, wanted: dict[str, int]) -> dict[str, str]:
    texts: dict[str, str] = {}
    first: dict[str, int] = {}
    for no, text in read_lines(path):
        f = width(path, no, text.split("\t"), 8, "tab")
        news = key(f[0], "news_id", path, no)
        if news in first:
            raise DataError(path, no, f"news_id: {news!r} is on line {first[news]} already")
        first[news] = no
        if news in wanted and (body := sentences(f[3], f[4])):
            texts[news] = body
    return texts


def import_mind(src: Path, out: Path) -> dict:
    """A MIND train or dev folder -> one sequence per user: the clicked history in its given order (it
    predates every impression), then the clicked impressions (label 1) by time, ties in file order.

    A user in several impression rows has the same history in each; it is taken once (a different one is
    an error; a news listed twice in it is one interaction, an exact duplicate). Item text: the title,
    then the abstract when there is one, as sentences (``Title. Abstract``; no ``.`` is added after a
    title ending in ``.``, ``!`` or ``?``); a news without a title has no text.

    >>> import_mind(Path("MINDsmall_train"), Path("data/mind_small"))   # doctest: +SKIP
    {'format': 'mind', 'users': 50000, 'items': ..., 'interactions': ..., 'duplicates': ..., ...}
    """
    out = start(out)
    src = source_folder(src, "a MIND train or dev folder with behaviors.tsv and news.tsv")
    log = _behaviors(src / "behaviors.tsv")
    return write_dataset(out, "mind", log, _news(src / "news.tsv", log.items))
