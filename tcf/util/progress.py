"""The one progress interface: what a training run and a pre-inference tell whoever watches them.

The trainer calls ``stage`` / ``advance`` / ``epoch_end``; the pre-inference runner ``range_start`` /
``progress`` / ``range_end``. Watchers subclass :class:`Reporter` and override what they show: the
store's event writer (:mod:`tcf.store.events`), the CLI's rich bars, a job's log lines. :class:`Tee`
sends every call to several of them::

    reporter = Tee(EventWriter(store, "run:7", run_id=7), RichReporter("mind-sasrec", console))
    reporter.stage("epoch", total=120, epoch=3)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def stage_label(name: str, epoch: int | None = None) -> str:
    """How a stage reads to a person: 'epoch 3', 'evaluate test', 'pre-inference'."""
    return f"{name} {epoch}" if epoch is not None else name


class Reporter:
    """Progress hooks; every method is a no-op here, so a watcher overrides only what it shows."""

    def stage(self, name: str, total: int | None = None, epoch: int | None = None) -> None:
        """A training stage begins ('pre-inference', 'epoch' with its number, 'evaluate valid', ...);
        ``total`` steps when known."""

    def advance(self, n: int = 1) -> None:
        """``n`` more steps of the current stage are done."""

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        """Epoch ``epoch`` ended with this mean training loss, wall time and validation metrics."""

    def range_start(self, i: int, start: int, stop: int, n_items: int) -> None:
        """Pre-inference range ``i`` (blocks [start, stop)) begins; it will process ``n_items`` items."""

    def progress(self, items_done: int, n_items: int, items_per_s: float) -> None:
        """Items done within the current range: at most every ``progress_every`` seconds, and at its end."""

    def range_end(self, i: int, seconds: float) -> None:
        """Range ``i`` is committed; ``seconds`` of wall time, loading included."""


class Tee(Reporter):
    """Every call goes to each of ``reporters`` in turn (None entries are skipped)."""

    def __init__(self, *reporters: Reporter | None):
        self.reporters = [r for r in reporters if r is not None]

    def stage(self, name: str, total: int | None = None, epoch: int | None = None) -> None:
        for r in self.reporters:
            r.stage(name, total, epoch)

    def advance(self, n: int = 1) -> None:
        for r in self.reporters:
            r.advance(n)

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        for r in self.reporters:
            r.epoch_end(epoch, loss, seconds, metrics)

    def range_start(self, i: int, start: int, stop: int, n_items: int) -> None:
        for r in self.reporters:
            r.range_start(i, start, stop, n_items)

    def progress(self, items_done: int, n_items: int, items_per_s: float) -> None:
        for r in self.reporters:
            r.progress(items_done, n_items, items_per_s)

    def range_end(self, i: int, seconds: float) -> None:
        for r in self.reporters:
            r.range_end(i, seconds)


class RateLimited:
    """Calls ``fn`` at most once per ``interval`` seconds (the last call of a burst may be dropped, unless
    it passes ``force=True``): progress every step would cost a database write per step."""

    def __init__(self, fn: Callable[..., Any], interval: float = 1.0):
        self.fn, self.interval, self.last = fn, interval, 0.0

    def __call__(self, *args: Any, force: bool = False, **kwargs: Any) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            self.fn(*args, **kwargs)
