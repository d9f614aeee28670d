"""The latent store of one pre-inference job: hidden states after k blocks, one memory-mapped file per k.

Boundary k (the method's ``freeze@k``: k blocks applied, k = N after the final norm) is
``boundary-{k:03d}.npy``, a plain ``.npy`` of shape [n_items, max_tokens, hidden] in the latent dtype
(bf16 has no numpy dtype, so it is stored as its uint16 bit patterns). Row r belongs to ``items.json[r]``;
``lengths.npy`` holds each item's real token count (positions past it are zeros). The item embeddings
of the whole model are ``pooled-{mean,first,last}.npy`` ([n_items, hidden]: masked mean over the real
tokens, the first token, the last real token). ``state.json`` lists what is committed (``boundaries``,
``pooled``); a file that state.json does not list is not complete, whatever its name.

    store = LatentStore("artifacts/latents/ab12")
    with store.writer(4, (n, t, h), "bf16") as w:   # boundary-004.npy.tmp, renamed and committed on exit
        w.write(rows, hidden)                         # rows: int array, hidden: [len(rows), <=t, h]
    store.read(4, rows=[0, 5])                        # torch tensor [2, t, h], read through a memory map
    store.read("mean")                                # pooled item embeddings [n, h]

Each file is written to ``.tmp``, preallocated (disk full shows up at once, as a :class:`TcfError`,
not as a crash halfway), flushed, fsynced and renamed; state.json is replaced atomically after it.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcf.errors import TcfError
from tcf.lm.pooling import POOLINGS
from tcf.util.atomic import fsync_dir, write_atomic

STATE = "state.json"
Key = int | str  # a boundary (blocks applied) or a pooling name
ITEMS = "items.json"
LENGTHS = "lengths.npy"

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
_NUMPY = {"bf16": np.uint16, "fp16": np.float16, "fp32": np.float32}
_NAMES = {np.dtype(v): k for k, v in _NUMPY.items()}


def dtype_name(dtype: str | torch.dtype) -> str:
    """'bf16' for torch.bfloat16, 'bfloat16' or 'bf16'; TcfError for dtypes latents cannot use."""
    name = str(dtype).removeprefix("torch.").lower()
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise TcfError(f"unsupported latent dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return name


def _to_torch(a: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if name == "bf16" else torch.from_numpy(a)


class ArrayFile:
    """Rows of one ``.npy`` array moved with ``pread``/``pwrite`` through one file descriptor.

    Plain system calls instead of a memory map: filling a fresh file through a shared mapping costs a
    page fault per 4 KiB page (about 1 GB/s), a ``pwrite`` of a whole row streams into the page cache.
    The descriptor stays valid when the file is renamed, so a boundary can be committed while the next
    range still reads it."""

    def __init__(self, path: Path, dtype: str, writable: bool = False, sync_every: int | None = None):
        self.path = path
        self.sync_every, self._unsynced = sync_every, 0
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as exc:
            os.close(self.fd)
            raise TcfError(f"{path}: not a latents array ({exc})") from exc
        self.shape = tuple(shape)
        self.dtype = DTYPES[dtype]
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def _rows(self, t: torch.Tensor) -> np.ndarray:
        """[b, bytes] uint8 view of a contiguous CPU tensor, one row per item."""
        return t.view(len(t), -1).view(torch.uint8).numpy()

    def write(self, rows: Sequence[int] | np.ndarray, hidden: torch.Tensor) -> None:
        """Store ``hidden`` as rows ``rows``: [len(rows), L, H] at positions 0..L-1 (L <= max_tokens) of a
        boundary (positions past L keep their zeros), or [len(rows), H] of pooled embeddings."""
        hidden = hidden.detach().to("cpu", self.dtype).contiguous()
        data = self._rows(hidden)
        try:
            for j, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
                view, at = memoryview(data[j]), self.offset + row * self.row_bytes
                while view:
                    n = os.pwrite(self.fd, view, at)
                    view, at = view[n:], at + n
            self._unsynced += data.nbytes
            if self.sync_every is not None and self._unsynced >= self.sync_every:
                os.fdatasync(self.fd)
                self._unsynced = 0
        except OSError as exc:
            raise TcfError(f"{self.path}: could not write latents: {exc.strerror or exc}") from exc

    def read(self, rows: Sequence[int] | np.ndarray, length: int | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``rows`` (positions [0, length) of a boundary) into ``out`` (e.g. pinned memory) or a new tensor."""
        shape = (len(rows), *self.shape[1:])
        if length is not None and len(shape) == 3:
            shape = (shape[0], length, shape[2])
        out = torch.empty(shape, dtype=self.dtype) if out is None else out
        data = self._rows(out)
        for j, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            view, at = memoryview(data[j]), self.offset + row * self.row_bytes
            while view:
                n = os.preadv(self.fd, [view], at)
                if n == 0:
                    raise TcfError(f"{self.path}: ends before row {row} (truncated latents)")
                view, at = view[n:], at + n
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LatentStore:
    """One folder of boundaries plus ``state.json``; see the module docstring."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._maps: dict[int, tuple[np.ndarray, str]] = {}  # boundary -> (read-only memory map, dtype name)

    # --- state ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The stored state ({} when there is none yet); a boundary listed but missing on disk is dropped."""
        path = self.folder / STATE
        if not path.is_file():
            return {}
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TcfError(f"{path}: unreadable pre-inference state ({exc}); delete the folder to start over") from exc
        recorded = state.get("volatile", {})
        boot = boot_id()
        state["volatile"] = {k: b for k, b in recorded.items() if b == boot}  # from earlier boots: maybe lost

        def alive(k: Key) -> bool:
            return self.path(k).is_file() and (str(k) not in recorded or str(k) in state["volatile"])

        state["boundaries"] = [k for k in state.get("boundaries", []) if alive(k)]
        state["pooled"] = [k for k in state.get("pooled", []) if k in POOLINGS and alive(k)]
        return state

    def update_state(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into state.json (atomically) and return the new state."""
        state = {**self.state(), **fields}
        state["boundaries"] = sorted(set(state.get("boundaries", [])))
        state["pooled"] = sorted(set(state.get("pooled", [])))
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
        return state

    def committed(self) -> list[int]:
        """Boundaries written completely, ascending."""
        return sorted(self.state().get("boundaries", []))

    def has_pooled(self) -> bool:
        """Whether every pooled embedding file is committed: the job's final output exists."""
        return set(POOLINGS) <= set(self.state().get("pooled", []))

    def path(self, k: Key) -> Path:
        if isinstance(k, str):
            if k not in POOLINGS:
                raise TcfError(f"unknown pooling {k!r}: use one of {', '.join(POOLINGS)}")
            return self.folder / f"pooled-{k}.npy"
        return self.folder / f"boundary-{k:03d}.npy"

    # --- items ------------------------------------------------------------------------------------------

    def write_items(self, item_keys: Sequence[str], lengths: np.ndarray) -> None:
        """Row order (``items.json``) and real token counts (``lengths.npy``), both atomic."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / ITEMS, json.dumps(list(item_keys)).encode())
        buf = io.BytesIO()
        np.save(buf, np.asarray(lengths, dtype=np.int32))
        write_atomic(self.folder / LENGTHS, buf.getvalue())

    def item_keys(self) -> list[str]:
        return json.loads((self.folder / ITEMS).read_text())

    def lengths(self) -> np.ndarray:
        return np.load(self.folder / LENGTHS)

    # --- boundaries -------------------------------------------------------------------------------------

    def _tmp(self, k: Key) -> Path:
        return self.path(k).with_name(self.path(k).name + ".tmp")

    def create(self, k: Key, shape: tuple[int, ...], dtype: str | torch.dtype) -> None:
        """A fresh, zero-filled ``.tmp`` file for boundary or pooling ``k`` (disk space reserved now)."""
        name = dtype_name(dtype)
        tmp = self._tmp(k)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            tmp.unlink(missing_ok=True)
            dt = np.dtype(_NUMPY[name])
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(shape)})
                f.truncate(f.tell() + int(np.prod(shape)) * dt.itemsize)
            _preallocate(tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TcfError(f"{tmp}: could not create latents of shape {list(shape)} {name} "
                           f"({_gib(shape, name)}): {exc.strerror or exc}") from exc

    def open_tmp(self, k: Key, dtype: str | torch.dtype, sync_every: int | None = None) -> ArrayFile:
        """Read/write access to ``k``'s ``.tmp`` file (several ranks may fill one); ``sync_every`` bytes
        written, the data is flushed to disk (so a durable commit has little left to do)."""
        return ArrayFile(self._tmp(k), dtype_name(dtype), writable=True, sync_every=sync_every)

    def open(self, k: Key) -> ArrayFile:
        """Read access to committed ``k``."""
        name = self._map(k)[1]
        return ArrayFile(self.path(k), name)

    def commit(self, k: Key, dtype: str | torch.dtype, durable: bool = True) -> None:
        """Rename ``k``'s ``.tmp`` into place, then list it in state.json.

        ``durable`` fsyncs the data first. A boundary that is consumed a few seconds later need not be:
        it is listed as volatile with this boot's id instead, so it survives any crash of the process
        (the page cache holds it) and counts as missing after a reboot, when it may not be on disk."""
        tmp = self._tmp(k)
        boot = None if durable else boot_id()
        try:
            if boot is None:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path(k))
            if boot is None:
                fsync_dir(self.folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TcfError(f"{tmp}: could not finish writing latents: {exc.strerror or exc}") from exc
        self._maps.pop(k, None)
        state = self.state()
        volatile = {key: b for key, b in state.get("volatile", {}).items() if key != str(k)}
        if boot is not None:
            volatile[str(k)] = boot
        listing = "pooled" if isinstance(k, str) else "boundaries"
        self.update_state(**{listing: [*state.get(listing, []), k]}, latent_dtype=dtype_name(dtype), volatile=volatile)

    def release(self, k: Key) -> None:
        """Drop this process's memory map of boundary ``k`` (another process may delete the file)."""
        self._maps.pop(k, None)

    def partial(self, k: Key) -> bool:
        """Whether ``k`` has a ``.tmp`` file being filled (a chunk schedule fills one across runs)."""
        return self._tmp(k).is_file()

    def discard(self, k: Key) -> None:
        self._tmp(k).unlink(missing_ok=True)

    @contextmanager
    def writer(self, k: Key, shape: tuple[int, ...], dtype: str | torch.dtype) -> Iterator[ArrayFile]:
        """Yield a writer for a fresh, zero-filled ``k``; commit it if the block exits cleanly.

        Any error removes the ``.tmp`` file; an OSError (disk full, …) becomes a TcfError naming it.
        A ``.tmp`` left by a killed process is simply overwritten.
        """
        self.create(k, shape, dtype)
        writer = self.open_tmp(k, dtype)
        try:
            yield writer
        except BaseException:
            writer.close()
            self.discard(k)
            raise
        writer.close()
        self.commit(k, dtype)

    def _map(self, k: Key) -> tuple[np.ndarray, str]:
        if k not in self._maps:
            state = self.state()
            if k not in state.get("pooled" if isinstance(k, str) else "boundaries", []):
                what = f"pooling {k!r}" if isinstance(k, str) else f"boundary {k}"
                raise TcfError(f"{self.path(k)}: {what} is not committed in {self.folder / STATE}")
            array = np.load(self.path(k), mmap_mode="c")  # private: writable for torch, never written back
            self._maps[k] = (array, state.get("latent_dtype") or _NAMES.get(array.dtype, "fp32"))
        return self._maps[k]

    def view(self, k: Key) -> torch.Tensor:
        """Committed ``k`` as a CPU tensor backed by its memory map (nothing read until it is indexed)."""
        array, name = self._map(k)
        return _to_torch(array, name)

    def read(self, k: Key, rows: Sequence[int] | np.ndarray | None = None, length: int | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Committed boundary (or pooling) ``k`` as a CPU tensor: all rows, or ``rows`` (any order), positions
        [0, length). Only the requested rows are copied (read arrays larger than memory in row chunks);
        ``out`` (e.g. pinned memory) receives them when given."""
        view = self.view(k)
        if view.dim() == 3 and length is not None:
            view = view[:, :length]
        if rows is None:
            return out.copy_(view) if out is not None else view.clone()
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        if out is not None:
            return torch.index_select(view, 0, index, out=out)
        return torch.index_select(view, 0, index)

    def delete(self, k: Key) -> None:
        """Forget ``k`` (state first, so a crash leaves an unlisted file, never a listed missing one)."""
        self._maps.pop(k, None)
        state = self.state()
        volatile = {key: b for key, b in state.get("volatile", {}).items() if key != str(k)}
        if isinstance(k, str):
            if k in state.get("pooled", []):
                self.update_state(pooled=[p for p in state["pooled"] if p != k], volatile=volatile)
        elif k in state.get("boundaries", []):
            self.update_state(boundaries=[b for b in state["boundaries"] if b != k], volatile=volatile)
        self.path(k).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every boundary, temporary file and the state: an empty store."""
        self._maps.clear()
        for pattern in ("boundary-*.npy*", "pooled-*.npy*"):
            for path in self.folder.glob(pattern):
                path.unlink(missing_ok=True)
        (self.folder / STATE).unlink(missing_ok=True)


def boot_id() -> str | None:
    """This boot of the machine (Linux); None where unknown, which makes every commit durable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _gib(shape: Sequence[int], name: str) -> str:
    return f"{int(np.prod(shape)) * np.dtype(_NUMPY[name]).itemsize / (1 << 30):.2f} GiB"


def _preallocate(path: Path) -> None:
    """Reserve the file's blocks now: a full disk is an OSError here, not a SIGBUS on a later page write."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)
