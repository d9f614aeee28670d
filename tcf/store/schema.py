"""The schema of experiments.db: append-only migrations, the self-extending `results` view, the store's marker.

``PRAGMA user_version`` counts the migrations applied; ``PRAGMA application_id`` marks the file as a tcf
store, so a command pointed at some other SQLite file refuses it instead of adding tables to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlite_utils import Database
from sqlite_utils.db import quote_identifier

from tcf.errors import TcfError

APPLICATION_ID = 0x74636621  # "tcf!"
FINAL_SPLITS = ("test", "valid")  # order of the metric columns in the `results` view
RESULT_FIXED_COLUMNS = (
    "run_id", "name", "status", "dataset", "architecture", "item_tower", "protocol",
    "best_epoch", "stopped_epoch", "created_at", "finished_at", "lm_params", "threads",
)
# Metric names become column names and string literals of the `results` view, so only names that
# can never need quoting are accepted: "hr@10", "ndcg@10", "mrr".
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(@[0-9]+)?$")
METRIC_COLUMN = re.compile(r"^(test|valid)_(.+)$")  # a `results` column: split, then metric name


def _m001_initial(db: Database) -> None:
    """Runs, per-epoch training figures and metrics in long format (one row per value)."""
    statements = [
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            config_json TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            status TEXT NOT NULL,
            dataset TEXT,
            architecture TEXT,
            item_tower TEXT,
            host TEXT,
            git_commit TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            best_epoch INTEGER,
            stopped_epoch INTEGER,
            error TEXT
        )""",
        "CREATE INDEX runs_dataset ON runs(dataset)",
        "CREATE INDEX runs_config_hash ON runs(config_hash)",
        """CREATE TABLE epochs (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            epoch INTEGER NOT NULL,
            train_loss REAL,
            seconds REAL,
            PRIMARY KEY (run_id, epoch)
        )""",
        """CREATE TABLE metrics (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            split TEXT NOT NULL CHECK (split IN ('epoch', 'valid', 'test')),
            epoch INTEGER,
            name TEXT NOT NULL,
            value REAL
        )""",
        # epoch is NULL for a final split without a best epoch; ifnull keeps such rows unique too.
        "CREATE UNIQUE INDEX metrics_key ON metrics(run_id, split, ifnull(epoch, -1), name)",
    ]
    for sql in statements:
        db.execute(sql)


def _m002_artifacts(db: Database) -> None:
    """Registry of content-addressed artifacts (token ids, latents, ...) and the run that made them."""
    db.execute("""CREATE TABLE artifacts (
        hash TEXT NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        meta_json TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (kind, hash)
    )""")


def _m003_events(db: Database) -> None:
    """Structured progress events (stage, block range, items done/total, items/s, GPU memory) of any job."""
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload_json TEXT NOT NULL
    )""")
    db.execute("CREATE INDEX events_source ON events(source, id)")


def _m004_lm_params(db: Database) -> None:
    """Parameter count of a run's text encoder: the x axis of the scaling plots (NULL for ID towers)."""
    db.execute("ALTER TABLE runs ADD COLUMN lm_params INTEGER")


