"""Hold SIGINT/SIGTERM over a short critical section and act on them once it is done.

A checkpoint write cut by the KeyboardInterrupt that tcf's SIGTERM handler raises fails inside torch's zip
writer with a RuntimeError instead: the run was recorded as failed, with a traceback, not as interrupted.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM recorded, not handled; then handle the first one that came as its
    handler would have (a Python handler is called, SIG_DFL is re-raised, SIG_IGN ignores it).
    Outside the main thread, where no handler can be set, the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if came:
            handler = previous[came[0]]
            if callable(handler):
                handler(came[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(came[0])
