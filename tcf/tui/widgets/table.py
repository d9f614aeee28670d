"""A DataTable whose rows are redrawn once its columns have been measured.

Textual's DataTable measures new rows when it next idles and keys its rendered rows on a change
counter that measuring does not bump. A repaint between ``add_row`` and that idle (a busy event loop,
a dialog pushed on top) caches rows cut to the header widths, and they stay cut until a cell changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.widgets import DataTable
from textual.widgets.data_table import RowKey


class Table(DataTable):
    """DataTable that invalidates its rendered rows after measuring new ones."""

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        super()._update_dimensions(new_rows)
        self._update_count += 1  # the key of every render cache: rows drawn before measuring are redrawn
        self.refresh()
