"""The Slurm backend of the queue: queued jobs become Slurm batch jobs; Slurm's view of them comes back.

``submit`` writes each job's folder on the shared filesystem (``artifacts/jobs/job-<id>/`` beside
experiments.db: ``job.json``, ``job.sbatch``, later its records and Slurm log) and hands the script to
``sbatch --parsable`` as an argv list, pre-inference first, a training job with ``--dependency=afterok:<id>`` of
the pre-inference it needs. A training job's run is recorded before it leaves (it cannot create one where it
runs). ``sync`` asks ``squeue`` (``sacct`` for jobs squeue has forgotten) how each job stands, merges the
records the jobs wrote (tcf.jobs.records), and maps Slurm's states onto tcf's (:func:`tcf_state`). ``cancel``
is ``scancel``; a retry resubmits, and the job resumes from its checkpoint or last committed block range::

    jobs = submit(store, SlurmOptions(partition="gpu", time="04:00:00", gres="gpu:1"))
    sync(store)                          # what `tcf queue sync`, `tcf queue ls`, `tcf results` and the TUI do
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tcf.errors import TcfError
from tcf.jobs import queue as q
from tcf.jobs.records import merge, write_spec
from tcf.store.db import Store
from tcf.util.atomic import write_atomic
from tcf.util.units import format_bytes

RDZV_PORT, RDZV_PORTS = 20000, 20000  # torchrun's rendezvous port: 20000 + the Slurm job id mod 20000
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_NAME = re.compile(r"^[A-Za-z0-9_.,:+=@-]+$")  # partitions, accounts, GRES: no spaces, quotes or shell syntax
_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[A-Za-z0-9_.-]+)?:(\d+)(?:,|$)")
PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")
RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED")


@dataclass(frozen=True)
class SlurmOptions:
    """What ``tcf queue submit`` asks of every job (None: the cluster's default)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gres: str | None = None  # per node, e.g. gpu:4 or gpu:a100:4

    def check(self) -> SlurmOptions:
        """One line naming the flag for a value sbatch would refuse (or a shell could misread)."""
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--gres", self.gres)):
            if value is not None and not _NAME.match(value):
                raise TcfError(f"{flag}: {value!r} is not a Slurm name (letters, digits and _.,:+=@- only)")
        if self.time is not None and not _TIME.match(self.time):
            raise TcfError(f"--time: {self.time!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
        if self.gres is not None and _GPU_GRES.search(self.gres) is None:
            raise TcfError(f"--gres: {self.gres!r} names no GPUs (e.g. gpu:1 or gpu:a100:4)")
        return self

    @property
    def gpus_per_node(self) -> int | None:
        m = _GPU_GRES.search(self.gres or "")
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Submission:
    """One job as it goes to Slurm: its batch script, where it is written, and the sbatch argv."""

    job: q.Job
    attempt: int
    folder: Path
    script: str
    argv: list[str]  # the script's path last

    @property
    def script_path(self) -> Path:
        return self.folder / "job.sbatch"


def job_folder(db: Path, job_id: int) -> Path:
    """A job's folder on the shared filesystem, beside the artifacts it reads and writes."""
    return Path(db).resolve().parent / "artifacts" / "jobs" / f"job-{job_id}"


def _layout(job: q.Job, opts: SlurmOptions) -> tuple[int, int]:
    """(nodes, ranks per node): a job of N GPUs fills nodes of ``--gres gpu:G`` (N/G of them, G ranks each);
    without GPUs (CPU ranks through gloo) one node runs all its ranks."""
    per_node = opts.gpus_per_node
    if per_node is None or job.gpus <= per_node:
        return 1, job.gpus
    if job.gpus % per_node:
        raise TcfError(f"job {job.id} asks for {job.gpus} GPUs, not a multiple of --gres {opts.gres} per node")
    return job.gpus // per_node, per_node


def batch_script(job: q.Job, db: Path, opts: SlurmOptions, attempt: int, python: str = sys.executable) -> str:
    """The batch script of ``job``: #SBATCH lines for its resources, then the job process (``srun torchrun``
    across its nodes, the rendezvous at the first node of the allocation, when it has several ranks)."""
    folder = job_folder(db, job.id)
    nodes, ranks = _layout(job, opts)
    need = job.mem_bytes
    need_tag = format_bytes(need).replace(" ", "") if need else "unstated"  # squeue -o %k shows it
    need_text = (f"GPU memory: {format_bytes(need)} free per GPU (the planner's need)" if need
                 else "GPU memory: no need stated")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=tcf-{job.id}-{re.sub(r'[^A-Za-z0-9_.-]', '_', job.name)[:60]}",
             f"#SBATCH --output={folder}/slurm-%j.log",
             "#SBATCH --open-mode=append",
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={ranks}"]
    lines += [f"#SBATCH --{flag}={value}" for flag, value in
              (("partition", opts.partition), ("account", opts.account), ("time", opts.time)) if value]
    if opts.gres:
        lines.append(f"#SBATCH --gres={opts.gres}")
    lines += ["#SBATCH --requeue",  # a node failure or preemption puts it back; it resumes from its checkpoint
              f"#SBATCH --comment=tcf-job-{job.id}:gpu-mem={need_tag}",
              f"# tcf job {job.id} ({job.kind} {job.name}), attempt {attempt}: {job.gpus} rank(s) on {nodes} "
              f"node(s). {need_text}.",
              "# It never opens experiments.db: it reads job.json and appends records-<attempt>.jsonl in "
              f"{folder}.",
              f"export TCF_JOB_ID={job.id} PYTHONUNBUFFERED=1"]
    target = ["-m", "tcf.jobs.job_main", "--db", str(Path(db).resolve()), "--job-dir", str(folder), str(job.id)]
    if job.gpus == 1:
        lines.append("exec " + shlex.join([python, *target]))
    else:
        lines += ['head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  f"rdzv_port=$(({RDZV_PORT} + SLURM_JOB_ID % {RDZV_PORTS}))  # two jobs on one node never share one",
                  "exec " + shlex.join(["srun", "--kill-on-bad-exit=1", python, "-m", "torch.distributed.run",
                                        f"--nproc_per_node={ranks}"])
                  + ' --nnodes="$SLURM_JOB_NUM_NODES" --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d '
                  '--rdzv_endpoint="$head_node:$rdzv_port" ' + shlex.join(target)]
    return "\n".join(lines) + "\n"


def _order(store: Store, jobs: list[q.Job]) -> list[q.Job]:
    """Dependencies first (pre-inference before training), else queue order."""
    ids = {j.id for j in jobs}
    done: list[q.Job] = []
    left = list(jobs)
    while left:
        ready = [j for j in left if not (set(j.deps) & ids - {d.id for d in done})]
        if not ready:
            raise TcfError(f"jobs {', '.join(str(j.id) for j in left)} depend on each other in a cycle")
        done += ready
        left = [j for j in left if j not in ready]
    return done


def plan(store: Store, opts: SlurmOptions, job_ids: Sequence[int] | None = None) -> tuple[list[Submission], list[str]]:
    """The submissions ``submit`` would make (queued jobs not on Slurm yet, or ``job_ids``), and why others wait.

    A dependency on a job of this batch is written ``afterok:<job N>`` until N has its Slurm id."""
    db = store.path
    queued = [j for j in q.list_jobs(store, ("queued", "blocked")) if not j.slurm_id
              and (job_ids is None or j.id in job_ids)]
    chosen = {j.id for j in queued}
    out: list[Submission] = []
    skipped: list[str] = []
    for job in _order(store, queued):
        deps = [q.get_job(store, d) for d in job.deps]
        bad = [d for d in deps if d.id not in chosen and (d.state in q.ENDED_BADLY or (d.state != "finished"
                                                                                        and not d.slurm_id))]
        if bad or any(d.id in chosen and d.id not in {s.job.id for s in out} for d in deps):
            why = ", ".join(f"job {d.id} is {d.display}{'' if d.slurm_id else ' (not on Slurm)'}" for d in bad)
            skipped.append(f"job {job.id} not submitted: {why or 'a job it needs was not submitted'}")
            chosen.discard(job.id)
            continue
        after = [f"<job {d.id}>" if d.id in chosen else str(d.slurm_id) for d in deps if d.state != "finished"]
        attempt = job.attempts + 1
        folder = job_folder(db, job.id)
        argv = ["sbatch", "--parsable", *([f"--dependency=afterok:{':'.join(after)}"] if after else []),
                str(folder / "job.sbatch")]
        out.append(Submission(job, attempt, folder, batch_script(job, db, opts, attempt), argv))
    return out, skipped


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise TcfError(f"{argv[0]}: not found; {what} needs Slurm's commands on this machine (a login node)") from None
    except subprocess.TimeoutExpired:
        raise TcfError(f"{argv[0]}: no answer from Slurm within 60 s") from None


def submit(store: Store, opts: SlurmOptions, job_ids: Sequence[int] | None = None, *,
           say: Callable[[str], None] = print) -> list[Submission]:
    """Hand queued jobs to Slurm; returns what was submitted (each job's Slurm id is recorded with it)."""
    from tcf.config import Config
    from tcf.experiment import reserve_run

    subs, skipped = plan(store, opts.check(), job_ids)
    for line in skipped:
        say(line)
    slurm_of: dict[str, str] = {}
    done = []
    for sub in subs:
        job = sub.job
        if job.kind == "train" and job.run_id is None:
            q.set_run(store, job.id, reserve_run(store, Config.model_validate(job.config)))
            job = q.get_job(store, job.id)
        run = store.get_run(job.run_id) if job.run_id is not None else None
        write_spec(sub.folder, job, sub.attempt, run)
        write_atomic(sub.script_path, sub.script)
        argv = [re.sub(r"<job \d+>", lambda m: slurm_of[m.group(0)], a) for a in sub.argv]
        r = _run(argv, "tcf queue submit")
        slurm_id = r.stdout.strip().split(";")[0]
        if r.returncode != 0 or not slurm_id.isdigit():
            raise TcfError(f"sbatch refused job {job.id}: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")
        try:
            q.submitted(store, job.id, slurm_id=slurm_id, options=asdict(opts), job_dir=str(sub.folder),
                        log_path=str(sub.folder / f"slurm-{slurm_id}.log"), attempt=sub.attempt)
        except BaseException:
            _run(["scancel", slurm_id], "tcf queue submit")  # never a Slurm job that tcf does not know
            raise
        slurm_of[f"<job {job.id}>"] = slurm_id
        say(f"job {job.id} ({job.kind} {job.name}): Slurm job {slurm_id}"
            + (f" after {argv[2].split('=', 1)[1]}" if argv[2].startswith("--dependency=") else ""))
        done.append(sub)
    return done


# -- Slurm's view ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmState:
    state: str  # the base state: RUNNING, CANCELLED (never "CANCELLED by 0")
    reason: str
    exit: str  # "exit code 2", "signal 9", ""


def _wait_status(raw: str) -> str:
    """squeue's exit_code is a wait status (33280: exit 130; 9: signal 9); sacct's ExitCode is 'code:signal'."""
    if ":" in raw:
        code, sig = raw.split(":", 1)
        return f"signal {sig}" if sig not in ("", "0") else (f"exit code {code}" if code not in ("", "0") else "")
    if not raw.isdigit():
        return ""
    status = int(raw)
    return f"signal {status & 0x7F}" if status & 0x7F else (f"exit code {status >> 8}" if status >> 8 else "")


def slurm_states(slurm_ids: Sequence[str]) -> dict[str, SlurmState]:
    """How Slurm sees each job: ``squeue`` for the jobs in slurmctld's memory, ``sacct`` for those it has
    dropped (after MinJobAge); a job neither knows is absent."""
    if not slurm_ids:
        return {}
    wanted = set(slurm_ids)
    out: dict[str, SlurmState] = {}
    r = _run(["squeue", "--me", "--noheader", "--states=all", "--Format=JobID:|,State:|,exit_code:|,Reason:"],
             "tcf queue sync")
    if r.returncode != 0:
        raise TcfError(f"squeue failed: {(r.stderr or r.stdout).strip()}")
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 4 and parts[0] in wanted:
            out[parts[0]] = SlurmState(parts[1].split()[0], parts[3], _wait_status(parts[2]))
    missing = sorted(wanted - out.keys(), key=int)
    if missing:
        r = _run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(missing)}",
                  "--format=JobIDRaw,State,ExitCode,Reason"], "tcf queue sync")
        for line in r.stdout.splitlines() if r.returncode == 0 else []:
            parts = line.split("|")
            if len(parts) == 4 and parts[0] in wanted:
                out[parts[0]] = SlurmState(parts[1].split()[0], parts[3], _wait_status(parts[2]))
    return out


