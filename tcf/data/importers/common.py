"""What every importer shares: streaming readers that name the bad line, the interaction log, the one writer.

Raw dumps are large (MIND, H&M and Amazon run to gigabytes), so files are read one line at a time
(``.gz`` decompressed on the fly) and interactions are kept as integer codes in compact arrays; the
sorting, de-duplication and k-core are numpy passes over those arrays. Every malformed line stops the
import with one :class:`DataError` ``FILE:LINE: field: message``, before anything is written.
"""

from __future__ import annotations

import csv
import gzip
import html
import json
import math
import zlib
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tcf.data.output import check_output_folder, clean_field, dataset_folder, write_tsv
from tcf.data.reader import BEHAVIORS_FILE
from tcf.errors import DataError

HISTORY = -math.inf  # the time of an interaction known only to predate every timed one (MIND's history)


# ---------------------------------------------------------------------------------------------- reading
def read_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a text file (``.gz`` decompressed), one line in memory at a time.

    A UTF-8 byte-order mark is dropped and CRLF read as LF. Blank lines at the end are dropped; a blank
    line with more after it is yielded, for the caller to refuse. Undecodable bytes, a corrupt or
    truncated gzip stream: a DataError naming the line.
    """
    path = Path(path)
    try:
        f = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a folder, expected a file") from None
    no = 0
    blanks: list[tuple[int, str]] = []
    with f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                raise DataError(path, no + 1, f"cannot read: {e}") from None
            if not raw:
                return
            no += 1
            if no == 1 and encoding == "utf-8" and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise DataError(path, no, f"invalid {encoding.upper()}") from None
            text = text.rstrip("\n").rstrip("\r")
            if not text.strip():
                blanks.append((no, text))
                continue
            if blanks:
                yield from blanks
                blanks.clear()
            yield no, text


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of each CSV record (RFC 4180 quoting; a quoted field may span lines)."""
    source = (text + "\n" for _, text in read_lines(path))
    reader = csv.reader(source, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, reader.line_num, f"bad CSV: {e}") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            raise DataError(path, start, "blank line")
        yield start, row
        start = reader.line_num + 1


