"""File locks that die with their process: one owner for a run, a folder, a piece of shared work.

``flock`` locks are released by the kernel when the holder exits, however it exits (SIGKILL included), so a
lock can never be left behind by a crash; they hold between processes of one machine (not over NFS)::

    with file_lock(folder / ".lock", what="pre-inference in this folder"):   # a second holder fails at once
        ...
    with file_lock(path, wait=True, on_wait=print):                          # or waits its turn
        ...
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tcf.errors import TcfError


class Locked(TcfError):
    """Another live process holds the lock."""


@contextmanager
def file_lock(path: str | Path, *, what: str = "this", wait: bool = False,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block. Without ``wait`` a held lock
    raises :class:`Locked` naming ``what``; with it the caller blocks (``on_wait`` is called once first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Locked(f"{path.parent}: another process is running {what}") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
