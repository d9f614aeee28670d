"""The `/` filter line of a table screen: hidden until asked for, back to the table on Enter or Escape."""

from __future__ import annotations

from textual.widgets import DataTable, Input


class FilterBox(Input):
    """An Input that shows itself on :meth:`open` and hides on :meth:`close` (cleared) or on Enter when
    empty; the screen reacts to ``Input.Changed`` to filter its rows."""

    def on_mount(self) -> None:
        self.display = False

    def open(self) -> None:
        self.display = True
        self.focus()

    def close(self) -> None:
        self.value, self.display = "", False
        self.screen.query_one(DataTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.display = bool(event.value)
        self.screen.query_one(DataTable).focus()
