"""Short human formats for table cells: durations and byte counts."""

from __future__ import annotations

from tcf.preinfer.planner import format_bytes

__all__ = ["duration", "format_bytes"]


def duration(seconds: float | None) -> str:
    """'45s', '12m04s', '3h07m'; '' for None so a cell stays empty rather than lying."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
