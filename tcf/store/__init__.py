"""experiments.db: runs, epochs, metrics, jobs, events and the artifact registry, with its migrations (db.py);
the SQL door the job queue uses (sql.py); and the progress protocol jobs write and the Live screen folds
(events.py)."""

from tcf.store.db import Store

__all__ = ["Store"]
