"""tcf.store.db on real SQLite files: schema, migrations, runs, epochs, the results view, concurrency."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import ROOT

import tcf.store.db as store_mod
import tcf.store.schema as schema
from tcf.errors import TcfError
from tcf.store.db import Store
from tcf.store.sql import connection as sql


def _run(store: Store, name: str = "run", dataset: str = "mind", **kw) -> int:
    args = dict(name=name, config={"lr": 1e-3, "ks": [10]}, config_hash="abc", dataset=dataset,
                architecture="sasrec", item_tower="id")
    args.update(kw)
    return store.create_run(**args)


def _raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as someone using the sqlite3 CLI would see the file."""
    return sqlite3.connect(str(path))


def test_schema_created_and_reopening_is_idempotent(tmp_path):
    path = tmp_path / "sub" / "experiments.db"
    store = Store(path)
    run_id = _run(store)
    store.close()
    again = Store(path)  # must neither fail on existing tables nor lose data
    assert again.get_run(run_id)["name"] == "run"
    assert again.path == path.resolve()
    again.close()
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert {"runs", "epochs", "metrics", "results"} <= names


def test_busy_timeout_is_30_seconds(tmp_path):
    store = Store(tmp_path / "e.db")
    assert sql(store).execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_pending_migrations_apply_once_in_order(tmp_path, monkeypatch):
    path = tmp_path / "e.db"
    Store(path).close()
    calls = []

    def m002_add_note(db):
        calls.append("m002")
        db.execute("ALTER TABLE runs ADD COLUMN note TEXT")  # fails if ever applied twice

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, m002_add_note])
    Store(path).close()
    Store(path).close()
    assert calls == ["m002"]
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(runs)")]


