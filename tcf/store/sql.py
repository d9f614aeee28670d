"""The door to experiments.db's SQL for the one module outside the store that writes it: the job queue.

Everything else reads and writes through :class:`~tcf.store.db.Store`'s methods; an import-linter contract
(pyproject.toml) lets only ``tcf.store`` and ``tcf.jobs.queue`` import this module, sqlite3 or sqlite-utils,
and ruff's private-member rule keeps ``Store._db`` out of reach otherwise::

    with store.transaction():
        connection(store).execute("UPDATE jobs SET priority = ? WHERE id = ?", [5, job_id])
"""

from __future__ import annotations

from sqlite_utils import Database

from tcf.store.db import Store


def connection(store: Store) -> Database:
    """The store's sqlite-utils connection (this thread's: a Store is opened per thread)."""
    return store._db  # noqa: SLF001 - this module is the one door to it
