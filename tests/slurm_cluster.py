"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd on this machine, with a config,
state, spool, sockets and logs of their own in a temporary folder (Debian's ``slurm-wlm`` and ``munge``).

It runs as root (slurmd must), on free ports, with ``proctrack/linuxproc`` and ``task/none`` (no cgroups, so it
works in a container). Without accounting storage ``sacct`` has nothing to say, so finished jobs stay in
slurmctld's memory for an hour (``MinJobAge``), where ``squeue`` and ``scontrol`` read their end.
The daemons are started with ``subprocess.Popen`` and stopped by PID; nothing else on the machine is touched::

    with SlurmCluster(tmp_path) as cluster:
        env = cluster.env        # SLURM_CONF for sbatch, squeue, scancel ...
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun")


def missing() -> str | None:
    """Why no cluster can start here (None: it can)."""
    absent = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if absent:
        return (f"Slurm is not installed ({', '.join(absent)} missing): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "the test Slurm cluster needs root (slurmd runs jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root`` (a folder), stopped by PID on exit."""

    def __init__(self, root: Path, cpus: int = 4):
        self.root = Path(root)
        self.cpus = cpus
        self.node = socket.gethostname()
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's clients at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write(self) -> None:
        r = self.root
        for d in ("state", "spool", "munge", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        self.munge_socket = r / "munge" / "munge.socket"
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf = r / "slurm.conf"
        self.conf.write_text("\n".join([
            "ClusterName=tcftest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=3600",
            "KillWait=5",
            "SlurmdParameters=config_overrides",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60) -> SlurmCluster:
        self._write()
        r = self.root
        env = self.env
        self._spawn([_binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={r / 'munge' / 'munge.key'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                     f"--seed-file={r / 'munge' / 'munged.seed'}", f"--log-file={r / 'log' / 'munged.log'}"], env)
        self._wait(self.munge_socket.exists, timeout, "munged's socket")
        self._spawn([_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._wait(lambda: self._ok(["scontrol", "ping"]) and "UP" in self._out(["scontrol", "ping"]), timeout,
                   "slurmctld")
        self._spawn([_binary("slurmd"), "-D", "-f", str(self.conf)], env)
        self._wait(lambda: self._out(["sinfo", "-h", "-o", "%T"]).strip() in ("idle", "mixed", "allocated"),
                   timeout, "slurmd (node idle)")
        return self

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / "log" / f"{Path(argv[0]).name}.out", "ab")  # noqa: SIM115 - lives with the daemon
        self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))

    def _ok(self, argv: list[str]) -> bool:
        return subprocess.run(argv, env=self.env, capture_output=True, timeout=30).returncode == 0

    def _out(self, argv: list[str]) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30).stdout

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) while waiting for {what}; logs in "
                                       f"{self.root / 'log'}: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs in {self.root / 'log'}: {self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name}\n{text[-3000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel what still runs, SIGTERM each daemon by PID (slurmd and slurmctld first, SIGKILL any that
        lingers), then any step daemon of this cluster's jobs that outlived them (it waits for its slurmd)."""
        if self.procs and all(p.poll() is None for p in self.procs):
            subprocess.run(["scancel", "--full", "--me"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            busy = ("RUNNING", "COMPLETING", "CONFIGURING")
            while time.monotonic() < deadline and set(self._out(["squeue", "-h", "-o", "%T"]).split()) & set(busy):
                time.sleep(0.2)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        for pid in self._step_daemons():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _step_daemons(self) -> list[int]:
        """slurmstepd processes started for this cluster (their environment names its slurm.conf)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "comm").read_text().strip() == "slurmstepd" and mine in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
