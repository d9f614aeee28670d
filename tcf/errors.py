"""User-facing errors: the CLI prints ``error: <message>`` and exits 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class TcfError(Exception):
    """Base of every error caused by the user's input rather than by a bug in tcf."""


class DataError(TcfError):
    """Bad dataset content, located as ``file:line: message`` (line omitted when not applicable)."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(TcfError):
    """Bad experiment config, located as ``file: key: message``."""

    def __init__(self, source: str | Path | None, key: str | None, message: str):
        self.source = str(source) if source is not None else None
        self.key = key
        self.message = message
        parts = [p for p in (self.source, key) if p]
        super().__init__(": ".join([*parts, message]))
