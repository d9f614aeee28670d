"""Files and folders that appear whole or not at all: written under a temporary sibling name, then renamed.

A crash or an error mid-write never leaves a half-written file or folder that looks finished, and the
previous version (a checkpoint, a table a LaTeX build reads) stays intact until the new one is complete::

    write_atomic(path, b"...")                       # bytes or text; fsynced unless durable=False
    with atomic_file(path) as tmp:                   # for writers that want a path (torch.save, savefig)
        torch.save(state, tmp)
    with atomic_folder(out) as tmp:                  # a whole folder (a dataset, a model, an artifact)
        (tmp / "behaviors.tsv").write_text(...)
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tcf.errors import TcfError


def _sibling(path: Path) -> Path:
    """A hidden name next to ``path`` (same filesystem, so the rename is atomic), unique per writer."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends cleanly it is fsynced (``durable``)
    and renamed over ``path``. On any error the temporary file is removed and ``path`` is untouched;
    an OSError becomes a TcfError naming ``path``."""
    path = Path(path)
    tmp = _sibling(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        raise TcfError(f"{path}: could not write ({exc.strerror or exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` whole: see :func:`atomic_file`."""
    with atomic_file(path, durable=durable) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_folder(out: str | Path, *, replace: bool | Callable[[Path], bool] = False) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; when the block ends cleanly it is renamed to ``out``.

    Where ``out`` exists by then: ``replace=False`` renames over it only if it is an empty folder (anything
    else raises OSError); ``True`` removes it first; a callable is asked whether the existing folder may go
    (False: it stands, as a finished build of the same content would, and the new one is discarded).
    On any error the temporary folder is removed.
    """
    out = Path(out).resolve()  # a link is followed: the folder goes where it points, the link stays a link
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists() and replace is not False:
            if callable(replace) and not replace(out):
                shutil.rmtree(tmp)
                return
            shutil.rmtree(out)
        os.replace(tmp, out)  # POSIX: replaces an empty folder, fails on a non-empty one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_user_file(path: str | Path, data: bytes | str) -> None:
    """Write a file the user named (``--output``, ``--out``, an export) without clobbering what it is.

    A symbolic link is followed: its target gets the data, the link stays a link. A regular file (or a new
    path in an existing folder) is written whole (:func:`atomic_file`) and keeps its permission bits; a FIFO
    or a character device (``/dev/stdout``, ``/dev/null``) is written into, never replaced; anything else
    (a folder, a socket, a block device) is refused with a TcfError naming ``path``.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    target = path.resolve()
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TcfError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        try:
            with open(target, "wb") as f:
                f.write(raw)
        except OSError as exc:
            raise TcfError(f"{path}: cannot write ({exc.strerror or exc})") from exc
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TcfError(f"{path}: not a regular file; tcf writes only files, it will not replace this")
    if not target.parent.is_dir():
        raise TcfError(f"{path}: the folder {target.parent} does not exist")
    with atomic_file(target) as tmp:
        tmp.write_bytes(raw)
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
