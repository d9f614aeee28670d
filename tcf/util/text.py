"""Text from users (run names, tags, notes, config values) made safe to show: control characters escaped.

A name holding ``\\x1b[2J`` would clear the terminal of whoever lists the runs, a ``\\r`` would overwrite a
line, a right-to-left override would show a file name backwards; in an exported table they corrupt the
file. Shown text escapes them the way Python writes them, and leaves everything else as typed::

    printable("mind\\x1b[31m")   # 'mind\\\\x1b[31m'
"""

from __future__ import annotations

import unicodedata

_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control characters (C0, C1, DEL) and bidirectional overrides written as escapes."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if ch in _BIDI or unicodedata.category(ch) == "Cc" else ch for ch in text)