def _m005_jobs(db: Database) -> None:
    """The job queue (tcf.jobs): jobs, their dependencies, the workers that run them; events name their job."""
    statements = [
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('infer', 'train')),
            name TEXT NOT NULL,
            config_json TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            key TEXT,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished', 'failed', 'cancelled', 'lost')),
            priority INTEGER NOT NULL DEFAULT 0,
            tags_json TEXT NOT NULL DEFAULT '[]',
            note TEXT NOT NULL DEFAULT '',
            gpus INTEGER NOT NULL DEFAULT 1,
            mem_bytes INTEGER,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            worker_id INTEGER,
            host TEXT,
            pid INTEGER,
            pid_start INTEGER,
            devices TEXT,
            heartbeat REAL,
            peak_mem_bytes INTEGER,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            artifact TEXT,
            exit_code INTEGER,
            error TEXT,
            log_path TEXT
        )""",
        "CREATE INDEX jobs_state ON jobs(state, priority, id)",
        """CREATE TABLE job_deps (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            dep_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            PRIMARY KEY (job_id, dep_id)
        )""",
        "CREATE INDEX job_deps_dep ON job_deps(dep_id)",
        """CREATE TABLE workers (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_start INTEGER,
            devices TEXT NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat REAL NOT NULL,
            stopped_at TEXT,
            status TEXT NOT NULL DEFAULT ''
        )""",
        "ALTER TABLE events ADD COLUMN job_id INTEGER",
        "CREATE INDEX events_job ON events(job_id, id)",
    ]
    for sql in statements:
        db.execute(sql)


def _m006_run_identity(db: Database) -> None:
    """A run's identity, inputs and owner: ``uuid`` (checkpoints carry it, so a resume can only continue its
    own run), ``inputs_json`` (fingerprints of the dataset files, encoder and latents it trained on) and the
    live process that trains it (host, pid, start time: a run whose owner is gone is not running). Marks
    the file as a tcf store."""
    for sql in ("ALTER TABLE runs ADD COLUMN uuid TEXT",
                "UPDATE runs SET uuid = lower(hex(randomblob(16))) WHERE uuid IS NULL",
                "CREATE UNIQUE INDEX runs_uuid ON runs(uuid)",
                "ALTER TABLE runs ADD COLUMN inputs_json TEXT NOT NULL DEFAULT '{}'",
                "ALTER TABLE runs ADD COLUMN owner_host TEXT",
                "ALTER TABLE runs ADD COLUMN owner_pid INTEGER",
                "ALTER TABLE runs ADD COLUMN owner_pid_start INTEGER",
                f"PRAGMA application_id = {APPLICATION_ID}"):
        db.execute(sql)


def _m007_protocol(db: Database) -> None:
    """The evaluation protocol that produced a run's test metrics (``full``, ``cold``): numbers of two protocols
    never compare, so every result row says which. Runs recorded before were all ``full``."""
    db.execute("ALTER TABLE runs ADD COLUMN protocol TEXT NOT NULL DEFAULT 'full'")


def _m008_slurm(db: Database) -> None:
    """Jobs handed to Slurm (tcf.jobs.slurm): the Slurm job id, the sbatch options they were submitted with, the
    state Slurm last reported, and the job's folder on the shared filesystem, where its process writes its
    records; ``merged_records`` holds
    the last record merged per (job, attempt), so that merging the same records twice changes nothing."""
    for sql in ("ALTER TABLE jobs ADD COLUMN slurm_id TEXT",
                "ALTER TABLE jobs ADD COLUMN slurm_options TEXT",
                "ALTER TABLE jobs ADD COLUMN job_dir TEXT",
                "ALTER TABLE jobs ADD COLUMN slurm_state TEXT",
                """CREATE TABLE merged_records (
                    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
                    attempt INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    PRIMARY KEY (job_id, attempt)
                )"""):
        db.execute(sql)


def _m009_run_threads(db: Database) -> None:
    """The CPU threads torch computed a run with (tcf.util.threads): CPU results depend on the count, so a run
    says which it had. NULL for runs recorded before."""
    db.execute("ALTER TABLE runs ADD COLUMN threads INTEGER")


def _m010_job_ids(db: Database) -> None:
    """Job ids are never reused: a removed job's id went to the next job, which then appended to its log and
    showed its events. ``counters`` keeps the highest job id ever given (a trigger keeps it up to date whoever
    inserts); the queue numbers new jobs above it."""
    for sql in ("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
                "INSERT INTO counters (name, value) SELECT 'jobs', ifnull(max(id), 0) FROM jobs",
                "CREATE TRIGGER jobs_high_water AFTER INSERT ON jobs BEGIN "
                "UPDATE counters SET value = max(value, NEW.id) WHERE name = 'jobs'; END"):
        db.execute(sql)


# Append only: never edit or reorder an applied migration; user_version = len(applied).
MIGRATIONS: list[Callable[[Database], None]] = [_m001_initial, _m002_artifacts, _m003_events, _m004_lm_params,
                                                _m005_jobs, _m006_run_identity, _m007_protocol, _m008_slurm,
                                                _m009_run_threads, _m010_job_ids]
READABLE_FROM = 5  # the oldest schema a reader understands: columns added later read as absent


def metric_key(name: str) -> tuple[int, tuple[str | int, ...], int]:
    """The one order of metrics everywhere (view columns, tables, messages): test before valid, then the
    metric's name (numbers in it as numbers: pop2_hr before pop10_hr), then K as a number, so hr@5 < hr@10 <
    ndcg@5. Takes metric names ("hr@10", after any split-prefixed ones) and `results` columns ("test_hr@10")."""
    m = METRIC_COLUMN.match(name)
    split, metric = (FINAL_SPLITS.index(m.group(1)), m.group(2)) if m else (len(FINAL_SPLITS), name)
    base, _, k = metric.partition("@")
    parts = tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", base)))
    return split, parts, int(k) if k.isdigit() else -1


def is_metric_column(column: str) -> bool:
    """Whether a `results` column holds a final metric ("test_hr@10", "valid_ndcg@10")."""
    return METRIC_COLUMN.match(column) is not None


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sync_results_view(db: Database, path: object, force: bool = False) -> None:
    """(Re)create the `results` view so that every (split, metric) present has a column.

    Must run inside a write transaction: DDL in SQLite is transactional, so readers see either
    the old or the new view, never none.
    """
    pairs = db.execute("SELECT DISTINCT split, name FROM metrics WHERE split IN (?, ?)", FINAL_SPLITS).fetchall()
    pairs = sorted(pairs, key=lambda p: metric_key(f"{p[0]}_{p[1]}"))
    metric_columns = [f"{split}_{name}" for split, name in pairs]
    wanted = [*RESULT_FIXED_COLUMNS, *metric_columns]
    current = [row[1] for row in db.execute("PRAGMA table_info(results)").fetchall()]
    if current == wanted and not force:
        return
    selects = [f"r.{c} AS {c}" for c in RESULT_FIXED_COLUMNS[1:]]
    selects.insert(0, "r.id AS run_id")
    for (split, name), column in zip(pairs, metric_columns, strict=True):
        if not METRIC_NAME.match(name):  # rows written by something other than this class
            raise TcfError(f"{path}: invalid metric name {name!r} in table metrics")
        selects.append(f"MAX(CASE WHEN m.split = {_sql_string(split)} AND m.name = {_sql_string(name)} "
                       f"THEN m.value END) AS {quote_identifier(column)}")
    select_sql = ("SELECT " + ",\n  ".join(selects) + "\nFROM runs AS r\n"
                  "LEFT JOIN metrics AS m ON m.run_id = r.id AND m.split IN ('valid', 'test')\nGROUP BY r.id")
    db.execute("DROP VIEW IF EXISTS results")
    db.create_view("results", select_sql)



