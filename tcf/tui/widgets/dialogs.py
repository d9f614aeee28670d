"""Modal dialogs of the Queue screen: one line of text (tags, note), a yes/no question, adding jobs from a config."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class PromptDialog(ModalScreen[str | None]):
    """Ask for one value, prefilled with the current one; Enter keeps it, Escape gives None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.value, self.placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, id="value")
            yield Label("enter: save   escape: cancel", classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question for an action that cannot be undone (stopping a running job): y or Enter confirm,
    n or Escape do nothing."""

    BINDINGS = [Binding("y,enter", "dismiss(True)", "Yes"), Binding("n,escape", "dismiss(False)", "No")]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title")
            if self.detail:
                yield Label(self.detail)
            yield Label("y / enter: yes   n / escape: no", classes="dialog-help")


@dataclass(frozen=True)
class AddRequest:
    """What the add dialog asks for; ``path`` None queues the embedded demo (as `tcf run` without a config)."""

    path: str | None
    tags: list[str]
    note: str


def split_tags(text: str) -> list[str]:
    """'a, b c' -> ['a', 'b', 'c']: people type either separator."""
    return [t for t in text.replace(",", " ").split() if t]


class AddJobDialog(ModalScreen[AddRequest | None]):
    """Config path, optional tags and note; Enter in any field queues, Escape cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Queue the jobs of a config", classes="dialog-title")
            yield Input(placeholder="config file (empty: the embedded demo)", id="path")
            yield Input(placeholder="tags (optional, e.g. scaling opt)", id="tags")
            yield Input(placeholder="note (optional)", id="note")
            yield Label("enter: queue   tab: next field   escape: cancel", classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = self.query_one("#path", Input).value.strip()
        self.dismiss(AddRequest(path or None, split_tags(self.query_one("#tags", Input).value),
                                self.query_one("#note", Input).value.strip()))
