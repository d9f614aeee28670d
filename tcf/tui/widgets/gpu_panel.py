"""Memory and utilisation per GPU with a sparkline history, and the selected job's own peak memory.

The app samples the provider (NVML) in a worker and keeps one :class:`GpuHistory`; every panel draws
from it, so switching screens neither loses the history nor samples twice. Without NVML the panel
says why (``provider.reason``) and shows this machine's CPU and memory use instead, which is what a CPU
job runs on.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Sparkline, Static

from tcf.util.gpu import GpuInfo
from tcf.util.host import HostInfo
from tcf.util.units import format_bytes

GiB = 1 << 30
HISTORY = 120  # samples kept per GPU (two minutes at the default refresh)


class GpuHistory:
    """The latest sample of every GPU and a bounded history of memory and utilisation (percent)."""

    def __init__(self, size: int = HISTORY):
        self.size = size
        self.latest: list[GpuInfo] = []
        self.reason: str | None = None
        self.mem: dict[int, deque[float]] = {}
        self.util: dict[int, deque[float]] = {}
        self.host: HostInfo | None = None
        self.cpu: deque[float] = deque(maxlen=size)  # host CPU and memory use, percent
        self.ram: deque[float] = deque(maxlen=size)

    def add(self, gpus: list[GpuInfo], reason: str | None = None, host: HostInfo | None = None) -> None:
        self.latest, self.reason, self.host = list(gpus), reason, host
        if host is not None:
            if host.cpu_percent is not None:
                self.cpu.append(host.cpu_percent)
            if host.mem_total_bytes:
                self.ram.append(100.0 * (host.mem_used_bytes or 0) / host.mem_total_bytes)
        for g in gpus:
            self.mem.setdefault(g.index, deque(maxlen=self.size)).append(
                100.0 * g.used_bytes / g.total_bytes if g.total_bytes else 0.0)
            self.util.setdefault(g.index, deque(maxlen=self.size)).append(float(g.util_percent or 0))


def _devices(devices: str | None) -> set[int]:
    """'0,1' -> {0, 1}; 'cpu' or None -> set()."""
    return {int(d) for d in (devices or "").split(",") if d.strip().isdigit()}


class _SparkRows(Vertical):
    """A title line, then two value lines with their sparklines, drawn from a sample that may come before the
    widget is mounted (a row added with the sample that needs it)."""

    DEFAULT_CSS = """
    _SparkRows { height: auto; margin-bottom: 1; }
    _SparkRows Horizontal { height: 1; }
    _SparkRows .gpu-value { width: 26; }
    _SparkRows Sparkline { width: 1fr; height: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._sample: tuple | None = None
        self._ready = False

    def on_mount(self) -> None:
        self._ready = True
        if self._sample is not None:
            self._draw(*self._sample)

    def _show(self, *sample: object) -> None:
        """Draw now, or once mounted."""
        self._sample = sample
        if self._ready:
            self._draw(*sample)

    def _draw(self, *sample: object) -> None:
        raise NotImplementedError


class GpuRow(_SparkRows):
    """One GPU: a title line, then memory and utilisation, each with its sparkline."""

    def compose(self) -> ComposeResult:
        yield Static(classes="gpu-title")
        with Horizontal():
            yield Static(classes="gpu-value gpu-mem")
            yield Sparkline([], classes="spark-mem")
        with Horizontal():
            yield Static(classes="gpu-value gpu-util")
            yield Sparkline([], classes="spark-util")

    def show(self, gpu: GpuInfo, history: GpuHistory, mine: bool) -> None:
        self._show(gpu, history, mine)

    def _draw(self, gpu: GpuInfo, history: GpuHistory, mine: bool) -> None:
        pct = 100 * gpu.used_bytes / gpu.total_bytes if gpu.total_bytes else 0.0
        title = Text.assemble((f"GPU {gpu.index}", "bold"), f" {gpu.name}  ", (" job " if mine else "", "reverse"))
        self.query_one(".gpu-title", Static).update(title)
        self.query_one(".gpu-mem", Static).update(
            f"mem  {gpu.used_bytes / GiB:.1f}/{gpu.total_bytes / GiB:.1f} GiB {pct:3.0f}%")
        util = "n/a" if gpu.util_percent is None else f"{gpu.util_percent}%"
        self.query_one(".gpu-util", Static).update(f"util {util}")
        # one sample is no history yet (Sparkline would draw it as a full bar)
        for name, series in (("mem", history.mem), ("util", history.util)):
            data = list(series.get(gpu.index, ()))
            self.query_one(f".spark-{name}", Sparkline).data = data if len(data) > 1 else []


class HostRow(_SparkRows):
    """This machine's CPU and memory use with sparklines: the panel's content where there is no GPU."""

    def show(self, history: GpuHistory) -> None:
        self._show(history)

    def compose(self) -> ComposeResult:
        yield Static(Text("this machine", style="bold"), classes="gpu-title")
        with Horizontal():
            yield Static(classes="gpu-value host-cpu")
            yield Sparkline([], classes="spark-cpu")
        with Horizontal():
            yield Static(classes="gpu-value host-ram")
            yield Sparkline([], classes="spark-ram")

    def _draw(self, history: GpuHistory) -> None:
        host = history.host
        if host is None:
            return
        cpu = "n/a" if host.cpu_percent is None else f"{host.cpu_percent:3.0f}%"
        self.query_one(".host-cpu", Static).update(f"CPU  {cpu} of {host.cores} cores")
        if host.mem_total_bytes:
            used = host.mem_used_bytes or 0
            ram = f"{used / GiB:.1f}/{host.mem_total_bytes / GiB:.1f} GiB {100 * used / host.mem_total_bytes:3.0f}%"
        else:
            ram = "n/a"
        self.query_one(".host-ram", Static).update(f"RAM  {ram}")
        for name, series in (("cpu", history.cpu), ("ram", history.ram)):
            self.query_one(f".spark-{name}", Sparkline).data = list(series) if len(series) > 1 else []


class GpuPanel(VerticalScroll):
    """All GPUs the provider sees; the job's devices are marked and its own peak memory is on top."""

    DEFAULT_CSS = "GpuPanel #gpu-peak, GpuPanel #gpu-reason { margin-bottom: 1; }"

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "GPUs"
        self.job_peak: int | None = None
        self.job_devices: set[int] = set()

    def compose(self) -> ComposeResult:
        yield Static(id="gpu-peak")
        yield Static(id="gpu-reason")

    def set_job(self, peak_bytes: int | None, devices: str | None) -> None:
        self.job_peak, self.job_devices = peak_bytes, _devices(devices)

    def show(self, history: GpuHistory) -> None:
        peak = "—" if self.job_peak is None else format_bytes(self.job_peak)
        self.query_one("#gpu-peak", Static).update(Text.assemble("job peak memory: ", (peak, "bold")))
        reason = self.query_one("#gpu-reason", Static)
        reason.update(Text(history.reason or "", style="yellow"))
        reason.display = bool(history.reason)
        rows = list(self.query(GpuRow))
        for extra in rows[len(history.latest):]:
            extra.remove()
        if len(rows) < len(history.latest):
            new = [GpuRow() for _ in history.latest[len(rows):]]
            self.mount_all(new)
            rows += new
        for row, gpu in zip(rows[:len(history.latest)], history.latest, strict=True):
            row.show(gpu, history, gpu.index in self.job_devices)
        self._show_host(history)

    def _show_host(self, history: GpuHistory) -> None:
        """No GPU: the CPU and memory that a CPU job runs on, rather than an empty box."""
        hosts = list(self.query(HostRow))
        if history.latest or history.host is None:
            for row in hosts:
                row.remove()
            self.border_title = "GPUs"
            return
        self.border_title = "CPU and memory (no GPU)"
        if not hosts:
            hosts = [HostRow()]
            self.mount(hosts[0])
        hosts[0].show(history)