def tcf_state(slurm: SlurmState | None, current: str, error: str | None,
              slurm_id: str) -> tuple[str, str | None] | None:
    """The tcf state and error that Slurm's view means for a job whose state (from its records) is ``current``;
    None: keep it. Slurm decides whether a job waits, runs or ended; the job's records say how it ended
    where Slurm cannot (its error message)."""
    if slurm is None:
        return None if current in q.TERMINAL else ("lost", f"lost: Slurm no longer knows job {slurm_id}")
    s, how = slurm.state, f"Slurm {slurm.state}" + (f", {slurm.exit}" if slurm.exit else "")
    if s in PENDING:
        return ("queued", None)  # waiting, or requeued (preemption, node failure): it resumes when it starts
    if s in RUNNING:  # a job that recorded finishing or failing is exiting; one that recorded the SIGTERM of a
        # requeue ("cancelled": Slurm would say CANCELLED after a scancel) runs again before its new start is merged
        return ("running", None) if current in ("queued", "cancelled") else None
    if s == "COMPLETED":
        return ("finished", None)
    if s == "CANCELLED":
        if current == "finished":
            return None  # cancelled while it exited: its work is recorded
        return ("cancelled", error if current == "cancelled" and error else f"cancelled in Slurm ({how})")
    if s == "FAILED" and current == "failed":
        return None  # it recorded why
    reasons = {"FAILED": ("lost", f"lost: its process ended without recording its end ({how})"),
               "OUT_OF_MEMORY": ("failed", f"out of memory ({how})"),
               "TIMEOUT": ("failed", f"reached its time limit ({how}); tcf queue retry resumes it"),
               "DEADLINE": ("failed", f"reached its deadline ({how})"),
               "NODE_FAIL": ("lost", f"lost: its node failed ({how}); tcf queue retry resumes it"),
               "BOOT_FAIL": ("lost", f"lost: its node failed to boot ({how})"),
               "PREEMPTED": ("lost", f"lost: preempted and not requeued ({how}); tcf queue retry resumes it")}
    return reasons.get(s, ("failed", f"ended in Slurm state {how}"))


