"""The experiment store: one SQLite file (``experiments.db``) that every process writes to.

Several OS processes (trainers, DDP rank 0, workers) write while UIs read, so the file runs in WAL
mode with a 30 s busy timeout and every write is one ``BEGIN IMMEDIATE`` transaction (taking the
write lock up front, so a writer waits in the busy handler instead of failing on a lock upgrade).
The schema evolves through ``MIGRATIONS``; ``PRAGMA user_version`` records how many are applied.

Usage::

    store = Store("experiments.db")
    run_id = store.create_run(name="mind-sasrec", config=cfg, config_hash=h, dataset="mind",
                              architecture="sasrec", item_tower="id")
    store.set_status(run_id, "running")
    store.log_epoch(run_id, 1, train_loss=3.2, seconds=41.0, metrics={"hr@10": 0.051})
    store.log_final(run_id, "test", {"hr@10": 0.062}, best_epoch=1, stopped_epoch=1)
    store.runs(dataset="mind", name_glob="mind-*")      # rows of the `results` view + config and tags
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import quote_identifier

from tcf.errors import TcfError
from tcf.store.schema import (
    APPLICATION_ID,
    FINAL_SPLITS,
    METRIC_NAME,
    MIGRATIONS,
    READABLE_FROM,
    metric_key,
    sync_results_view,
)
from tcf.util.process import hostname, is_alive, start_time

BUSY_TIMEOUT_MS = 30_000
JOB_ENV = "TCF_JOB_ID"  # set by a worker for the job process it starts (tcf.jobs)
STATUSES = ("created", "running", "finished", "failed", "interrupted")
TERMINAL_STATUSES = ("finished", "failed", "interrupted")
#: What reading the store may raise: a lock held past the busy timeout, a corrupt or unreadable file, a newer
#: schema. A UI that polls shows the message and tries again.
READ_ERRORS: tuple[type[BaseException], ...] = (TcfError, OSError)



def now_iso() -> str:
    """Now as ISO-8601 UTC with seconds: how experiments.db stores every time."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """HEAD of the tcf source tree, so a result can be traced to the code that produced it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _check_metric_names(metrics: dict[str, float]) -> None:
    for name in metrics:
        if not isinstance(name, str) or not METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r} (expected e.g. 'hr@10', 'ndcg@10')")


class StoreError(TcfError):
    """SQLite failed on the store after it opened (a lock held past the busy timeout, a full disk, a
    read-only or corrupt file): one line naming the file, never a traceback."""

    def __init__(self, path: Path, cause: sqlite3.Error):
        self.cause = cause
        hint = " (another process held it for longer than the 30 s busy timeout)" if "locked" in str(cause) else ""
        super().__init__(f"{path}: {cause}{hint}")


