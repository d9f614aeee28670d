"""Is a recorded process still the one we started? PIDs are reused, so a PID alone cannot tell.

A process is identified by (pid, start time in clock ticks since boot, from ``/proc/<pid>/stat``);
a zombie (exited, not yet reaped) counts as gone.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return socket.gethostname()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces or parentheses
    return raw[raw.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def is_alive(pid: int | None, started: int | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``started`` (None: not checked)."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        if not os.path.isdir("/proc"):  # no procfs: fall back to signal 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    if fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started
