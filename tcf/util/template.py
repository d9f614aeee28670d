"""Item-text templates (``dataset.text_template``): ``"{title}. {category}. {brand}"`` over named columns.

Not ``str.format``: a template comes from a config file, and ``format`` would reach attributes and indices
(``{0.__class__}``), apply format specs and conversions. Here a placeholder is a column name and nothing
else; ``{{`` and ``}}`` are literal braces. Parsing is separate from filling, so a malformed template is one
error when the config loads, before any data is read.

The rule for empty fields (one rule, so that an item without a brand reads neither ``Shoe. Sports. `` nor
``Shoe. Brand: Sports``): each placeholder owns the literal text before it, back to the previous placeholder,
and the last one also owns the text after it. A field that is empty after stripping whitespace is left out
with the text it owns; when the first field is left out, the text that then starts the result loses its
leading spaces and separators (``. , ; : | / -``); the result is stripped. An item whose fields are all
empty has an empty text::

    t = parse_template("{title}. Brand: {brand}. {category}")
    t.fill({"title": "Shoe", "brand": "Acme", "category": "Sports"})  # 'Shoe. Brand: Acme. Sports'
    t.fill({"title": "Shoe", "brand": "", "category": "Sports"})      # 'Shoe. Sports'
    t.fill({"title": "", "brand": "Acme", "category": ""})            # 'Brand: Acme'
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

#: A column name as a placeholder may write it: a letter or ``_`` first, then letters, digits, ``_`` or ``-``.
NAME = re.compile(r"[^\W\d][\w-]*")
#: What the text that starts an item's text loses when the fields before it were left out.
SEPARATORS = string.whitespace + ".,;:|/-"


@dataclass(frozen=True)
class TextTemplate:
    """A parsed template: ``literals[0] {names[0]} literals[1] {names[1]} ... literals[n]``."""

    source: str
    literals: tuple[str, ...]
    names: tuple[str, ...]

    def fill(self, fields: Mapping[str, str]) -> str:
        """The text for one item's ``fields`` (column name -> value) under the empty-field rule."""
        out: list[str] = []
        last = len(self.names) - 1
        for i, name in enumerate(self.names):
            value = fields[name].strip()
            if not value:
                continue
            before = self.literals[i]
            if not out and i > 0:  # what tied this field to the fields left out before it
                before = before.lstrip(SEPARATORS)
            out += [before, value, self.literals[-1] if i == last else ""]
        return "".join(out).strip()


def _placeholder_error(body: str, at: int) -> str:
    """Why ``{body}`` is not a column placeholder, in the user's terms."""
    shown = "{" + body + "}"
    if not body.strip():
        return f"empty placeholder {{}} at position {at}: name a column, e.g. {{title}}"
    if body[0].isdigit():
        return f"positional placeholder {shown} at position {at}: name a column, e.g. {{title}}"
    if "!" in body:
        return f"conversion in {shown} at position {at}: a placeholder is a column name only"
    if ":" in body:
        return f"format spec in {shown} at position {at}: a placeholder is a column name only"
    if "." in body or "[" in body:
        return f"attribute or index access in {shown} at position {at}: a placeholder is a column name only"
    return (f"bad placeholder {shown} at position {at}: a column name starts with a letter or _ and holds "
            "letters, digits, _ or -")


def parse_template(source: str) -> TextTemplate:
    """Parse ``source``; ValueError with the position of the first problem (positions count from 0)."""
    literals: list[str] = []
    names: list[str] = []
    buf: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch in "{}" and source.startswith(ch * 2, i):
            buf.append(ch)
            i += 2
        elif ch == "}":
            raise ValueError(f"single '}}' at position {i}: write '}}}}' for a literal brace")
        elif ch == "{":
            end = source.find("}", i + 1)
            nested = source.find("{", i + 1)
            if end < 0 or 0 <= nested < end:
                raise ValueError(f"unbalanced '{{' at position {i}: close it with '}}', or write '{{{{' for a "
                                 "literal brace")
            body = source[i + 1:end]
            if not NAME.fullmatch(body):
                raise ValueError(_placeholder_error(body, i))
            literals.append("".join(buf))
            buf = []
            names.append(body)
            i = end + 1
        else:
            buf.append(ch)
            i += 1
    literals.append("".join(buf))
    if not names:
        raise ValueError("names no column: write at least one placeholder, e.g. \"{title}. {brand}\"")
    return TextTemplate(source, tuple(literals), tuple(names))
