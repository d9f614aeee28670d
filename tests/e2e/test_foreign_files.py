"""Commands that read never change a database, and no command adopts a SQLite file that is not a tcf store
(issue 17, item 6)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from helpers import tcf, tcf_here

from tcf.store.db import Store


def _digest(*paths: Path) -> list[str | None]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None for p in paths]


def _foreign(path: Path) -> Path:
    with sqlite3.connect(path) as c:  # someone else's file: rollback journal, user_version 0, a table
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        c.execute("INSERT INTO notes (text) VALUES ('mine')")
    return path


@pytest.mark.parametrize("args", [("results",), ("results", "--pivot", "dataset:item_tower"), ("queue", "ls"),
                                  ("plot", "--out", "x.png"), ("run", "CONFIG"), ("queue", "add", "CONFIG"),
                                  ("queue", "retry", "--failed")])
def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path, small_dataset, args):
    """Reported: `tcf results --db other.sqlite` switched it to WAL and added tables. Siblings: every
    command that reads, and those that write too."""
    other = _foreign(tmp_path / "other.sqlite")
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    before = _digest(other)
    r = tcf_here(*[str(config) if a == "CONFIG" else a for a in args], "--db", str(other), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {other}: not a tcf result store")
    assert _digest(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml", "other.sqlite"]  # no -wal, no -shm
    with sqlite3.connect(other) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_reading_a_tcf_store_changes_no_byte_of_it(tmp_path, small_dataset):
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  architecture: pop\n")
    db = tmp_path / "experiments.db"
    assert tcf("run", str(config), cwd=tmp_path).returncode == 0  # its own process: all its connections closed
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    before = _digest(*files)
    for args in (("results",), ("results", "--format", "json"), ("queue", "ls"), ("results", "--pivot",
                                                                                    "dataset:item_tower")):
        assert tcf_here(*args, cwd=tmp_path).returncode == 0
    store = Store(db, readonly=True)
    assert [r["name"] for r in store.runs()] == ["small-pop-id"]
    store.close()
    assert _digest(files[0]) == before[:1]


def test_only_writers_create_a_store(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    r = tcf_here("results", "--db", str(empty), cwd=tmp_path)
    assert r.returncode == 2 and "an empty file, not a tcf result store" in r.stderr
    assert empty.stat().st_size == 0
    r = tcf_here("queue", "ls", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert r.returncode == 2 and "no tcf result store there" in r.stderr  # said, not shown as an empty queue
    assert not (tmp_path / "none.db").exists()  # a reader does not create one
    Store(empty).close()  # a writer makes the empty file a store
    with sqlite3.connect(empty) as c:
        assert c.execute("PRAGMA application_id").fetchone()[0] == 0x74636621
