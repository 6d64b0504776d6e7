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

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.atomic import check_space, publish, temporary

__all__ = ["DiskRows", "in_memory_bytes", "shower_rows"]

_ITEM = 4  # float32
_FORMAT = 1  # bump when the scratch layout changes


def in_memory_bytes() -> int:
    """The largest per-shower array a training keeps in memory (``CALOFORGE_IN_MEMORY_GB``,
    default 2)."""
    return int(float(os.environ.get("CALOFORGE_IN_MEMORY_GB", "2")) * 2**30)


class DiskRows:
    """A float32 ``(n, width)`` array in a raw file: ``rows[idx]`` (indices, a slice or one
    index) reads those rows into a new tensor, in the order asked."""

    def __init__(self, path: Path, n: int, width: int) -> None:
        self.path, self.n, self.width = Path(path), n, width
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.width)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "n": self.n, "width": self.width, "_fd": None}

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
        out = np.empty((len(rows), self.width), np.float32)
        order = np.argsort(rows, kind="stable")
        size = self.width * _ITEM
        for k in order:  # ascending offsets: sequential where the batch allows
            view = memoryview(out[k]).cast("B")
            if os.preadv(self._fd, [view], int(rows[k]) * size) != size:
                raise OSError(f"'{self.path}' is shorter than {self.n} rows: delete it to rebuild it")
        tensor = torch.from_numpy(out)
        return tensor[0] if one else tensor


def _scratch_path(source: Path, what: str, n: int, width: int, cache: Path) -> Path:
    st = source.stat()
    key = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{what}|{n}|{width}|{_FORMAT}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache / f"{source.stem}.{what}.{digest}.f32"


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
    ``cache`` (default ``<cache dir>/rows``), written once, atomically, after checking that the
    disk holds it (:class:`~caloforge.atomic.DiskFullError` in one line otherwise)."""
    size = n * width * _ITEM
    if in_memory or (in_memory is None and size <= in_memory_bytes()):
        out = np.empty((n, width), np.float32)  # filled in place: no second copy
        at = 0
        for block in chunks():
            out[at : at + len(block)] = block
            at += len(block)
        return torch.from_numpy(out)
    if cache is None:
        from caloforge.simulate._build import cache_dir

        cache = cache_dir() / "rows"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = _scratch_path(Path(source), what, n, width, cache)
    if not path.exists() or path.stat().st_size != size:
        check_space(path, size)
        fd, tmp = temporary(path, ".partial")
        try:
            written = 0
            with os.fdopen(fd, "wb") as f:
                for block in chunks():
                    f.write(np.ascontiguousarray(block, np.float32).tobytes())
                    written += len(block)
                f.flush()
                os.fsync(f.fileno())
            if written != n:
                raise ValueError(f"'{source}' gave {written} rows of {what}, {n} were expected")
            publish(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return DiskRows(path, n, width)
