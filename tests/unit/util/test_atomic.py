"""Files the user names are written without clobbering what they are (issue 17, item 5)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from tcf.errors import TcfError
from tcf.util.atomic import write_atomic, write_user_file


def test_a_symlink_stays_a_link_and_its_target_gets_the_data(tmp_path):
    target = tmp_path / "real.tex"
    target.write_text("old")
    os.chmod(target, 0o640)
    link = tmp_path / "table.tex"
    link.symlink_to(target)
    write_user_file(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    dangling = tmp_path / "later.tex"
    dangling.symlink_to(tmp_path / "not-yet.tex")
    write_user_file(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "not-yet.tex").read_text() == "made"


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_user_file(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_character_device_is_written_into_not_replaced():
    before = os.stat("/dev/null")
    write_user_file("/dev/null", "nothing")  # as root this once replaced the machine's /dev/null
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_a_folder_or_a_missing_folder_is_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(TcfError, match="not a regular file"):
        write_user_file(tmp_path / "dir", "x")
    with pytest.raises(TcfError, match="does not exist"):
        write_user_file(tmp_path / "nope" / "x.md", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]  # no temporary file left


def test_write_atomic_leaves_the_old_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_text("old")
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(TcfError, match="state.json: could not write"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_folder_written_through_a_link_keeps_the_link(tmp_path):
    """Sibling for folders (`tcf data synth OUT`, `--text-encoder DIR`): a link to where the folder should go
    stays a link, the folder appears where it points."""
    from tcf.util.atomic import atomic_folder

    link = tmp_path / "data"
    link.symlink_to(tmp_path / "disk" / "data")
    (tmp_path / "disk").mkdir()
    with atomic_folder(link) as tmp:
        (tmp / "behaviors.tsv").write_text("x")
    assert link.is_symlink() and (tmp_path / "disk" / "data" / "behaviors.tsv").read_text() == "x"
