"""Rich rendering of training and pre-inference progress on stderr (stdout stays clean for tables and JSON)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tcf.util.progress import Reporter, stage_label
from tcf.util.text import printable


class RichReporter(Reporter):
    def __init__(self, run_name: str, console: Console):
        self.run_name = run_name
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self) -> RichReporter:
        return self  # the display starts with the first stage: an error before it prints one line, no bar

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def stage(self, name: str, total: int | None = None, epoch: int | None = None) -> None:
        desc = f"{escape(printable(self.run_name))}: {stage_label(name, epoch)}"
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(desc, total=total)
        else:
            self.progress.reset(self.task, total=total, description=desc)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def epoch_end(self, epoch: int, loss: float, seconds: float, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items() if k.endswith("@10"))
        name = escape(printable(self.run_name))
        self.console.print(f"[dim]{name}[/] epoch {epoch:3d}  loss {loss:.4f}  {seconds:5.2f}s  {shown}")


class InferProgress(Reporter):
    """One rich progress bar per block range: items done / total and items/s."""

    def __init__(self, console: Console):
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
        self.task = None

    def __enter__(self) -> InferProgress:
        self.bars.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # an error: keep the finished ranges, drop the one it cut short
            for task in self.bars.tasks:
                if not task.finished:
                    self.bars.remove_task(task.id)
        self.bars.stop()

    def range_start(self, i: int, start: int, stop: int, n_items: int) -> None:
        self.task = self.bars.add_task(f"range {i}: blocks {start}:{stop}", total=n_items, rate="")

    def progress(self, items_done: int, n_items: int, items_per_s: float) -> None:
        if self.task is not None:
            self.bars.update(self.task, completed=items_done, rate=f"{items_per_s:,.0f} items/s")

    def range_end(self, i: int, seconds: float) -> None:
        if self.task is not None:
            self.bars.update(self.task, completed=self.bars.tasks[-1].total)
