"""experiments.db (runs, epochs, metrics, jobs, events, artifacts; migrations) and the event protocol."""

from tcf.store.db import Store

__all__ = ["Store"]