class _NamedDatabase(Database):
    """sqlite-utils' Database whose errors name the store's file (every SQL of tcf goes through these)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        super().__init__(conn)
        self.path = path

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as e:
            raise StoreError(self.path, e) from e

    def query(self, sql: str, params: Any = None) -> Iterator[dict]:
        try:
            yield from super().query(sql, params)
        except sqlite3.Error as e:
            raise StoreError(self.path, e) from e


class Store:
    """experiments.db through sqlite-utils: WAL, busy_timeout 30 s, migrations by PRAGMA user_version.

    Open one Store per process (and per thread): the sqlite3 connection is not shared. Inside a
    queued job's process (``TCF_JOB_ID`` set by the worker) events carry the job's id and a new run
    is linked to the job, so that the queue and the TUI can follow the job without parsing logs.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        """Open (a writer: create and migrate) the store at ``path``. ``readonly`` opens an existing store
        without changing a byte of it (no WAL switch, no migration): what commands that only read use.
        A file that is not a tcf store is refused before anything touches it."""
        self.path = Path(path).expanduser().resolve()
        self.readonly = readonly
        self._depth = 0  # of nested transaction() blocks
        job = os.environ.get(JOB_ENV, "")
        self.job_id: int | None = int(job) if job.isdigit() else None
        if readonly and not self.path.is_file():
            raise TcfError(f"{self.path}: no such result store")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            target = f"{self.path.as_uri()}?mode=ro" if readonly else str(self.path)
            conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, uri=readonly)
        except (OSError, sqlite3.DatabaseError) as e:
            raise TcfError(f"{self.path}: cannot open the experiment store: {e}") from e
        try:
            self._db = _NamedDatabase(conn, self.path)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._check_ours()
            if not readonly:
                self._enable_wal()
                # In WAL mode NORMAL cannot corrupt the file; a power cut may lose the last commits only.
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException as e:
            conn.close()
            cause = e.cause if isinstance(e, StoreError) else e
            if isinstance(cause, sqlite3.DatabaseError):
                raise TcfError(f"{self.path}: cannot open the experiment store: {cause}") from e
            raise

    def _check_ours(self) -> None:
        """A tcf store carries the application id; one written before it did is told by its tables; a new
        or empty file becomes one (writers only). Anything else is another program's file."""
        self._db.execute("BEGIN")  # one snapshot: another process may be creating the store between two reads
        try:
            app = int(self._db.execute("PRAGMA application_id").fetchone()[0])
            version = self._user_version()
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            self._db.conn.rollback()
        if app == APPLICATION_ID or (app == 0 and version >= 1 and {"runs", "metrics"} <= tables):
            return
        if app == 0 and version == 0 and not tables:
            if self.readonly:
                raise TcfError(f"{self.path}: an empty file, not a tcf result store")
            return
        raise TcfError(f"{self.path}: not a tcf result store (application id {app:#x}, schema version "
                       f"{version}, tables: {', '.join(sorted(tables)) or 'none'}); tcf leaves it as it is")

    def close(self) -> None:
        self._db.close()

    # -- transactions and schema -------------------------------------------------------------

    def _enable_wal(self) -> None:
        """Switch a new file to WAL (persistent), retrying while another process does the same.

        Two connections that both read the fresh file and both want the exclusive lock for the
        switch would deadlock, so SQLite answers SQLITE_BUSY at once instead of waiting in the busy
        handler; backing off and retrying resolves it.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.enable_wal()
                return
            except StoreError as e:
                code = getattr(e.cause, "sqlite_errorcode", None)  # Python >= 3.11; extended code
                busy = (code & 0xFF) == sqlite3.SQLITE_BUSY if code is not None else "locked" in str(e.cause)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE so concurrent writers queue in the busy handler. SQLite's errors
        inside it become a StoreError naming the file (a read-only store refuses at the BEGIN). Nested, it joins
        the outer one: merging a job's record and marking it merged commit together (tcf.jobs.records)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        conn = self._db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(self.path, e) from e
        self._depth = 1
        try:
            yield
        except sqlite3.Error as e:
            conn.rollback()
            raise StoreError(self.path, e) from e
        except BaseException:
            conn.rollback()
            raise
        else:
            try:
                conn.commit()
            except sqlite3.Error as e:
                raise StoreError(self.path, e) from e
        finally:
            self._depth = 0

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        latest = len(MIGRATIONS)
        version = self._user_version()
        if version > latest:
            raise TcfError(f"{self.path}: schema version {version} is newer than this tcf "
                           f"understands ({latest}); upgrade tcf")
        if self.readonly:
            if version < READABLE_FROM:
                raise TcfError(f"{self.path}: schema version {version} is too old to read; a command that "
                               "writes (tcf run, tcf queue add, tcf worker) brings it up to date")
            return
        if version == latest:
            return
        with self.transaction():
            version = self._user_version()  # another process may have migrated meanwhile
            if version == 0:
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(self._db)
                self._db.execute(f"PRAGMA user_version = {int(number)}")
            sync_results_view(self._db, self.path, force=True)

    def has_column(self, table: str, column: str) -> bool:
        """Whether the schema has ``table.column`` (a reader of an older schema finds newer ones absent)."""
        return any(r[1] == column for r in self._db.execute(f"PRAGMA table_info({quote_identifier(table)})"))

    def _require_run(self, run_id: int) -> dict[str, Any]:
        row = next(self._db.query("SELECT * FROM runs WHERE id = ?", [run_id]), None)
        if row is None:
            raise TcfError(f"{self.path}: no run with id {run_id}")
        return row

    # -- writes --------------------------------------------------------------------------------

    def create_run(self, *, name: str, config: dict, config_hash: str, dataset: str, architecture: str,
                   item_tower: str, lm_params: int | None = None, inputs: dict[str, Any] | None = None,
                   protocol: str = "full") -> int:
        """Record a new run (status 'created') with a fresh uuid, the fingerprints of its ``inputs``, its
        evaluation ``protocol`` (``eval.protocol``), and the host and git commit that will produce it."""
        row = {
            "name": name,
            "uuid": uuid.uuid4().hex,
            "config_json": json.dumps(config, sort_keys=True, default=str),
            "config_hash": config_hash,
            "status": "created",
            "dataset": dataset,
            "architecture": architecture,
            "item_tower": item_tower,
            "host": hostname(),
            "git_commit": _git_commit(),
            "created_at": now_iso(),
            "lm_params": lm_params,
            "inputs_json": json.dumps(inputs or {}, sort_keys=True),
            "protocol": protocol,
        }
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO runs (name, uuid, config_json, config_hash, status, dataset, architecture, item_tower, "
                "host, git_commit, created_at, lm_params, inputs_json, protocol) VALUES (:name, :uuid, :config_json, "
                ":config_hash, :status, :dataset, :architecture, :item_tower, :host, :git_commit, :created_at, "
                ":lm_params, :inputs_json, :protocol)", row)
            run_id = int(cursor.lastrowid)
            if self.job_id is not None:
                self._db.execute("UPDATE jobs SET run_id = ? WHERE id = ? AND kind = 'train'", [run_id, self.job_id])
            return run_id

    def add_inputs(self, run_id: int, inputs: dict[str, Any]) -> None:
        """Fingerprints of inputs known only later (the latents a pre-inference made), merged into the run's."""
        with self.transaction():
            known = json.loads(self._require_run(run_id)["inputs_json"] or "{}")
            self._db.execute("UPDATE runs SET inputs_json = ? WHERE id = ?",
                             [json.dumps({**known, **inputs}, sort_keys=True), run_id])

    def claim_run(self, run_id: int, threads: int | None = None, *, owner: tuple[str, int, int | None] | None = None,
                  at: str | None = None) -> None:
        """This process owns the run now (status 'running'): readers tell a run whose owner is gone from one
        that is training (the caller holds the run's lock, so no live process owns it already). ``threads``:
        the CPU threads it trains with (CPU results depend on them); ``owner`` (host, pid, pid start) and ``at``
        (when) come from a merged record of a process on another node."""
        host, pid, pid_start = owner or (hostname(), os.getpid(), start_time(os.getpid()))
        with self.transaction():
            self._require_run(run_id)
            self._db.execute(
                "UPDATE runs SET status = 'running', error = NULL, started_at = ifnull(started_at, ?), "
                "finished_at = NULL, owner_host = ?, owner_pid = ?, owner_pid_start = ?, "
                "threads = ifnull(?, threads) WHERE id = ?",
                [at or now_iso(), host, pid, pid_start, threads, run_id])

    def set_status(self, run_id: int, status: str, error: str | None = None, *, at: str | None = None) -> None:
        """'running' stamps started_at the first time; a terminal status stamps finished_at (``at``, else now)."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(STATUSES)}")
        now = at or now_iso()
        with self.transaction():
            self._require_run(run_id)
            if status == "running":
                self._db.execute(
                    "UPDATE runs SET status = ?, error = ?, started_at = ifnull(started_at, ?), "
                    "finished_at = NULL WHERE id = ?",
                    [status, error, now, run_id],
                )
            elif status in TERMINAL_STATUSES:
                self._db.execute(
                    "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                    [status, error, now, run_id],
                )
            else:
                self._db.execute(
                    "UPDATE runs SET status = ?, error = ? WHERE id = ?", [status, error, run_id]
                )

    def log_epoch(self, run_id: int, epoch: int, train_loss: float, seconds: float,
                  metrics: dict[str, float]) -> None:
        """Training loss, wall time and validation metrics of one epoch (re-logging replaces it)."""
        _check_metric_names(metrics)
        with self.transaction():
            self._require_run(run_id)
            self._db.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, train_loss, seconds) VALUES (?, ?, ?, ?)",
                [run_id, epoch, train_loss, seconds],
            )
            self._db.execute(
                "DELETE FROM metrics WHERE run_id = ? AND split = 'epoch' AND epoch = ?", [run_id, epoch]
            )
            self._db.conn.executemany(
                "INSERT INTO metrics (run_id, split, epoch, name, value) VALUES (?, 'epoch', ?, ?, ?)",
                [(run_id, epoch, name, float(value)) for name, value in metrics.items()],
            )

    def log_final(self, run_id: int, split: str, metrics: dict[str, float | None], best_epoch: int | None,
                  stopped_epoch: int | None) -> None:
        """Final metrics of a split ('valid' at the best epoch, or 'test'); replaces earlier ones. A None value is
        stored as NULL: the metric does not apply to the run (an ID tower's cold-item metrics)."""
        if split not in FINAL_SPLITS:
            raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
        _check_metric_names(metrics)
        with self.transaction():
            self._require_run(run_id)
            self._db.execute("DELETE FROM metrics WHERE run_id = ? AND split = ?", [run_id, split])
            self._db.conn.executemany(
                "INSERT INTO metrics (run_id, split, epoch, name, value) VALUES (?, ?, ?, ?, ?)",
                [(run_id, split, best_epoch, name, None if value is None else float(value))
                 for name, value in metrics.items()],
            )
            # None means "not known by this caller", so it keeps what an earlier call recorded.
            self._db.execute(
                "UPDATE runs SET best_epoch = ifnull(?, best_epoch), "
                "stopped_epoch = ifnull(?, stopped_epoch) WHERE id = ?",
                [best_epoch, stopped_epoch, run_id],
            )
            sync_results_view(self._db, self.path)

    # -- reads ---------------------------------------------------------------------------------

    def get_run(self, run_id: int) -> dict:
        """The `runs` row plus `config` (parsed) and `metrics` ({"test_hr@10": ..., "valid_...": ...})."""
        run = self._require_run(run_id)
        run["config"] = json.loads(run["config_json"])
        run["inputs"] = json.loads(run.get("inputs_json") or "{}")
        rows = sorted(
            self._db.query(
                "SELECT split, name, value FROM metrics WHERE run_id = ? AND split IN ('valid', 'test')",
                [run_id],
            ),
            key=lambda r: metric_key(f"{r['split']}_{r['name']}"),
        )
        run["metrics"] = {f"{r['split']}_{r['name']}": r["value"] for r in rows}
        return run

    def epochs(self, run_id: int) -> list[dict]:
        """Per-epoch rows in order: {"epoch", "train_loss", "seconds", "metrics": {"hr@10": ...}}."""
        self._require_run(run_id)
        rows = list(self._db.query(
            "SELECT epoch, train_loss, seconds FROM epochs WHERE run_id = ? ORDER BY epoch", [run_id]
        ))
        by_epoch: dict[int, dict[str, float]] = {row["epoch"]: {} for row in rows}
        for m in self._db.query(
            "SELECT epoch, name, value FROM metrics WHERE run_id = ? AND split = 'epoch'", [run_id]
        ):
            by_epoch.setdefault(m["epoch"], {})[m["name"]] = m["value"]
        for row in rows:
            row["metrics"] = dict(sorted(by_epoch[row["epoch"]].items(),
                                         key=lambda kv: metric_key(kv[0])))
        return rows

    def runs(self, dataset: str | None = None, name_glob: str | None = None,
             finished: bool = False) -> list[dict[str, Any]]:
        """Rows of the `results` view, oldest run first, each with its parsed ``config`` and the ``tags`` of
        the job that made it (``()`` for a `tcf run`); name_glob is SQL GLOB (case-sensitive).

        The one read of runs for every table, pivot, plot and screen. It is a single SELECT, so SQLite
        answers it from one snapshot: metrics, configs and tags agree while workers write::

            store.runs(dataset="mind", finished=True)[0]["test_ndcg@10"]
        """
        rows = list(self._db.query(  # a run's tags are those of the last job that made it (one pass over jobs)
            "SELECT res.*, runs.config_json AS config_json, job.tags_json AS tags_json "
            "FROM results AS res JOIN runs ON runs.id = res.run_id "
            "LEFT JOIN (SELECT run_id, MAX(id) AS id FROM jobs WHERE run_id IS NOT NULL GROUP BY run_id) AS last "
            "ON last.run_id = res.run_id LEFT JOIN jobs AS job ON job.id = last.id "
            "WHERE (:finished = 0 OR res.status = 'finished') AND (:dataset IS NULL OR res.dataset = :dataset) "
            "AND (:glob IS NULL OR res.name GLOB :glob) ORDER BY res.run_id",
            {"dataset": dataset, "glob": name_glob, "finished": int(finished)},
        ))
        owners = self._owners() if any(r["status"] == "running" for r in rows) else {}
        for row in rows:
            row["config"] = json.loads(row.pop("config_json") or "{}")
            row["tags"] = tuple(json.loads(row.pop("tags_json") or "[]"))
            row.setdefault("protocol", "full")  # a store read as it was before runs recorded one: all were full
            if row["status"] == "running" and row["run_id"] in owners and not owners[row["run_id"]]:
                row["status"] = "interrupted"  # its process is gone: it cannot be training
        return rows

    def _owners(self) -> dict[int, bool]:
        """Running runs of this host: whether the process that owns each still lives (PID and start time)."""
        if not self.has_column("runs", "owner_pid"):
            return {}
        rows = self._db.execute("SELECT id, owner_pid, owner_pid_start FROM runs WHERE status = 'running' "
                                "AND owner_host = ? AND owner_pid IS NOT NULL", [hostname()]).fetchall()
        return {run_id: is_alive(pid, started) for run_id, pid, started in rows}

    def result_columns(self) -> list[str]:
        """Columns of the `results` view, known even when no run matches a filter."""
        return [row[1] for row in self._db.execute("PRAGMA table_info(results)").fetchall()]

    # -- artifacts -----------------------------------------------------------------------------

    def register_artifact(self, kind: str, hash: str, path: str | Path, meta: dict[str, Any],
                          run_id: int | None = None, *, at: str | None = None) -> None:
        """Record a complete artifact (idempotent: registering it again updates the row)."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO artifacts (hash, kind, path, meta_json, run_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, hash) DO UPDATE SET path = excluded.path, "
                "meta_json = excluded.meta_json, run_id = ifnull(excluded.run_id, artifacts.run_id)",
                [hash, kind, str(path), json.dumps(meta, sort_keys=True, default=str), run_id, at or now_iso()],
            )

    # -- progress events -----------------------------------------------------------------------

    def log_event(self, source: str, kind: str, payload: dict[str, Any], run_id: int | None = None, *,
                  job_id: int | None = None, at: str | None = None) -> None:
        """One progress event of a job (``source``, e.g. 'infer:<artifact hash>'); callers rate-limit. ``job_id``
        and ``at`` come from a merged record (else this process's job, and now)."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO events (source, run_id, job_id, time, kind, payload_json) VALUES (?, ?, ?, ?, ?, ?)",
                [source, run_id, job_id if job_id is not None else self.job_id, at or now_iso(), kind,
                 json.dumps(payload, sort_keys=True, default=str)],
            )

    def events(self, source: str | None = None, after_id: int = 0, job_id: int | None = None) -> list[dict]:
        """Events after ``after_id`` (for tailing), oldest first, with ``payload`` parsed."""
        rows = self._db.query(
            "SELECT * FROM events WHERE (:source IS NULL OR source = :source) "
            "AND (:job IS NULL OR job_id = :job) AND id > :after ORDER BY id",
            {"source": source, "after": after_id, "job": job_id},
        )
        return [{**row, "payload": json.loads(row["payload_json"])} for row in rows]
