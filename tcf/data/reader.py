"""Read and validate a dataset folder: ``behaviors.tsv`` plus one item file.

Layout (the paper's, with a header line in *both* files: the reference code skipped the first line of
one file but not of the other, shifting every item by one)::

    behaviors.tsv   user_key <TAB> item_key item_key ...   (chronological, oldest first)
    news.tsv        item_key <TAB> text                    (or items.tsv / videos.tsv)

An item file whose header names more than two columns (``item_id<TAB>title<TAB>brand``) is read through
``dataset.text_template``, which makes each item's text from its columns (tcf.util.template).

Strict mode stops at the first bad line with ``file:line: message``; lenient mode skips bad lines
(and unknown item keys inside a behaviors line) and counts them per kind, so a user can see what a
messy dump lost instead of discovering it after training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tcf.errors import ConfigError, DataError
from tcf.util.template import NAME, TextTemplate, parse_template
from tcf.util.text import printable

ITEM_FILES = ("news.tsv", "items.tsv", "videos.tsv")
BEHAVIORS_FILE = "behaviors.tsv"
TEMPLATE_KEY = "dataset.text_template"


@dataclass(frozen=True)
class RawDataset:
    """A validated dataset exactly as the files say (keys are strings; nothing re-indexed yet)."""

    path: Path
    item_file: str
    item_keys: list[str]
    item_texts: list[str]
    user_keys: list[str]
    sequences: list[list[str]]
    skipped: dict[str, int]
    item_columns: tuple[str, ...] = ()  # the item file's header, split at tabs
    text_template: str | None = None  # what made item_texts from the columns (None: the text column)

    def text_of(self) -> dict[str, str]:
        """Item key -> text; item texts are keyed by key string, never by file position."""
        return dict(zip(self.item_keys, self.item_texts, strict=True))


def resolve_item_file(folder: Path, item_file: str | None = None) -> str:
    """Name of the dataset's item file: the one given (a bare name) or the single one of ITEM_FILES."""
    if item_file is not None:
        if (
            not item_file
            or "/" in item_file
            or "\\" in item_file
            or item_file in (".", "..")
            or ".." in Path(item_file).parts
        ):
            raise DataError(
                folder, None, f"item file must be a bare file name inside the folder, got {item_file!r}"
            )
        return item_file
    found = [name for name in ITEM_FILES if (folder / name).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(folder, None, f"no item file: expected one of {', '.join(ITEM_FILES)}")
    raise DataError(folder, None, f"several item files ({', '.join(found)}): choose one with item_file")


def read_header(path: Path) -> str:
    """First line of a TSV (without the newline), so writers can keep the original column names."""
    with open(path, "rb") as f:
        first = f.readline()
    return first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _read_lines(path: Path, lenient: bool) -> list[str | None]:
    """Physical lines of a UTF-8 file (index 0 = line 1); trailing blank lines dropped.

    In lenient mode a line that is not valid UTF-8 becomes ``None`` (the caller counts it); in strict
    mode it raises with its line number.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a folder, expected a file") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        lines: list[str | None] = list(data.decode("utf-8").split("\n"))
    except UnicodeDecodeError as e:
        if not lenient:
            line = data.count(b"\n", 0, e.start) + 1
            raise DataError(path, line, "invalid UTF-8") from None
        lines = []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(None)
    # CRLF files: drop the \r that split("\n") leaves behind.
    lines = [s[:-1] if s and s[-1] == "\r" else s for s in lines]
    while lines and lines[-1] is not None and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(path, None, "file is empty (expected a header line)")
    return lines


class _Sink:
    """Raise (strict) or count (lenient) one bad line."""

    def __init__(self, path: Path, lenient: bool):
        self.path = path
        self.counts: Counter | None = Counter() if lenient else None

    def bad(self, kind: str, line: int, message: str) -> None:
        if self.counts is None:
            raise DataError(self.path, line, message)
        self.counts[kind] += 1


def _key_and_rest(sink: _Sink, no: int, s: str | None, what: str, expected: str) -> tuple[str, str] | None:
    """Split ``key<TAB>rest``; report (or, leniently, count) the line and return None when it is bad."""
    if s is None:
        sink.bad("invalid_utf8", no, "invalid UTF-8")
        return None
    key, tab, rest = s.partition("\t")
    if not tab:
        if not s.strip():
            sink.bad("blank_line", no, "blank line")
        else:
            sink.bad("no_tab", no, f"no tab: expected '{expected}'")
        return None
    key = key.strip()
    if not key:
        sink.bad("empty_key", no, f"empty {what} key")
        return None
    return key, rest


def _columns(path: Path, header: str | None, template: TextTemplate | None, template_key: str,
             raw_rows: bool) -> list[str]:
    """The item file's column names from its header, checked against the template (or its absence).

    A header of at most two columns is the two-column layout, read as it always was; more columns need a
    template (or ``raw_rows``), and every placeholder must name a column (ConfigError at line 1)."""
    if header is None:
        if template is not None:
            raise DataError(path, 1, "invalid UTF-8 in the header, whose column names the text template uses")
        return []
    columns = [c.strip() for c in header.rstrip().split("\t")]
    shown = ", ".join(printable(c) for c in columns)
    if template is None:
        if len(columns) > 2 and not raw_rows:
            example = next((c for c in columns[1:] if NAME.fullmatch(c)), "title")
            raise DataError(path, 1, f"{len(columns)} columns ({shown}): set {template_key} to make each item's "
                            f"text from them, e.g. \"{{{example}}}\"")
        return columns
    seen: dict[str, int] = {}
    for no, name in enumerate(columns, start=1):
        if name and name in seen and name in template.names:
            raise DataError(path, 1, f"column {printable(name)!r} appears twice (columns {seen[name]} and {no}), "
                            f"so {template_key} cannot tell which one it means")
        seen.setdefault(name, no)
    for name in template.names:
        if name not in seen:
            raise ConfigError(f"{path}:1", template_key, f"no column {name!r} in the item file; its columns "
                              f"are {shown}")
    return columns


def _read_items(path: Path, lenient: bool, template: TextTemplate | None = None,
                template_key: str = TEMPLATE_KEY, raw_rows: bool = False
                ) -> tuple[list[str], list[str], list[str], Counter | None]:
    """Keys, texts and column names of the item file.

    Two columns: the text is everything after the first tab, as always (under a template, the value of the
    second column). More columns: every line has exactly the header's, and the template makes the text; with
    ``raw_rows`` (tools that copy rows) the text is the line after the key, verbatim."""
    sink = _Sink(path, lenient)
    lines = _read_lines(path, lenient)
    columns = _columns(path, lines[0], template, template_key, raw_rows)
    wide = len(columns) > 2
    expected = "<TAB>".join(printable(c) for c in columns) if wide else "item_key<TAB>text"
    keys: list[str] = []
    texts: list[str] = []
    first_line: dict[str, int] = {}
    for no, s in enumerate(lines[1:], start=2):
        if (parsed := _key_and_rest(sink, no, s, "item", expected)) is None:
            continue
        key, text = parsed
        if len(key.split()) != 1:
            sink.bad("bad_key", no, f"item key {key!r} contains whitespace")
            continue
        if wide:
            values = [key, *text.split("\t")]
            if len(values) != len(columns):
                sink.bad("bad_columns", no, f"{len(values)} columns, the header has {len(columns)}")
                continue
        else:
            values = [key, text]
        if template is not None:
            text = template.fill(dict(zip(columns, values, strict=False)))
        if not text.strip():
            sink.bad("empty_text", no, f"empty text for item {key!r}")
            continue
        if key in first_line:
            sink.bad("duplicate_item", no, f"duplicated item key {key!r} (first on line {first_line[key]})")
            continue
        first_line[key] = no
        keys.append(key)
        texts.append(text)
    if not keys:
        raise DataError(path, None, "no items")
    return keys, texts, columns, sink.counts


class _Unknown(Exception):
    """An unknown item key in the optimistic pass: redo the file carefully."""


def _parse_behaviors(
    lines: list[str | None], known: dict[str, str], sink: _Sink, careful: bool
) -> tuple[list[str], list[list[str]]]:
    get = known.__getitem__
    users: list[str] = []
    seqs: list[list[str]] = []
    first_line: dict[str, int] = {}
    for no, s in enumerate(lines[1:], start=2):
        if (parsed := _key_and_rest(sink, no, s, "user", "user_key<TAB>item_key item_key ...")) is None:
            continue
        user, rest = parsed
        if user in first_line:
            sink.bad("duplicate_user", no, f"duplicated user {user!r} (first on line {first_line[user]})")
            continue
        tokens = rest.split()
        try:  # C-speed lookup that also shares one string object per item key (memory)
            items = list(map(get, tokens))
        except KeyError:
            if not careful:
                raise _Unknown from None
            items = []
            for key in tokens:
                canonical = known.get(key)
                if canonical is None:
                    sink.bad("unknown_item", no, f"unknown item key {key!r}")
                else:
                    items.append(canonical)
        if not items:
            sink.bad("empty_sequence", no, f"user {user!r} has no items")
            continue
        first_line[user] = no
        users.append(user)
        seqs.append(items)
    return users, seqs


def _read_behaviors(
    path: Path, known: dict[str, str], lenient: bool
) -> tuple[list[str], list[list[str]], Counter | None]:
    """An optimistic pass first; if any token is unknown (or, strict, any line is bad), a careful pass in
    file order reports the first error (strict) or drops the unknown tokens (lenient).
    """
    lines = _read_lines(path, lenient)
    sink = _Sink(path, lenient=True)
    try:
        users, seqs = _parse_behaviors(lines, known, sink, careful=False)
        if not lenient and sink.counts:
            raise _Unknown  # a bad line: find the first one, in file order
        counts = sink.counts if lenient else None
    except _Unknown:
        sink = _Sink(path, lenient)
        users, seqs = _parse_behaviors(lines, known, sink, careful=True)
        counts = sink.counts
    if not users:
        raise DataError(path, None, "no users")
    return users, seqs, counts


def load_dataset(path: str | Path, item_file: str | None = None, lenient: bool = False,
                 text_template: str | None = None, *, template_key: str = TEMPLATE_KEY,
                 raw_rows: bool = False) -> RawDataset:
    """Read and validate a dataset folder.

    ``text_template`` makes each item's text from the item file's named columns (tcf.util.template); errors
    about it name ``template_key`` (a command's flag says its own name). ``raw_rows`` keeps each item line
    after the key verbatim as its text, for tools that copy rows rather than read texts.

    >>> raw = load_dataset("data/mind_small")            # doctest: +SKIP
    >>> raw.item_file, len(raw.user_keys), raw.skipped   # doctest: +SKIP
    ('news.tsv', 50000, {})
    """
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise DataError(folder, None, "dataset folder not found" if not folder.exists() else "not a folder")
    name = resolve_item_file(folder, item_file)
    try:
        template = parse_template(text_template) if text_template is not None else None
    except ValueError as e:
        raise ConfigError(None, template_key, str(e)) from None
    item_keys, item_texts, columns, item_skips = _read_items(folder / name, lenient, template, template_key,
                                                             raw_rows)
    user_keys, sequences, user_skips = _read_behaviors(
        folder / BEHAVIORS_FILE, {k: k for k in item_keys}, lenient
    )
    skipped: Counter = Counter()
    for counts in (item_skips, user_skips):
        if counts:
            skipped.update(counts)
    return RawDataset(
        path=folder,
        item_file=name,
        item_keys=item_keys,
        item_texts=item_texts,
        user_keys=user_keys,
        sequences=sequences,
        skipped=dict(sorted(skipped.items())),
        item_columns=tuple(columns),
        text_template=text_template,
    )
