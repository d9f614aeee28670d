"""Textual's Footer, rebuilt only when the keys it shows change.

The stock Footer recomposes (a dozen new widgets, each styled) whenever a screen becomes current, which
was the largest part of switching screens; the keys of a screen rarely change, so most rebuilds are waste.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    def __init__(self) -> None:
        super().__init__()
        self._shown: tuple[tuple[str, str, bool], ...] | None = None

    def bindings_changed(self, screen: Screen) -> None:
        keys = tuple((b.key, b.description, enabled) for _, b, enabled, _ in screen.active_bindings.values()
                     if b.show)
        if keys == self._shown and self._bindings_ready:
            return
        self._shown = keys
        super().bindings_changed(screen)
