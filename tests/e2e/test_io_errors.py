"""Failures of the machine underneath a command (issue 17, item 8): a locked, corrupt or unreachable store,
a disk that fills during a run, a terminal that cannot show the output. One `error:` line naming the file,
no run left `running`, no file that looks complete but is not."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading

from helpers import tcf, tcf_here

import tcf.store.db as store_db
import tcf.util.atomic as atomic
from tcf.store.db import Store


def _pop(tmp_path, dataset, name: str = "exp.yaml", extra: str = "") -> str:
    p = tmp_path / name
    p.write_text(f"dataset:\n  path: {dataset}\nmodel:\n  architecture: pop\n{extra}")
    return str(p)


def _one_error_line(r, starts: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), r.stderr
    assert "Traceback" not in r.stderr


def test_a_store_locked_by_another_process_is_one_line(tmp_path, small_dataset, monkeypatch):
    db = tmp_path / "experiments.db"
    Store(db).close()
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = tcf_here("run", _pop(tmp_path, small_dataset), cwd=tmp_path)
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 2
    _one_error_line(r, f"error: {db}: ")
    assert "locked" in r.stderr
    assert Store(db).runs() == []  # nothing was recorded, so nothing is left running


def test_a_corrupt_store_is_one_line_for_readers_and_writers(tmp_path, small_dataset):
    db = tmp_path / "experiments.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    for args in (("results",), ("queue", "ls"), ("run", _pop(tmp_path, small_dataset))):
        r = tcf_here(*args, cwd=tmp_path)
        assert r.returncode == 2
        _one_error_line(r, f"error: {db}: ")


def test_a_store_where_no_folder_can_be_made_is_one_line(tmp_path, small_dataset):
    (tmp_path / "file").write_text("not a folder")
    r = tcf_here("run", _pop(tmp_path, small_dataset), "--db", str(tmp_path / "file" / "e.db"), cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r, f"error: {tmp_path / 'file' / 'e.db'}: cannot open the experiment store")


def test_a_disk_that_fills_during_a_run_fails_it_with_one_line(tmp_path, small_dataset, monkeypatch):
    """The checkpoint written after the first epoch hits ENOSPC: the run is failed (not left running), no
    checkpoint that looks complete is left, and the line names the file."""
    real = os.replace

    def full(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset:\n  path: {small_dataset}\nmodel:\n  embedding_dim: 16\ntrain:\n  epochs: 2\n")
    r = tcf_here("run", str(config), cwd=tmp_path)
    assert r.returncode == 2
    _one_error_line(r, "error: ")
    assert "No space left on device" in r.stderr and ".pt" in r.stderr
    (run,) = Store(tmp_path / "experiments.db").runs()
    assert run["status"] == "failed"
    assert not list((tmp_path / "artifacts" / "checkpoints").rglob("*.pt*"))


def test_a_terminal_that_cannot_show_the_output_gets_escapes(tmp_path, small_dataset):
    """A non-UTF-8 locale: the comparison table and the result table still print, with escapes."""
    cfg = _pop(tmp_path, small_dataset, extra="name: café ± naïve\n")
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}
    r = tcf("run", cfg, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "caf\\xe9" in r.stdout
    r = tcf("results", "--format", "md", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "caf\\xe9" in r.stdout
    assert json.loads(tcf("results", "--format", "json", cwd=tmp_path).stdout)[0]["name"] == "café ± naïve"


def test_a_crash_of_a_second_thread_never_writes_a_partial_store_file(tmp_path):
    """Concurrent writers, one failing mid-way: the store holds whole transactions only."""
    db = tmp_path / "e.db"
    Store(db).close()

    def write(i: int) -> None:
        store = Store(db)
        run = store.create_run(name=f"r{i}", config={}, config_hash="h", dataset="d", architecture="pop",
                               item_tower="id")
        try:
            with store.transaction():
                store._db.execute("UPDATE runs SET name = 'half' WHERE id = ?", [run])
                if i % 2:
                    raise RuntimeError("crash inside the transaction")
        except RuntimeError:
            pass
        store.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(r["name"] for r in Store(db).runs())
    assert names == ["half", "half", "half", "r1", "r3", "r5"]
