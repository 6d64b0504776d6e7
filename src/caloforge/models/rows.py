"""Per-shower training arrays too large for memory, read from disk a batch at a time.

A training draws its batches by index from the whole training set (``rows[idx]``), so a file of
200k CaloChallenge dataset-2 showers (5.2 GB of float32 voxels) or more would have to sit in
memory. :func:`shower_rows` keeps such an array in memory when it is small (up to
:func:`in_memory_bytes`, 2 GiB unless ``CALOFORGE_IN_MEMORY_GB`` says otherwise: every shipped
training set) and otherwise writes it once, uncompressed, to a scratch file in the cache
(``~/.cache/caloforge/rows``, reused while the source file is unchanged) from which
:class:`DiskRows` reads just the rows of each batch. The batches, and therefore the training,
are the same either way; the memory a process holds is that of a batch, not of the file (the
operating system's page cache, which it may reclaim, keeps the hot part of the scratch file).

>>> import numpy as np, tempfile, pathlib
>>> src = pathlib.Path(tempfile.mkdtemp()) / "x.h5"; _ = src.write_bytes(b"x")
>>> chunks = lambda: iter([np.arange(6, dtype=np.float32).reshape(3, 2)])
>>> rows = shower_rows(src, "demo", 3, 2, chunks, in_memory=False, cache=src.parent)
>>> rows[torch.tensor([2, 0, 2])].tolist()
[[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]]
>>> len(rows), rows.shape
(3, (3, 2))
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.atomic import check_space, publish

__all__ = ["DiskRows", "RowsWriter", "in_memory_bytes", "shower_rows"]

_ITEM = 4  # float32
_FORMAT = 1  # bump when the scratch layout changes


def in_memory_bytes() -> int:
    """The largest per-shower array a training keeps in memory (``CALOFORGE_IN_MEMORY_GB``,
    default 2)."""
    return int(float(os.environ.get("CALOFORGE_IN_MEMORY_GB", "2")) * 2**30)


class DiskRows:
    """A float32 array of ``n`` rows of ``row_shape`` in a raw file: ``rows[idx]`` (indices, a
    slice or one index) reads those rows into a new tensor, in the order asked."""

    def __init__(self, path: Path, n: int, row_shape: int | tuple[int, ...]) -> None:
        self.path, self.n = Path(path), n
        self.row_shape = (row_shape,) if isinstance(row_shape, int) else tuple(row_shape)
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "n": self.n, "row_shape": self.row_shape, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]

    def __getitem__(self, idx: Any) -> Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(self.n)[idx]
        one = isinstance(idx, int | np.integer)
        rows = np.atleast_1d(np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx, dtype=np.int64))
        if rows.size and (rows.min() < -self.n or rows.max() >= self.n):
            raise IndexError(f"row index out of range for {self.n} rows")
        rows = np.where(rows < 0, rows + self.n, rows)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(rows), *self.row_shape), np.float32)
        size = out[0].nbytes if len(rows) else 0
        for k in np.argsort(rows, kind="stable"):  # ascending offsets: sequential where it can
            view, at = memoryview(out[k]).cast("B"), 0
            while at < size:  # a network file system may return less than asked
                got = os.preadv(self._fd, [view[at:]], int(rows[k]) * size + at)
                if got <= 0:
                    raise OSError(f"'{self.path}' is shorter than {self.n} rows: delete it to rebuild it")
                at += got
        tensor = torch.from_numpy(out)
        return tensor[0] if one else tensor

    def blocks(self, size: int = 1000) -> Iterator[Tensor]:
        """The rows in order, ``size`` at a time."""
        for lo in range(0, self.n, size):
            yield self[lo : min(lo + size, self.n)]


class RowsWriter:
    """Rows written block by block (:meth:`append`), then :meth:`finish` ed into a tensor (when
    ``n_max`` rows of ``row_shape`` fit :func:`in_memory_bytes`, or ``in_memory``: filled in
    place, no second copy) or into :class:`DiskRows` over a scratch file named by ``source``'s
    identity and ``what`` (which must name everything the rows depend on). A scratch file
    already there is reused, not rewritten. A new one is written by one process at a time —
    the ranks of a data-parallel run, on one machine or several sharing the cache, take a lock
    beside it; the first writes, the others wait and reuse — to a temporary file named by host
    and process, published atomically after a check that the disk holds it. Use as a context
    manager: a failed pass leaves nothing."""

    def __init__(
        self,
        source: str | Path,
        what: str,
        row_shape: int | tuple[int, ...],
        n_max: int,
        in_memory: bool | None = None,
        cache: str | Path | None = None,
    ) -> None:
        self.row_shape = (row_shape,) if isinstance(row_shape, int) else tuple(row_shape)
        self.row_bytes = int(np.prod(self.row_shape)) * _ITEM
        self.memory = bool(in_memory or (in_memory is None and n_max * self.row_bytes <= in_memory_bytes()))
        self.n = 0
        self._buffer: np.ndarray | None = None
        self._file: Any = None
        self._tmp: Path | None = None
        self._lock: int | None = None
        self.path: Path | None = None
        if self.memory:
            self._buffer = np.empty((n_max, *self.row_shape), np.float32)
            return
        if cache is None:
            from caloforge.simulate._build import cache_dir

            cache = cache_dir() / "rows"
        cache = Path(cache)
        cache.mkdir(parents=True, exist_ok=True)
        st = Path(source).stat()
        identity = f"{Path(source).resolve()}|{st.st_size}|{st.st_mtime_ns}"
        key = f"{identity}|{what}|{self.row_shape}|{n_max}|{_FORMAT}".encode()
        name = f"{Path(source).stem}.{what.split('|')[0]}.{hashlib.sha1(key).hexdigest()[:16]}.f32"
        self.path = cache / name
        if self.path.exists():
            return
        self._lock = os.open(cache / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another process writing it: wait, then reuse
        if self.path.exists():
            self._unlock()
            return
        try:
            check_space(self.path, n_max * self.row_bytes)
            self._tmp = cache / f".{name}.{socket.gethostname()}.{os.getpid()}.partial"
            self._file = open(self._tmp, "wb")  # closed in finish or __exit__
        except BaseException:
            self._unlock()  # the lock file itself stays: a waiter may hold it open
            raise

    def _unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    @property
    def writing(self) -> bool:
        """Whether the rows appended are kept (in memory, or a scratch file being written)."""
        return self.memory or self._file is not None

    def __enter__(self) -> RowsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._unlock()

    def append(self, block: np.ndarray) -> None:
        """The next rows, ``(k, *row_shape)``."""
        if self._buffer is not None:
            self._buffer[self.n : self.n + len(block)] = block
        elif self._file is not None:
            self._file.write(np.ascontiguousarray(block, np.float32).tobytes())
        self.n += len(block)

    def skip(self, k: int) -> None:
        """Count the next ``k`` rows without their values (a scratch file written before holds
        them: see :attr:`writing`)."""
        self.n += k

    def finish(self) -> Tensor | DiskRows:
        """The rows written: a tensor, or :class:`DiskRows` over the published scratch file."""
        if self._buffer is not None:
            return torch.from_numpy(self._buffer[: self.n])
        assert self.path is not None
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            publish(self._tmp, self.path)  # type: ignore[arg-type]
            self._tmp = None
            self._unlock()
        elif self.path.stat().st_size != self.n * self.row_bytes:
            raise OSError(f"'{self.path}' does not hold the {self.n} rows expected: delete it to rebuild it")
        return DiskRows(self.path, self.n, self.row_shape)


def shower_rows(
    source: str | Path,
    what: str,
    n: int,
    width: int,
    chunks: Callable[[], Iterator[np.ndarray]],
    in_memory: bool | None = None,
    cache: str | Path | None = None,
) -> Tensor | DiskRows:
    """The ``(n, width)`` float32 array ``what`` of the showers of ``source``, whose rows
    ``chunks()`` yields in order (blocks of rows): in memory when ``in_memory`` (None: when it
    takes at most :func:`in_memory_bytes`), else :class:`DiskRows` over a scratch file in
    ``cache`` (default ``<cache dir>/rows``), written once (:class:`RowsWriter`; a disk that
    cannot hold it is a one-line :class:`~caloforge.atomic.DiskFullError`)."""
    with RowsWriter(source, what, width, n, in_memory, cache) as writer:
        if writer.writing:
            for block in chunks():
                writer.append(block)
            if writer.n != n:
                raise ValueError(f"'{source}' gave {writer.n} rows of {what}, {n} were expected")
        else:
            writer.skip(n)
        return writer.finish()
