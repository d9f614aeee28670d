"""The job queue in experiments.db: add, list, claim, cancel, retry, remove, and lost-job detection.

A job is one OS process: ``infer`` encodes the item texts of one encoder (every unfreeze depth its
sweep needs), ``train`` runs one experiment config. A text-tower ``train`` job depends on the
``infer`` job of its encoder, so the GPU-heavy pre-inference runs once and first.

States: ``queued`` -> ``running`` -> ``finished`` | ``failed`` | ``cancelled`` | ``lost``. ``lost`` is a
failure the job could not report itself: its process died (SIGKILL, OOM killer, power cut). Liveness is
decided from the process first (PID and start time, on its own host) and the heartbeat second: a job
whose process lives but is silent (paused, swapping, busy importing) shows as ``stale``, never ``lost``;
a job of another host is lost only after a long silence. Readers show a job whose process is gone as
``lost`` at once (:func:`display_state`); a worker records it (:func:`reap_lost`); a job that ends after
all records its true end. A queued job waiting on a dependency that ended badly shows as ``blocked``.
``retry`` puts failed, lost and cancelled jobs back: a pre-inference job resumes from its last committed
block range, a training job from its last checkpoint.

Claiming is a single ``UPDATE ... RETURNING`` inside ``BEGIN IMMEDIATE``, so two workers never take
the same job::

    store = Store("experiments.db")
    ids = add_jobs(store, load_config("exp.yaml"), tags=["scaling"])
    job = claim(store, worker_id=1, devices="0", max_gpus=1)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcf.config import Config
from tcf.errors import ConfigError, TcfError
from tcf.store.db import Store, now_iso
from tcf.store.sql import connection as sql
from tcf.util.process import hostname, is_alive

STATES = ("queued", "running", "finished", "failed", "cancelled", "lost")
SHOWN = (*STATES, "stale", "blocked")  # what a reader may see: a stored state, or one of two readings
ENDED_BADLY = ("failed", "cancelled", "lost")
TERMINAL = ("finished", *ENDED_BADLY)
HEARTBEAT_S = 5.0  # a job process writes its heartbeat this often
STALE_AFTER_S = 20.0  # a running job silent this long shows as stale (its process is alive but quiet)
SLURM_ENDED = ("COMPLETED", "CANCELLED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "DEADLINE", "NODE_FAIL", "BOOT_FAIL",
               "PREEMPTED", "SPECIAL_EXIT", "UNKNOWN")  # Slurm's final states (UNKNOWN: Slurm forgot the job)
HOST_LOST_AFTER_S = 600.0  # a job of another host (whose process we cannot see) silent this long is lost



@dataclass(frozen=True)
class Job:
    """A row of ``jobs`` with its dependencies; ``display`` is the state a person should see."""

    id: int
    kind: str
    name: str
    state: str
    display: str
    priority: int
    tags: tuple[str, ...]
    note: str
    gpus: int
    mem_bytes: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    worker_id: int | None
    host: str | None
    pid: int | None
    pid_start: int | None
    devices: str | None
    heartbeat: float | None
    peak_mem_bytes: int | None
    cancel_requested: bool
    run_id: int | None
    artifact: str | None
    exit_code: int | None
    error: str | None
    log_path: str | None
    deps: tuple[int, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    slurm_id: str | None = None  # the Slurm job that runs it (tcf.jobs.slurm); None: a local worker's job
    slurm_options: str | None = None  # JSON of the sbatch options it was submitted with (a retry reuses them)
    job_dir: str | None = None  # a Slurm job's folder on the shared filesystem: its script, records and log
    slurm_state: str | None = None  # what squeue/sacct last said of it ("PENDING (Dependency)", "COMPLETED")

    @property
    def dataset(self) -> str:
        return Path(self.config.get("dataset", {}).get("path", "")).name


def display_state(row: dict[str, Any], dep_states: list[str], now: float | None = None,
                  host: str | None = None, workers: dict[int, dict[str, Any]] | None = None) -> str:
    """What a person should see: a running job's liveness (:func:`liveness`); ``blocked`` for a queued job
    whose dependency ended badly; else the stored state."""
    state = row["state"]
    if state == "running" and row.get("slurm_id"):
        return state  # Slurm tells whether it lives: `tcf queue sync` records what squeue/sacct say
    if state == "running":
        shown = liveness(row, time.time() if now is None else now, host or hostname(), workers or {})[0]
        return "cancelled" if shown == "lost" and row["cancel_requested"] else shown  # gone as it was asked
    if state == "queued" and any(s in ENDED_BADLY for s in dep_states):
        return "blocked"
    return state


def liveness(row: dict[str, Any], now: float, host: str, workers: dict[int, dict[str, Any]]) -> tuple[str, str]:
    """('running' | 'stale' | 'lost', why) of a running job: on its own host its process decides (its
    worker's, before it has one), the heartbeat only tells running from stale; elsewhere a long silence."""
    silent = row["heartbeat"] is not None and now - row["heartbeat"] > STALE_AFTER_S
    quiet = ("stale", f"no heartbeat for {now - (row['heartbeat'] or now):.0f} s") if silent else ("running", "")
    if row["host"] == host:
        if row["pid"]:
            return quiet if is_alive(row["pid"], row["pid_start"]) else ("lost", f"process {row['pid']} on "
                                                                             f"{row['host']} is gone")
        worker = workers.get(row["worker_id"])  # claimed, not started yet: its worker starts it
        if worker is not None and not is_alive(worker["pid"], worker["pid_start"]):
            return "lost", f"worker {row['worker_id']} died before starting it"
        return quiet
    if row["heartbeat"] is not None and now - row["heartbeat"] > HOST_LOST_AFTER_S:
        return "lost", f"no heartbeat from {row['host']} for {HOST_LOST_AFTER_S:.0f} s"
    return quiet


def _workers(store: Store) -> dict[int, dict[str, Any]]:
    return {w["id"]: w for w in sql(store).query("SELECT id, host, pid, pid_start FROM workers")}


def _deps(store: Store) -> dict[int, list[tuple[int, str]]]:
    deps: dict[int, list[tuple[int, str]]] = {}
    for r in sql(store).execute(
        "SELECT d.job_id, d.dep_id, p.state FROM job_deps d JOIN jobs p ON p.id = d.dep_id ORDER BY d.dep_id"
    ).fetchall():
        deps.setdefault(r[0], []).append((r[1], r[2]))
    return deps


def _job(row: dict[str, Any], deps: list[tuple[int, str]], now: float, host: str,
         workers: dict[int, dict[str, Any]]) -> Job:
    row = dict(row)
    config = json.loads(row.pop("config_json"))
    spec = json.loads(row.pop("spec_json"))
    tags = tuple(json.loads(row.pop("tags_json")))
    row.pop("key", None)
    row["cancel_requested"] = bool(row["cancel_requested"])
    return Job(**row, display=display_state(row, [s for _, s in deps], now, host, workers), tags=tags,
               deps=tuple(d for d, _ in deps), config=config, spec=spec)


def list_jobs(store: Store, states: tuple[str, ...] | None = None, now: float | None = None) -> list[Job]:
    """Jobs in queue order: running first, then queued by priority (high first), then ended, newest first.

    ``states`` filters on the displayed state (``lost`` and ``blocked`` included).
    """
    now, host = time.time() if now is None else now, hostname()
    deps = _deps(store)
    workers = _workers(store)
    jobs = [_job(r, deps.get(r["id"], []), now, host, workers) for r in sql(store).query("SELECT * FROM jobs")]

    def order(j: Job) -> tuple[int, int, int]:
        if j.state == "running":
            return (0, 0, j.id)
        if j.state == "queued":
            return (1, -j.priority, j.id)
        return (2, 0, -j.id)

    jobs.sort(key=order)
    return [j for j in jobs if states is None or j.display in states]


def get_job(store: Store, job_id: int, now: float | None = None) -> Job:
    """One job; ``now`` (default: the clock) decides whether a silent running job shows as lost."""
    row = next(sql(store).query("SELECT * FROM jobs WHERE id = ?", [job_id]), None)
    if row is None:
        raise TcfError(f"{store.path}: no job with id {job_id}")
    deps = [(r[0], r[1]) for r in sql(store).execute(
        "SELECT d.dep_id, p.state FROM job_deps d JOIN jobs p ON p.id = d.dep_id WHERE d.job_id = ? ORDER BY 1",
        [job_id]).fetchall()]
    return _job(row, deps, time.time() if now is None else now, hostname(), _workers(store))


# -- adding --------------------------------------------------------------------------------------

def _encoder_key(cfg: Config, keep: tuple[int, ...]) -> str:
    from tcf.preinfer.encode import encoder_identity

    text = json.dumps([list(map(str, encoder_identity(cfg))), list(keep)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _insert(store: Store, kind: str, name: str, cfg: Config, spec: dict[str, Any], key: str | None,
            priority: int, tags: list[str], note: str, gpus: int, mem_bytes: int | None, deps: list[int]) -> int:
    # above every id ever given (counters, migration 9), not max(id) + 1: a removed job's id is never reused
    (job_id,) = sql(store).execute("SELECT max(value, (SELECT ifnull(max(id), 0) FROM jobs)) + 1 FROM counters "
                                   "WHERE name = 'jobs'").fetchone()
    sql(store).execute(
        "INSERT INTO jobs (id, kind, name, config_json, spec_json, key, state, priority, tags_json, note, gpus, "
        "mem_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
        [job_id, kind, name, json.dumps(cfg.model_dump(mode="json"), sort_keys=True), json.dumps(spec), key, priority,
         json.dumps(tags), note, gpus, mem_bytes, now_iso()],
    )
    sql(store).conn.executemany("INSERT INTO job_deps (job_id, dep_id) VALUES (?, ?)", [(job_id, d) for d in deps])
    return job_id


def add_jobs(store: Store, configs: list[Config], *, priority: int = 0, tags: list[str] | tuple[str, ...] = (),
             note: str = "", gpus: int = 1, mem_bytes: int | None = None) -> list[int]:
    """Queue one training job per config, after one pre-inference job per text encoder they need.

    A pre-inference job for the same encoder and depths that is already queued or running is
    reused as the dependency instead of queueing a second one (two would write the same artifact).
    ``mem_bytes`` is the free GPU memory a worker waits for; a pre-inference job without it waits for
    its ``text_encoder.gpu_memory_budget``, else for the least memory its planner can work in (it then
    takes what is free). Returns the ids of the new jobs, pre-inference first.
    """
    from tcf.preinfer.encode import minimum_budget, sweep_depths

    if gpus < 1:
        raise ConfigError(None, "gpus", "must be at least 1")
    tags = _check_tags(tags)
    configs = [c.resolved() for c in configs]
    depths = sweep_depths(configs)
    added: list[int] = []
    with store.transaction():
        infer_of: dict[str, int] = {}
        for cfg, keep in zip(configs, depths, strict=True):
            if not cfg.trains_text_tower:
                continue
            key = _encoder_key(cfg, keep)
            if key in infer_of:
                continue
            row = sql(store).execute(
                "SELECT id FROM jobs WHERE kind = 'infer' AND key = ? AND state IN ('queued', 'running') "
                "ORDER BY id LIMIT 1", [key]).fetchone()
            if row is not None:
                infer_of[key] = int(row[0])
                continue
            te = cfg.text_encoder
            assert te is not None
            budget = mem_bytes or te.gpu_memory_budget or minimum_budget(cfg)
            name = f"{Path(cfg.dataset.path).name}-{Path(te.model).name}"
            infer_of[key] = _insert(store, "infer", name, cfg, {"keep_depths": list(keep)}, key, priority,
                                    tags, note, gpus, budget, [])
            added.append(infer_of[key])
        for cfg, keep in zip(configs, depths, strict=True):
            deps = [infer_of[_encoder_key(cfg, keep)]] if cfg.trains_text_tower else []
            added.append(_insert(store, "train", cfg.run_name, cfg, {"keep_depths": list(keep)}, None, priority,
                                 tags, note, gpus, mem_bytes, deps))
    return added


def queue_config(store: Store, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                 say: Callable[[str], None] = print, **options: Any) -> list[int]:
    """Load a config file (None: the embedded demo, its data built if missing), validate every run's
    dataset before anything is written, and queue its jobs (``options`` as for :func:`add_jobs`)."""
    from tcf.config import load_config

    if path is None:
        from tcf.demo import demo_configs

        configs = demo_configs(overrides, say=say)
    else:
        configs = load_config(path, overrides)  # a bad path or key fails here, before the heavy imports
    from tcf.experiment import prepared_data

    for cfg in configs:
        prepared_data(cfg)
        if cfg.trains_text_tower:
            from tcf.preinfer.encode import depth_of, model_dir_of

            assert cfg.text_encoder is not None
            model_dir_of(cfg.text_encoder)
            depth_of(cfg)
    return add_jobs(store, configs, **options)


def _check_tags(tags: list[str] | tuple[str, ...]) -> list[str]:
    out = []
    for tag in tags:
        tag = tag.strip()
        if not tag or any(c.isspace() or c == "," for c in tag):
            raise TcfError(f"invalid tag {tag!r}: tags are single words without commas")
        if tag not in out:
            out.append(tag)
    return out


# -- changing --------------------------------------------------------------------------------------

def edit_job(store: Store, job_id: int, *, priority: int | None = None, tags: list[str] | None = None,
             note: str | None = None) -> Job:
    """Change a job's priority, tags (replacing them) or note; any state."""
    with store.transaction():
        get_job(store, job_id)
        if priority is not None:
            sql(store).execute("UPDATE jobs SET priority = ? WHERE id = ?", [priority, job_id])
        if tags is not None:
            sql(store).execute("UPDATE jobs SET tags_json = ? WHERE id = ?", [json.dumps(_check_tags(tags)), job_id])
        if note is not None:
            sql(store).execute("UPDATE jobs SET note = ? WHERE id = ?", [note, job_id])
    return get_job(store, job_id)


def cancel_job(store: Store, job_id: int) -> str:
    """Cancel a queued job at once; ask a running one to stop (SIGTERM from here when it runs on this
    host, else from its worker). Returns what happened, for the user."""
    import os
    import signal

    with store.transaction():
        job = get_job(store, job_id)
        if job.state == "queued" and job.slurm_id:
            from tcf.jobs.slurm import cancel

            said = cancel(store, job)  # pending in Slurm: gone once scancel returns
            sql(store).execute("UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'cancelled before it "
                               "started' WHERE id = ?", [now_iso(), job_id])
            return said
        if job.state == "queued":
            sql(store).execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", [now_iso(), job_id])
            return f"job {job_id} cancelled"
        if job.state != "running":
            raise TcfError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
        sql(store).execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [job_id])
    if job.slurm_id:
        from tcf.jobs.slurm import cancel

        return cancel(store, job)
    if job.host == hostname() and is_alive(job.pid, job.pid_start):
        try:
            os.killpg(job.pid, signal.SIGTERM)  # workers start each job in its own process group
        except ProcessLookupError:
            pass
        return f"job {job_id}: sent SIGTERM to process group {job.pid}"
    return f"job {job_id}: cancellation requested (its worker on {job.host} stops it)"


def retry_jobs(store: Store, job_ids: list[int] | None = None, *, failed: bool = False) -> list[int]:
    """Queue failed, lost or cancelled jobs again (``failed=True``: all of them). A lost job whose
    process still runs on this host is refused. Keeps the run, so training resumes from its checkpoint."""
    with store.transaction():
        if failed:
            jobs = [j for j in list_jobs(store) if j.display in ENDED_BADLY]
        else:
            jobs = [get_job(store, i) for i in job_ids or []]
        for job in jobs:
            if job.display not in ENDED_BADLY:
                raise TcfError(f"job {job.id} is {job.display}; only failed, lost or cancelled jobs can be retried")
            if job.host == hostname() and is_alive(job.pid, job.pid_start):
                raise TcfError(f"job {job.id}: its process {job.pid} still runs; cancel it first")
            sql(store).execute(
                "UPDATE jobs SET state = 'queued', cancel_requested = 0, worker_id = NULL, pid = NULL, "
                "pid_start = NULL, devices = NULL, heartbeat = NULL, started_at = NULL, finished_at = NULL, "
                "exit_code = NULL, error = NULL WHERE id = ?", [job.id])
            if job.slurm_id:  # submitted again by tcf.jobs.slurm.resubmit, with the options it had
                sql(store).execute("UPDATE jobs SET slurm_id = NULL, slurm_state = NULL WHERE id = ?", [job.id])
    return [j.id for j in jobs]


def remove_job(store: Store, job_id: int) -> None:
    """Delete a job that is not running and that no queued job waits for (its run stays in ``runs``); its id
    is never given to another job (:func:`_insert`), so no new job appends to its log or shows its events."""
    with store.transaction():
        job = get_job(store, job_id)
        if job.display in ("running",):
            raise TcfError(f"job {job_id} is running; cancel it first")
        if job.slurm_id and job.state == "queued":
            raise TcfError(f"job {job_id} is Slurm job {job.slurm_id}, not ended; cancel it first")
        waiting = [r[0] for r in sql(store).execute(
            "SELECT j.id FROM job_deps d JOIN jobs j ON j.id = d.job_id WHERE d.dep_id = ? AND j.state = 'queued'",
            [job_id]).fetchall()]
        if waiting:
            raise TcfError(f"job {job_id}: queued job(s) {', '.join(map(str, waiting))} depend on it; "
                           "remove them first")
        sql(store).execute("DELETE FROM jobs WHERE id = ?", [job_id])


# -- workers and job processes -------------------------------------------------------------------

# the next ready job: queued, fits the free devices, every dependency finished; priority, then age
_PICK = ("SELECT j.id FROM jobs j WHERE j.state = 'queued' AND j.gpus <= :max_gpus AND j.slurm_id IS NULL "
         "AND (:job IS NULL OR j.id = :job) AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.dep_id "
         "WHERE d.job_id = j.id AND p.state != 'finished') ORDER BY j.priority DESC, j.id LIMIT 1")


def next_ready(store: Store, max_gpus: int) -> Job | None:
    """The job a worker with ``max_gpus`` free devices would take next (highest priority, oldest)."""
    row = sql(store).execute(_PICK, {"max_gpus": max_gpus, "job": None}).fetchone()
    return None if row is None else get_job(store, int(row[0]))


def busy_devices(store: Store) -> set[str]:
    """GPUs of this host that a running job holds: one whose process lives, or that was claimed and
    is being started (no PID yet). A dead worker's jobs keep running and keep their GPUs."""
    busy: set[str] = set()
    for devices, pid, started, state in sql(store).execute(
            "SELECT devices, pid, pid_start, state FROM jobs WHERE state IN ('running', 'lost') AND host = ? "
            "AND devices IS NOT NULL", [hostname()]).fetchall():
        if is_alive(pid, started) or (pid is None and state == "running"):
            busy.update(d for d in devices.split(",") if d.isdigit())
    return busy


def claim(store: Store, worker_id: int, devices: str, max_gpus: int, job_id: int | None = None) -> Job | None:
    """Atomically move the next ready job (or ``job_id``, if still ready) to running on ``devices``.

    The pick, the check that no running job of this host holds one of the GPUs, and the update share
    one ``BEGIN IMMEDIATE`` transaction: no other writer runs in between, so two workers never take
    the same job or the same GPU.
    """
    with store.transaction():
        row = sql(store).execute(_PICK, {"max_gpus": max_gpus, "job": job_id}).fetchone()
        if row is None or set(devices.split(",")) & busy_devices(store):
            return None
        sql(store).execute(
            "UPDATE jobs SET state = 'running', worker_id = ?, host = ?, devices = ?, started_at = ?, heartbeat = ?, "
            "attempts = attempts + 1, cancel_requested = 0, pid = NULL, pid_start = NULL, exit_code = NULL, "
            "error = NULL, finished_at = NULL WHERE id = ? AND state = 'queued'",
            [worker_id, hostname(), devices, now_iso(), time.time(), int(row[0])])
    return get_job(store, int(row[0]))


def set_process(store: Store, job_id: int, pid: int, pid_start: int | None, log_path: str) -> None:
    with store.transaction():
        sql(store).execute("UPDATE jobs SET pid = ?, pid_start = ?, log_path = ?, heartbeat = ? WHERE id = ?",
                         [pid, pid_start, log_path, time.time(), job_id])


def heartbeat(store: Store, job_id: int, peak_mem_bytes: int | None = None, attempt: int | None = None) -> bool:
    """Record that the job lives (and its peak GPU memory); False once it has ended. A job marked lost while
    its process lived (another host's long silence) is running again: ``attempt`` proves it is that process
    (and a retry's new attempt is never touched by the old one)."""
    with store.transaction():
        cur = sql(store).execute(
            "UPDATE jobs SET heartbeat = ?, peak_mem_bytes = max(ifnull(peak_mem_bytes, 0), ifnull(?, 0)), "
            "state = 'running', error = NULL, finished_at = NULL WHERE id = ? AND (CASE WHEN ? IS NULL THEN "
            "state = 'running' ELSE state IN ('running', 'lost') AND attempts = ? END)",
            [time.time(), peak_mem_bytes, job_id, attempt, attempt])
        return cur.rowcount > 0


def finish_job(store: Store, job_id: int, state: str, *, error: str | None = None, exit_code: int | None = None,
               artifact: str | None = None, attempt: int | None = None) -> bool:
    """Record how a running job ended (returns False if it had ended already). The job process passes its
    ``attempt``: a job recorded lost meanwhile then gets its true end, and a retried one is left alone."""
    if state not in TERMINAL:
        raise ValueError(f"not a terminal job state: {state!r}")
    with store.transaction():
        cur = sql(store).execute(
            "UPDATE jobs SET state = ?, error = ?, exit_code = ifnull(?, exit_code), "
            "artifact = ifnull(?, artifact), finished_at = ? WHERE id = ? AND (CASE WHEN ? IS NULL THEN "
            "state = 'running' ELSE state IN ('running', 'lost') AND attempts = ? END)",
            [state, error, exit_code, artifact, now_iso(), job_id, attempt, attempt])
        if cur.rowcount and state in ("lost", "cancelled"):
            # the run cannot say so itself any more: leave it resumable, not "running" forever
            sql(store).execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE id = "
                               "(SELECT run_id FROM jobs WHERE id = ?) AND status IN ('created', 'running')",
                               [error or f"job {state}", now_iso(), job_id])
        return cur.rowcount > 0


def reap_lost(store: Store, now: float | None = None, skip: Collection[int] = ()) -> list[int]:
    """Record every running job whose process is gone (this host) or long silent (another host) as lost (as
    cancelled when it had been asked to stop); a paused or busy job is only stale and stays running.

    ``skip``: the calling worker's own children, which it waits for itself to record how they ended (a
    SIGKILLed child is gone, a zombie, before the worker collects its exit status)."""
    now, host, workers = time.time() if now is None else now, hostname(), _workers(store)
    lost = []
    for row in sql(store).query("SELECT * FROM jobs WHERE state = 'running' AND slurm_id IS NULL"):
        state, why = liveness(row, now, host, workers)
        if state != "lost" or row["id"] in skip:
            continue
        if row["cancel_requested"]:  # it was asked to stop and stopped before it could say so: cancelled
            finish_job(store, row["id"], "cancelled", error=f"cancelled ({why})")
        elif finish_job(store, row["id"], "lost", error=f"lost: {why}"):
            lost.append(row["id"])
    return lost


def register_worker(store: Store, pid: int, pid_start: int | None, devices: str) -> int:
    with store.transaction():
        cur = sql(store).execute(
            "INSERT INTO workers (host, pid, pid_start, devices, started_at, heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
            [hostname(), pid, pid_start, devices, now_iso(), time.time()])
        return int(cur.lastrowid)


def worker_heartbeat(store: Store, worker_id: int, status: str, stopped: bool = False) -> None:
    with store.transaction():
        sql(store).execute("UPDATE workers SET heartbeat = ?, status = ?, stopped_at = ? WHERE id = ?",
                         [time.time(), status, now_iso() if stopped else None, worker_id])


def live_workers(store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Workers that are running: not stopped, and on this host their process alive (elsewhere: a fresh heartbeat)."""
    now, host = time.time() if now is None else now, hostname()
    return [w for w in sql(store).query("SELECT * FROM workers WHERE stopped_at IS NULL ORDER BY id")
            if (is_alive(w["pid"], w["pid_start"]) if w["host"] == host else now - w["heartbeat"] <= STALE_AFTER_S)]


def match_jobs(jobs: list[Job], text: str) -> list[Job]:
    """Jobs whose name, tags, note, kind, state or id match ``text`` (a glob, or a substring)."""
    text = text.strip().lower()
    if not text:
        return jobs
    pattern = text if any(c in text for c in "*?[") else f"*{text}*"
    return [j for j in jobs if any(fnmatch.fnmatch(s.lower(), pattern) for s in
                                   (j.name, j.kind, j.display, j.note, str(j.id), j.dataset, *j.tags))]


# -- jobs on Slurm (tcf.jobs.slurm) and their records (tcf.jobs.records) -----------------------------

def submitted(store: Store, job_id: int, *, slurm_id: str, options: dict[str, Any], job_dir: str,
              log_path: str, attempt: int) -> None:
    """Record that attempt ``attempt`` of a queued job is Slurm job ``slurm_id`` (it stays queued until it starts);
    a job that stopped being queued meanwhile (cancelled, taken by a worker) is an error."""
    with store.transaction():
        cur = sql(store).execute(
            "UPDATE jobs SET slurm_id = ?, slurm_options = ?, job_dir = ?, log_path = ?, attempts = ?, host = NULL, "
            "slurm_state = NULL, pid = NULL, pid_start = NULL, worker_id = NULL, devices = NULL, heartbeat = NULL, "
            "started_at = NULL, finished_at = NULL, exit_code = NULL, error = NULL, cancel_requested = 0 "
            "WHERE id = ? AND state = 'queued' AND slurm_id IS NULL",
            [slurm_id, json.dumps(options, sort_keys=True), job_dir, log_path, attempt, job_id])
        if cur.rowcount == 0:
            raise TcfError(f"job {job_id} is no longer queued for submission (cancelled, or taken meanwhile)")


def unsubmit(store: Store, job_id: int) -> None:
    """A queued job is no longer a Slurm job (cancelled there to be submitted again)."""
    with store.transaction():
        sql(store).execute("UPDATE jobs SET slurm_id = NULL, slurm_state = NULL WHERE id = ? AND state = 'queued'",
                           [job_id])


def set_run(store: Store, job_id: int, run_id: int) -> None:
    """The run a training job trains (reserved before it runs on another machine)."""
    with store.transaction():
        sql(store).execute("UPDATE jobs SET run_id = ? WHERE id = ? AND kind = 'train'", [run_id, job_id])


def merged_seq(store: Store, job_id: int, attempt: int) -> int:
    """The last record of (job, attempt) already merged into the store (0: none)."""
    row = sql(store).execute("SELECT seq FROM merged_records WHERE job_id = ? AND attempt = ?",
                             [job_id, attempt]).fetchone()
    return int(row[0]) if row else 0


def mark_merged(store: Store, job_id: int, attempt: int, seq: int) -> None:
    sql(store).execute("INSERT INTO merged_records (job_id, attempt, seq) VALUES (?, ?, ?) ON CONFLICT "
                       "(job_id, attempt) DO UPDATE SET seq = excluded.seq", [job_id, attempt, seq])


def record_start(store: Store, job_id: int, attempt: int, *, host: str, pid: int, pid_start: int | None,
                 at: str) -> None:
    """A job process of attempt ``attempt`` started on ``host`` (again, after a Slurm requeue)."""
    with store.transaction():
        sql(store).execute(
            "UPDATE jobs SET state = 'running', host = ?, pid = ?, pid_start = ?, started_at = ifnull(started_at, ?), "
            "heartbeat = ?, finished_at = NULL, error = NULL, exit_code = NULL WHERE id = ? AND attempts = ?",
            [host, pid, pid_start, at, time.time(), job_id, attempt])


def record_heartbeat(store: Store, job_id: int, attempt: int, peak_mem_bytes: int | None) -> None:
    """A merged heartbeat: the job's peak GPU memory (its state is Slurm's to tell)."""
    with store.transaction():
        sql(store).execute(
            "UPDATE jobs SET heartbeat = ?, peak_mem_bytes = max(ifnull(peak_mem_bytes, 0), ifnull(?, 0)) "
            "WHERE id = ? AND attempts = ?", [time.time(), peak_mem_bytes, job_id, attempt])


def set_slurm_state(store: Store, job_id: int, attempt: int, slurm_state: str,
                    change: tuple[str, str | None] | None) -> bool:
    """Record what Slurm says of attempt ``attempt`` and the tcf state and error it means (``change``; None: keep
    what the job's records said), e.g. queued again after a requeue, running, or how it ended; returns whether
    the state changed. A run that a job which ended badly leaves behind becomes resumable."""
    with store.transaction():
        row = sql(store).execute("SELECT state, error FROM jobs WHERE id = ? AND attempts = ?",
                                 [job_id, attempt]).fetchone()
        if row is None:
            return False
        sql(store).execute("UPDATE jobs SET slurm_state = ? WHERE id = ?", [slurm_state, job_id])
        if change is None or (row[0], row[1]) == change:
            return False
        state, error = change
        if state not in STATES:
            raise ValueError(f"not a job state: {state!r}")
        if state in TERMINAL:
            sql(store).execute("UPDATE jobs SET state = ?, error = ?, finished_at = ifnull(finished_at, ?) "
                               "WHERE id = ?", [state, error, now_iso(), job_id])
            if state in ENDED_BADLY:  # the run cannot say so itself any more: leave it resumable
                sql(store).execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE id = "
                                   "(SELECT run_id FROM jobs WHERE id = ?) AND status IN ('created', 'running')",
                                   [error or f"job {state}", now_iso(), job_id])
        else:
            sql(store).execute("UPDATE jobs SET state = ?, error = NULL, finished_at = NULL WHERE id = ?",
                               [state, job_id])
        return True


def slurm_jobs(store: Store) -> list[Job]:
    """Jobs whose Slurm job may still change: queued or running in tcf, or not yet seen ended by Slurm (a job
    that recorded its end is confirmed, or corrected, by how Slurm saw it end: a time limit, a node failure)."""
    if not store.has_column("jobs", "slurm_id"):
        return []
    rows = sql(store).execute("SELECT id FROM jobs WHERE slurm_id IS NOT NULL AND (state IN ('queued', 'running') "
                              "OR slurm_state IS NULL OR slurm_state NOT IN (SELECT value FROM json_each(?))) "
                              "ORDER BY id", [json.dumps(SLURM_ENDED)]).fetchall()
    return [get_job(store, int(r[0])) for r in rows]