def sync(store: Store) -> list[str]:
    """Bring experiments.db up to date with the Slurm jobs: Slurm's states first, then the jobs' records (a job
    Slurm saw end has written all of its records by then), then the states they mean. Returns what changed."""
    jobs = q.slurm_jobs(store)
    if not jobs:
        return []
    states = slurm_states([j.slurm_id for j in jobs if j.slurm_id])
    said = []
    for job in jobs:
        try:
            n = merge(store, job)
        except TcfError as e:
            said.append(f"job {job.id}: {e}")
            continue
        job = q.get_job(store, job.id)
        seen = states.get(job.slurm_id or "")
        change = tcf_state(seen, job.state, job.error, job.slurm_id or "")
        if q.set_slurm_state(store, job.id, job.attempts, seen.state if seen else "UNKNOWN", change):
            said.append(f"job {job.id}: {change[0]}" + (f" ({change[1]})" if change and change[1] else ""))
        elif n:
            said.append(f"job {job.id}: {n} record(s) merged")
    return said


def needs_sync(store: Store) -> bool:
    """Whether a coordinator has Slurm jobs to follow (readers stay read-only when it has none)."""
    return bool(q.slurm_jobs(store))


def cancel(store: Store, job: q.Job) -> str:
    """``scancel`` the job's Slurm job; its end (cancelled) comes back with the next sync."""
    r = _run(["scancel", str(job.slurm_id)], "tcf queue cancel")
    if r.returncode != 0:
        raise TcfError(f"scancel {job.slurm_id} failed: {(r.stderr or r.stdout).strip()}")
    return f"job {job.id}: scancel {job.slurm_id} (Slurm job)"


