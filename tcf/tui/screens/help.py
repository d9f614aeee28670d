"""The help screen (``?``): every key of every screen, read from the bindings so it cannot go stale."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Keys that belong to Textual widgets rather than to a tcf binding, but that people need to know.
WIDGET_KEYS = (
    ("Queue", "↑ ↓ PgUp PgDn", "select a job (the Live screen follows it)"),
    ("Queue filter", "enter / escape", "keep the filter / clear it"),
    ("Dialogs", "tab / enter / escape", "next field / confirm / cancel"),
)


def binding_rows(where: str, bindings: list[BindingType],
                 key_display: Callable[[Binding], str]) -> list[tuple[str, str, str]]:
    """(where, key, what it does) for every described binding; the tooltip is the longer explanation."""
    return [(where, key_display(b), b.tooltip or b.description)
            for b in bindings if isinstance(b, Binding) and b.description]


class HelpScreen(ModalScreen[None]):
    """Lists the keys of the app and of every screen; any of escape, q or ? closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]

    def __init__(self, sections: list[tuple[str, list[BindingType]]]) -> None:
        super().__init__()
        self.sections = sections

    def keys(self) -> list[tuple[str, str, str]]:
        rows = []
        for where, bindings in self.sections:
            rows += binding_rows(where, bindings, self.app.get_key_display)
        return rows + list(WIDGET_KEYS)

    def compose(self) -> ComposeResult:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("where", style="dim")
        table.add_column("key", style="bold cyan")
        table.add_column("does")
        for row in self.keys():
            table.add_row(*row)
        with VerticalScroll(classes="dialog", id="help"):
            yield Static("[b]tcf-tui keys[/b]   (escape closes)")
            yield Static(table, id="keys")