def csv_table(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header row of a CSV file and its records after it, each checked to have as many fields."""
    rows = csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DataError(path, None, "file is empty (expected a header line)")
    header = first[1]

    def records() -> Iterator[tuple[int, list[str]]]:
        for no, fields in rows:
            yield no, width(path, no, fields, len(header))

    return header, records()


def json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` of a JSON-lines file: one JSON object per line."""
    for no, text in read_lines(path):
        if not text.strip():
            raise DataError(path, no, "blank line")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, no, f"bad JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataError(path, no, "bad JSON: nested too deeply") from None
        if not isinstance(record, dict):
            raise DataError(path, no, f"expected a JSON object, found {type(record).__name__}")
        yield no, record


def columns(path: Path, header: list[str], wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Positions of the ``wanted`` columns (name -> accepted spellings) in a header row; DataError at line 1."""
    names = [h.strip().lower() for h in header]
    found = {}
    for field, spellings in wanted.items():
        hit = next((names.index(s) for s in spellings if s in names), None)
        if hit is None:
            raise DataError(path, 1, f"{field}: no such column in the header ({', '.join(header)})")
        found[field] = hit
    return found


def width(path: Path, line: int, fields: list[str], expected: int, sep: str = "comma") -> list[str]:
    """``fields`` when there are ``expected`` of them; else the one error for a wrong column count."""
    if len(fields) != expected:
        raise DataError(path, line, f"expected {expected} {sep}-separated fields, found {len(fields)}")
    return fields


def key(value: object, field: str, path: Path, line: int) -> str:
    """An id usable as a key of the TSV layout: a non-empty string (or integer) without whitespace."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(path, line, f"{field}: expected a string, found {_json_type(value)}")
    text = str(value).strip()
    if not text:
        raise DataError(path, line, f"{field}: empty")
    if len(text.split()) != 1:
        raise DataError(path, line, f"{field}: {text!r} contains whitespace")
    return text


def number(value: object, field: str, path: Path, line: int) -> float:
    """A finite timestamp from a JSON number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(path, line, f"{field}: expected a number, found {_json_type(value)}")
    try:
        t = float(value)
    except ValueError:
        raise DataError(path, line, f"{field}: {str(value).strip()!r} is not a number") from None
    if not math.isfinite(t):
        raise DataError(path, line, f"{field}: {str(value).strip()!r} is not a finite number")
    return t


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "a boolean", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def one_file(src: Path, found: list[Path], what: str, option: str) -> Path:
    """The single candidate for a file an importer looks for, or a DataError saying which option picks it."""
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(str(p.relative_to(src)) for p in found))
    problem = f"several {what} files ({names})" if found else f"no {what} file"
    raise DataError(src, None, f"{problem}: name it with {option}")


def source_folder(src: Path, what: str) -> Path:
    """``src`` when it is a folder; else the error that says what it should hold."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(src, None, f"{'not a folder' if src.exists() else 'folder not found'}: expected {what}")
    return src


# ------------------------------------------------------------------------------------------------- text
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


_NO_GENRE = {"unknown", "(no genres listed)"}


def sentences(*parts: str) -> str:
    """The non-empty parts (line breaks and tabs made spaces) as sentences: ``". "`` between two parts, or
    just ``" "`` after a part that already ends in ``.``, ``!`` or ``?``. Empty when the first part is."""
    cleaned = [clean_field(p) for p in parts]
    if not cleaned or not cleaned[0]:
        return ""
    text = cleaned[0]
    for part in cleaned[1:]:
        if part:
            text += (" " if text[-1] in ".!?" else ". ") + part
    return text


def unescape(text: str) -> str:
    """HTML entities (``&amp;``) decoded: scraped catalogues (Amazon) carry them in titles and categories."""
    return html.unescape(text) if "&" in text else text


# -------------------------------------------------------------------------------------------- the log
class Interactions:
    """Interactions in file order: user and item ids interned as integer codes, times as float64.

    Three machine words per interaction instead of a Python tuple: H&M's 31 million fit in memory.
    """

    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self._u = array("q")
        self._i = array("q")
        self._t = array("d")

    def add(self, user: str, item: str, time: float) -> None:
        users, items = self.users, self.items
        self._u.append(users.setdefault(user, len(users)))
        self._i.append(items.setdefault(item, len(items)))
        self._t.append(time)

    def __len__(self) -> int:
        return len(self._u)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user codes, item codes, times), one entry per interaction in file order."""
        return (np.frombuffer(self._u, dtype=np.int64) if len(self._u) else np.zeros(0, np.int64),
                np.frombuffer(self._i, dtype=np.int64) if len(self._i) else np.zeros(0, np.int64),
                np.frombuffer(self._t, dtype=np.float64) if len(self._t) else np.zeros(0))  # fmt: skip


def _duplicates(u: np.ndarray, i: np.ndarray, t: np.ndarray) -> np.ndarray:
    """True for each interaction that repeats an earlier one exactly (same user, item and time)."""
    pos = np.arange(len(u))
    order = np.lexsort((pos, t, i, u))
    su, si, st = u[order], i[order], t[order]
    repeat = np.zeros(len(u), dtype=bool)
    repeat[1:] = (su[1:] == su[:-1]) & (si[1:] == si[:-1]) & (st[1:] == st[:-1])
    out = np.zeros(len(u), dtype=bool)
    out[order[repeat]] = True
    return out


def k_core(u: np.ndarray, i: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """``keep`` narrowed until every kept user and every kept item has at least ``k`` kept interactions
    (dropping a user can take an item below k and back: repeated until nothing changes)."""
    keep = keep.copy()
    n_users = int(u.max()) + 1 if len(u) else 0
    n_items = int(i.max()) + 1 if len(i) else 0
    while True:
        per_user = np.bincount(u, weights=keep, minlength=n_users)
        per_item = np.bincount(i, weights=keep, minlength=n_items)
        drop = keep & ((per_user[u] < k) | (per_item[i] < k))
        if not drop.any():
            return keep
        keep &= ~drop


def write_dataset(
    out: Path,
    fmt: str,
    log: Interactions,
    texts: dict[str, str],
    *,
    every_item: bool = False,
    min_interactions: int = 0,
    extra: dict | None = None,
) -> dict:
    """Write ``log`` as a dataset folder, atomically, and return the counts the CLI reports.

    In turn: exact duplicates (same user, item and time) are dropped, the first kept; interactions with
    an item that has no text are dropped; with ``min_interactions`` (k) the k-core is taken. Each user's
    items are ordered by time, ties in file order; users come in order of first appearance. The item
    file lists the items of ``texts`` in its order: every one (``every_item``) or those in a sequence.
    """
    u, i, t = log.arrays()
    keep = ~_duplicates(u, i, t)
    duplicates = len(u) - int(keep.sum())
    item_keys = np.array(list(log.items), dtype=object)
    has_text = np.fromiter((k in texts for k in item_keys), dtype=bool, count=len(item_keys))
    without_text = int((keep & ~has_text[i]).sum())
    keep &= has_text[i]
    below = 0
    if min_interactions > 1:
        cored = k_core(u, i, keep, min_interactions)
        below = int(keep.sum() - cored.sum())
        keep = cored
    idx = np.flatnonzero(keep)
    if not len(idx):
        why = f"after the {min_interactions}-core" if below else "with an item that has a text"
        raise DataError(out, None, f"no interaction left {why}: nothing to write")

    users_kept, first = np.unique(u[idx], return_index=True)
    user_order = users_kept[np.argsort(first, kind="stable")]
    rank = np.zeros(len(log.users), dtype=np.int64)
    rank[user_order] = np.arange(len(user_order))
    idx = idx[np.lexsort((idx, t[idx], rank[u[idx]]))]  # user, then time, then file order
    bounds = np.flatnonzero(np.diff(u[idx])) + 1
    user_keys = list(log.users)
    rows = ((user_keys[u[chunk[0]]], " ".join(item_keys[i[chunk]])) for chunk in np.split(idx, bounds))
    used = np.zeros(len(item_keys), dtype=bool)
    used[i[idx]] = True
    code = log.items
    items = [(k, v) for k, v in texts.items() if every_item or (k in code and used[code[k]])]
    with dataset_folder(out) as tmp:
        write_tsv(tmp / "items.tsv", "item_id\ttext", items)
        n_users = write_tsv(tmp / BEHAVIORS_FILE, "user_id\titems", rows)
    info = {"format": fmt, "users": n_users, "items": len(items), "interactions": len(idx),
            "duplicates": duplicates, "interactions_without_text": without_text}  # fmt: skip
    if min_interactions > 1:
        info[f"interactions_below_{min_interactions}_core"] = below
    return {**info, **(extra or {})}


def start(out: Path) -> Path:
    """Refuse an output that exists and is not an empty folder before reading gigabytes of input."""
    out = Path(out)
    check_output_folder(out)
    return out


def table(rows: Iterable[tuple[int, str, str]], path: Path) -> dict[str, str]:
    """``(line, key, text)`` rows -> key: text of the items with a text, in file order; a key twice is an error."""
    texts: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, item, text in rows:
        if item in seen:
            raise DataError(path, line, f"duplicated item id {item!r} (first on line {seen[item]})")
        seen[item] = line
        if text:
            texts[item] = text
    return texts