def resubmit(store: Store, job_ids: list[int], *, say: Callable[[str], None] = print) -> list[Submission]:
    """Submit retried Slurm jobs again with the options they were submitted with; queued Slurm jobs that wait
    for one of them (their afterok can no longer be met) are cancelled in Slurm and resubmitted after it."""
    jobs = [q.get_job(store, i) for i in job_ids]
    waiting = [j for j in q.slurm_jobs(store) if j.state == "queued" and set(j.deps) & set(job_ids)]
    for j in waiting:
        _run(["scancel", str(j.slurm_id)], "tcf queue retry")
        q.unsubmit(store, j.id)
    by_options: dict[str, list[int]] = {}
    for j in [*jobs, *waiting]:
        by_options.setdefault(j.slurm_options or "{}", []).append(j.id)
    subs = []
    for options, ids in by_options.items():
        subs += submit(store, SlurmOptions(**json.loads(options)), ids, say=say)
    return subs


def format_plan(subs: list[Submission], skipped: list[str]) -> str:
    """What ``--dry-run`` prints: each job's script file and text, then the exact sbatch argv."""
    out = []
    for s in subs:
        out += [f"# job {s.job.id} ({s.job.kind} {s.job.name}), attempt {s.attempt}: {s.script_path}",
                s.script.rstrip("\n"), "$ " + shlex.join(s.argv), ""]
    out += skipped
    return "\n".join(out).rstrip("\n") + "\n"



_last_follow: dict[Path, float] = {}


def follow(db: Path, min_interval_s: float = 0.0) -> list[str]:
    """What a reader does first on the coordinator (``tcf queue ls``, ``tcf results``, the TUI's refresh): sync
    when experiments.db has Slurm jobs to follow, as the one writer; otherwise the file is not touched. At most
    once per ``min_interval_s`` per file (a dashboard refreshes every second; squeue need not)."""
    import time

    db = Path(db).resolve()
    if not db.is_file() or time.monotonic() - _last_follow.get(db, -math.inf) < min_interval_s:
        return []
    _last_follow[db] = time.monotonic()
    try:
        reader = Store(db, readonly=True)
    except TcfError:
        return []  # not a store this tcf can read: the read that follows says why, once
    try:
        if not needs_sync(reader):
            return []
    finally:
        reader.close()
    store = Store(db)
    try:
        return sync(store)
    finally:
        store.close()