def test_failed_migration_rolls_back_everything(tmp_path, monkeypatch):
    path = tmp_path / "e.db"
    Store(path).close()

    def m002_broken(db):
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    applied = len(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, m002_broken])
    with pytest.raises(RuntimeError, match="boom"):
        Store(path)
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == applied
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "e.db"
    Store(path).close()
    conn = _raw(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(TcfError, match="newer"):
        Store(path)


def test_not_a_database_is_a_user_error(tmp_path):
    path = tmp_path / "e.db"
    path.write_text("this is not sqlite, just some text that is long enough " * 20)
    with pytest.raises(TcfError, match=re.escape(str(path))):
        Store(path)


def test_create_run_records_context(tmp_path):
    store = Store(tmp_path / "e.db")
    run_id = _run(store, name="mind-sasrec")
    run = store.get_run(run_id)
    assert run["status"] == "created"
    assert run["config"] == {"lr": 1e-3, "ks": [10]}
    assert run["config_hash"] == "abc"
    assert run["host"]
    created = datetime.fromisoformat(run["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=1)
    assert run["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", run["git_commit"])
    assert run["started_at"] is None and run["finished_at"] is None
    assert _run(store) == run_id + 1


def test_status_timestamps(tmp_path, monkeypatch):
    store = Store(tmp_path / "e.db")
    run_id = _run(store)
    clock = iter(f"2025-01-01T00:00:0{i}+00:00" for i in range(10))
    monkeypatch.setattr(store_mod, "now_iso", lambda: next(clock))
    store.set_status(run_id, "running")
    store.set_status(run_id, "interrupted")
    run = store.get_run(run_id)
    assert run["started_at"] == "2025-01-01T00:00:00+00:00"
    assert run["finished_at"] == "2025-01-01T00:00:01+00:00"
    store.set_status(run_id, "running")  # resumed: keeps the first start, is no longer finished
    run = store.get_run(run_id)
    assert (run["started_at"], run["finished_at"]) == ("2025-01-01T00:00:00+00:00", None)
    store.set_status(run_id, "failed", error="CUDA out of memory")
    run = store.get_run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == "CUDA out of memory"
    assert run["finished_at"] == "2025-01-01T00:00:03+00:00"
    with pytest.raises(ValueError, match="status"):
        store.set_status(run_id, "done")


def test_unknown_run_id_raises_tcf_error(tmp_path):
    store = Store(tmp_path / "e.db")
    with pytest.raises(TcfError, match="no run with id 42"):
        store.get_run(42)
    with pytest.raises(TcfError):
        store.epochs(42)
    with pytest.raises(TcfError):
        store.set_status(42, "running")
    with pytest.raises(TcfError):
        store.log_epoch(42, 1, 0.5, 1.0, {"hr@10": 0.1})
    with pytest.raises(TcfError):
        store.log_final(42, "test", {"hr@10": 0.1}, 1, 1)
    assert sql(store).execute("SELECT count(*) FROM metrics").fetchone()[0] == 0


def test_epochs_in_order_and_relogging_replaces(tmp_path):
    store = Store(tmp_path / "e.db")
    run_id = _run(store)
    other = _run(store)
    store.log_epoch(run_id, 2, 1.5, 10.0, {"ndcg@10": 0.02, "hr@10": 0.04})
    store.log_epoch(run_id, 1, 2.5, 11.0, {"hr@10": 0.03})
    store.log_epoch(other, 1, 9.0, 1.0, {"hr@10": 0.9})
    store.log_epoch(run_id, 2, 1.4, 12.0, {"hr@10": 0.05})  # resumed run re-logs epoch 2
    assert store.epochs(run_id) == [
        {"epoch": 1, "train_loss": 2.5, "seconds": 11.0, "metrics": {"hr@10": 0.03}},
        {"epoch": 2, "train_loss": 1.4, "seconds": 12.0, "metrics": {"hr@10": 0.05}},
    ]
    # per-epoch metrics are not final results
    assert "valid_hr@10" not in store.runs()[0]


def test_invalid_metric_name_is_rejected_before_writing(tmp_path):
    store = Store(tmp_path / "e.db")
    run_id = _run(store)
    for bad in ['hr@10"; DROP TABLE runs; --', "HR@10", "hr@", "hr 10", ""]:
        with pytest.raises(ValueError, match="metric name"):
            store.log_final(run_id, "test", {"hr@10": 0.1, bad: 0.2}, 1, 1)
        with pytest.raises(ValueError, match="metric name"):
            store.log_epoch(run_id, 1, 0.1, 1.0, {bad: 0.2})
    assert sql(store).execute("SELECT count(*) FROM metrics").fetchone()[0] == 0
    assert store.epochs(run_id) == []
    with pytest.raises(ValueError, match="split"):
        store.log_final(run_id, "epoch", {"hr@10": 0.1}, 1, 1)


def test_results_view_gains_columns_for_new_metrics(tmp_path):
    path = tmp_path / "e.db"
    store = Store(path)
    first = _run(store, name="a")
    store.log_final(first, "valid", {"hr@10": 0.1, "ndcg@10": 0.05}, best_epoch=3, stopped_epoch=None)
    store.log_final(first, "test", {"hr@10": 0.2, "ndcg@10": 0.07}, best_epoch=None, stopped_epoch=8)
    second = _run(store, name="b")
    store.log_final(second, "test", {"hr@20": 0.3, "hr@5": 0.01, "hr@10": 0.15}, best_epoch=2,
                    stopped_epoch=4)

    conn = _raw(path)  # a separate connection, like the sqlite3 CLI
    columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    assert columns == [
        "run_id", "name", "status", "dataset", "architecture", "item_tower", "protocol", "best_epoch",
        "stopped_epoch", "created_at", "finished_at", "lm_params", "threads",
        "test_hr@5", "test_hr@10", "test_hr@20", "test_ndcg@10", "valid_hr@10", "valid_ndcg@10",
    ]
    assert conn.execute('SELECT name, "test_hr@20" FROM results ORDER BY run_id').fetchall() == [
        ("a", None), ("b", 0.3)]
    rows = store.runs()
    assert len(rows) == 2  # one row per run, however many metrics
    assert rows[0]["valid_hr@10"] == 0.1 and rows[0]["test_ndcg@10"] == 0.07
    # None keeps what the other call recorded
    assert (rows[0]["best_epoch"], rows[0]["stopped_epoch"]) == (3, 8)
    assert (rows[1]["best_epoch"], rows[1]["stopped_epoch"]) == (2, 4)

    # log_final replaces the split's earlier metrics; a metric no run has any more loses its column
    store.log_final(second, "test", {"hr@10": 0.5}, best_epoch=2, stopped_epoch=4)
    row = store.runs()[1]
    assert row["test_hr@10"] == 0.5 and "test_hr@20" not in row and "test_hr@5" not in row


def test_run_without_metrics_appears_in_results(tmp_path):
    store = Store(tmp_path / "e.db")
    run_id = _run(store)
    rows = store.runs()
    assert [r["run_id"] for r in rows] == [run_id]
    assert rows[0]["status"] == "created"


def test_results_filters(tmp_path):
    store = Store(tmp_path / "e.db")
    for name, dataset in [("mind-sasrec", "mind"), ("mind-dssm", "mind"), ("hm-sasrec", "hm"),
                          ("MIND-upper", "mind")]:
        _run(store, name=name, dataset=dataset)
    names = lambda rows: [r["name"] for r in rows]  # noqa: E731
    assert names(store.runs(dataset="mind")) == ["mind-sasrec", "mind-dssm", "MIND-upper"]
    assert names(store.runs(name_glob="*-sasrec")) == ["mind-sasrec", "hm-sasrec"]
    assert names(store.runs(name_glob="mind-*")) == ["mind-sasrec", "mind-dssm"]  # GLOB: case-sensitive
    assert names(store.runs(dataset="hm", name_glob="mind*")) == []
    assert names(store.runs(dataset="mind'; --")) == []
    assert len(store.runs()) == 4


def _writer(path: str, worker: int, n_epochs: int, barrier) -> None:
    barrier.wait()  # open the fresh file together: migrations and WAL setup race too
    store = Store(path)
    run_id = store.create_run(name=f"w{worker}", config={"w": worker}, config_hash=str(worker),
                              dataset="synth", architecture="sasrec", item_tower="id")
    store.set_status(run_id, "running")
    for epoch in range(1, n_epochs + 1):
        store.log_epoch(run_id, epoch, 1.0 / epoch, 0.01, {"hr@10": epoch / 1000, "ndcg@10": worker / 10})
        store.runs()  # readers interleave with writers
    store.log_final(run_id, "test", {f"hr@{10 + worker}": 0.5}, best_epoch=n_epochs, stopped_epoch=n_epochs)
    store.set_status(run_id, "finished")
    store.close()


def test_two_processes_write_concurrently(tmp_path):
    path = str(tmp_path / "e.db")
    n_epochs = 300
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, w, n_epochs, barrier)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]  # an exception ('database is locked') exits 1

    store = Store(path)
    rows = {r["name"]: r for r in store.runs()}
    assert set(rows) == {"w1", "w2"}
    for worker in (1, 2):
        row = rows[f"w{worker}"]
        assert row["status"] == "finished"
        assert row[f"test_hr@{10 + worker}"] == 0.5
        epochs = store.epochs(row["run_id"])
        assert [e["epoch"] for e in epochs] == list(range(1, n_epochs + 1))
        assert all(e["metrics"] == {"hr@10": e["epoch"] / 1000, "ndcg@10": worker / 10} for e in epochs)
    n_metrics = sql(store).execute("SELECT count(*) FROM metrics WHERE split = 'epoch'").fetchone()[0]
    assert n_metrics == 2 * 2 * n_epochs


def test_events_are_tailed_in_order(tmp_path):
    store = Store(tmp_path / "e.db")
    for i in range(5):
        store.log_event("infer:abc", "progress", {"items_done": i * 10, "n_items": 40})
    store.log_event("infer:other", "range_start", {"start": 0, "stop": 6})
    first = store.events("infer:abc")
    assert [e["payload"]["items_done"] for e in first] == [0, 10, 20, 30, 40]
    assert store.events("infer:abc", after_id=first[2]["id"]) == first[3:]
    assert [e["kind"] for e in store.events()] == ["progress"] * 5 + ["range_start"]


def test_eight_processes_writing_events_at_50_hz_lose_none(tmp_path, monkeypatch):
    """The bench's load for 2 s (bench/event_load.py runs it for a minute): no event lost, none twice,
    no 'database is locked'."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # spawned writers import it too
    import event_load as bench

    res = bench.run(tmp_path / "experiments.db", processes=8, hz=50, seconds=2, readers=1)
    assert res["errors"] == 0, res["first_error"]
    assert res["missing"] == 0 and res["duplicated"] == 0
    assert res["found"] == res["written"] >= 0.9 * res["target_events"]
    assert res["reads"] > 0


def test_runs_recorded_before_protocols_read_full(tmp_path, monkeypatch):
    """Migration 7 gives every run a protocol; runs of a store written before it existed were all full, and a
    reader of such a store (read-only, never migrated) says so too."""
    path = tmp_path / "e.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:6])  # the store as schema 6 made it
    monkeypatch.setattr(schema, "RESULT_FIXED_COLUMNS", tuple(c for c in schema.RESULT_FIXED_COLUMNS
                                                              if c not in ("protocol", "threads")))
    old = Store(path)
    with old.transaction():
        sql(old).execute("INSERT INTO runs (name, uuid, config_json, config_hash, status, created_at) "
                         "VALUES ('before', 'u1', '{}', 'h', 'finished', '2025-01-01T00:00:00+00:00')")
    run_id = 1
    old.log_final(run_id, "test", {"hr@10": 0.2}, best_epoch=1, stopped_epoch=1)
    old.close()
    assert "protocol" not in [r[1] for r in _raw(path).execute("PRAGMA table_info(runs)")]
    monkeypatch.undo()
    readonly = Store(path, readonly=True)
    assert [row["protocol"] for row in readonly.runs()] == ["full"]
    readonly.close()

    store = Store(path)
    cold = _run(store, name="after", protocol="cold")
    assert [(row["name"], row["protocol"]) for row in store.runs()] == [("before", "full"), ("after", "cold")]
    store.close()
    rows = _raw(path).execute("SELECT run_id, protocol FROM results ORDER BY run_id").fetchall()
    assert rows == [(run_id, "full"), (cold, "cold")]


def test_a_metric_that_does_not_apply_is_null(tmp_path):
    """An ID tower's cold-item metrics are recorded as NULL, not as a number (and not left out)."""
    path = tmp_path / "e.db"
    store = Store(path)
    run_id = _run(store, protocol="cold")
    store.log_final(run_id, "test", {"hr@10": None, "ndcg@10": None}, best_epoch=2, stopped_epoch=3)
    store.log_final(run_id, "valid", {"hr@10": 0.25}, best_epoch=2, stopped_epoch=3)
    assert store.get_run(run_id)["metrics"] == {"test_hr@10": None, "test_ndcg@10": None, "valid_hr@10": 0.25}
    (row,) = store.runs()
    assert row["test_hr@10"] is None and row["valid_hr@10"] == 0.25 and row["protocol"] == "cold"
    store.close()
    conn = _raw(path)
    assert conn.execute("SELECT count(*) FROM metrics WHERE split = 'test' AND value IS NULL").fetchone()[0] == 2
    assert conn.execute('SELECT "test_hr@10" FROM results').fetchone() == (None,)


def test_a_nested_transaction_commits_or_rolls_back_with_the_outer_one(tmp_path):
    """What merging a job's records relies on: the rows a record writes and the mark of its merge are one commit."""
    store = Store(tmp_path / "experiments.db")
    run = store.create_run(name="r", config={}, config_hash="h", dataset="d", architecture="pop", item_tower="id")
    with pytest.raises(RuntimeError), store.transaction():
        store.log_epoch(run, 1, 1.0, 1.0, {"hr@10": 0.5})  # its own transaction() joins the outer one
        raise RuntimeError("the merge fails after the record's rows")
    assert store.epochs(run) == []
    with store.transaction():
        store.log_epoch(run, 1, 1.0, 1.0, {"hr@10": 0.5})
        store.set_status(run, "finished", at="2025-01-01T00:00:00+00:00")
    assert Store(tmp_path / "experiments.db").get_run(run)["finished_at"] == "2025-01-01T00:00:00+00:00"
    assert len(store.epochs(run)) == 1
