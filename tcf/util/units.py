"""Byte sizes and durations as people write and read them: '8GiB' in, '1.3 GiB' and '12m04s' out.

    parse_bytes("8GiB")      # 8589934592; GB = 10^9, GiB = 2^30
    format_bytes(1.3 * GiB)  # '1.3 GiB'
    duration(724)            # '12m04s'
"""

from __future__ import annotations

import math
import re

MiB = 1 << 20
GiB = 1 << 30

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """'8GiB' -> 8589934592, '6.5GB' -> 6500000000, '512MiB', '1024' (bytes); ValueError saying how to write one."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ValueError(f"bad memory size {text!r}: write a number and a unit, e.g. 8GiB, 6.5GB or 512MiB "
                             "(GiB/MiB/KiB are powers of 2, GB/MB/KB powers of 10)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"bad memory size {text!r}: must be more than 0 bytes")
    return value


def format_bytes(n: float) -> str:
    """'1.3 GiB', '512.0 MiB': GiB from 1 GiB up."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def format_bytes_ceil(n: int) -> str:
    """Like :func:`format_bytes` but rounded up, so 'at least X' is always enough."""
    unit, name = (GiB, "GiB") if n >= GiB else (MiB, "MiB")
    return f"{math.ceil(n * 10 / unit) / 10:.1f} {name}"


def format_seconds(s: float) -> str:
    """'42.0 s', '3.5 min', '2.1 h': an estimate's scale at a glance."""
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def duration(seconds: float | None) -> str:
    """'45s', '12m04s', '3h07m' for a table cell; '' for None so a cell stays empty rather than lying."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
