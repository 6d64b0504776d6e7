"""Atomic files: data go to a temporary file next to the target, moved onto it only when complete.

A reader never sees a half-written file, and a run that fails or is killed (``kill -9``
included) leaves an existing target as it was. The temporary files of :func:`temporary`
(and so of :func:`atomic_output`, :func:`atomic_write_text` and the shower and jet writers)
are named ``.NAME.PID.XXXX<suffix>``, so that one left by a killed process is recognised and
removed by the next writer of ``NAME`` (:func:`caloforge.safety.remove_stale_partials`).

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> atomic_write_text(target, "done")
>>> target.read_text(), [p.name for p in target.parent.iterdir()]
('done', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from caloforge.safety import check_stop, remove_stale_partials

__all__ = [
    "NO_SPACE_ERRNOS",
    "AtomicH5",
    "DiskFullError",
    "atomic_open",
    "atomic_output",
    "atomic_write_text",
    "check_space",
    "free_bytes",
    "is_no_space",
    "publish",
    "temporary",
]

#: ``errno`` values that mean the disk (or the user's quota, or the file-size limit) is full.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Room kept free beyond the data for HDF5's own bookkeeping (metadata, a chunk in flight).
SPACE_MARGIN = 1 << 18


#: Set once an HDF5 write failed for lack of space: the library's state is then unsafe to
#: close (HDF5 retries the failed writes and can crash), see :func:`hdf5_failed`.
_HDF5_FAILED: list[Path] = []


def hdf5_failed() -> bool:
    """Whether an HDF5 write of this process failed for lack of space. Such a file is left
    unclosed (its temporary file removed); a command line should then end the process with
    ``os._exit`` after its message, as HDF5 may crash while Python shuts down."""
    return bool(_HDF5_FAILED)


class DiskFullError(OSError):
    """A write that failed, or would have failed, for lack of space; the existing file is as it
    was and no partial file is left."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (a folder, or
    the folder of a file)."""
    path = Path(path)
    st = os.statvfs(path if path.is_dir() else path.parent)
    return st.f_bavail * st.f_frsize


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def disk_full(path: str | Path, needed: int | None = None) -> DiskFullError:
    """The one-line error of a write to ``path`` that the disk cannot hold (``needed``: about how
    many more bytes it would take)."""
    path = Path(path)
    try:
        free = f"{_mb(free_bytes(path.parent))} free"
    except OSError:
        free = "no space"
    more = f", about {_mb(needed)} needed" if needed else ""
    return DiskFullError(
        f"not enough space to write '{path}': {free} in '{path.parent}'{more}; nothing was replaced "
        "and no partial file is left (free some space or write elsewhere)"
    )


def check_space(path: str | Path, needed: int) -> None:
    """Raise :class:`DiskFullError` unless the disk of ``path`` has ``needed`` bytes free (and a
    margin for the file's bookkeeping)."""
    if free_bytes(Path(path).parent) < needed + SPACE_MARGIN:
        raise disk_full(path, needed + SPACE_MARGIN)


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write refused for lack of space. HDF5 reports
    it as a ``RuntimeError`` whose text carries the ``errno``.

    >>> is_no_space(OSError(28, "No space left on device")), is_no_space(ValueError("x"))
    (True, False)
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            return True
        text = str(seen)
        if any(f"errno = {n}," in text for n in NO_SPACE_ERRNOS) or "No space left on device" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def temporary(path: Path, suffix: str) -> tuple[int, str]:
    """A new temporary file next to ``path``: ``(descriptor, name)`` of ``mkstemp``.

    Named ``.NAME.PID.XXXX<suffix>`` so that one left by a killed process can be recognised
    and removed by the next writer (stale ones of ``path`` are removed here). A ``path`` that
    is a directory, or whose directory does not exist, is refused in one line.
    """
    if path.is_dir():
        raise IsADirectoryError(f"cannot write '{path}': it is a directory, give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    remove_stale_partials(path)
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)


def publish(tmp: str | Path, path: Path) -> None:
    """Give ``tmp`` the permissions a normally created file would have, then move it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_output(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    fd, tmp = temporary(path, ".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, prefix: str, suffix: str = ".tmp", durable: bool = False
) -> Iterator[IO[Any]]:
    """Yield a temporary file open in ``mode``, in ``path``'s directory and named
    ``PREFIX…SUFFIX``; it replaces ``path`` only if the block succeeds, and is removed otherwise.

    With ``durable`` the data are flushed and ``fsync``'ed before the rename, so that ``path``
    holds them after a crash of the machine too. For a program's own bookkeeping files (the
    pieces of :mod:`caloforge.pieces`): the file keeps ``mkstemp``'s owner-only permissions, and
    leftovers of killed processes are the owner's to tidy (unlike :func:`temporary`).

    >>> import json, tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> with atomic_open(target, "w", prefix=".state.") as f:
    ...     json.dump({"done": 3}, f)
    >>> json.loads(target.read_text())
    {'done': 3}
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicH5:
    """An HDF5 file written next to ``path`` and moved onto it only when complete: the one
    place every HDF5 writer of caloforge (showers, jets) passes through.

    Every write goes through :meth:`writing`, which first ends the run if a stop (Ctrl-C,
    SIGTERM) arrived, even one a library swallowed (:func:`~caloforge.safety.check_stop`),
    checks that the disk has room for the data (and, given ``expected_rows``, for the rest of
    the file at the rate so far), and turns a write the disk refused into
    :class:`DiskFullError`. :meth:`commit` flushes, closes and reads the file back (every
    dataset as long as it should be, every block of rows stored) before the rename;
    :meth:`abort` frees the disk space first, so that HDF5 can close a file whose writes
    failed, and removes it. ``path`` is never replaced by an incomplete file.
    """

    def __init__(self, path: str | Path, expected_rows: int | None = None) -> None:
        import h5py

        self.path = Path(path)
        self.expected_rows = expected_rows
        fd, tmp = temporary(self.path, ".partial.h5")
        os.close(fd)
        self.tmp = Path(tmp)
        self._closed = self._failed = False
        try:
            self.h5 = h5py.File(self.tmp, "w")
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def copy_of(cls, path: str | Path, expected_rows: int | None = None) -> AtomicH5:
        """A writer that starts from a copy of the existing file ``path`` (to append to it)."""
        import h5py

        self = cls.__new__(cls)
        self.path, self.expected_rows = Path(path), expected_rows
        self._closed = self._failed = False
        fd, tmp = temporary(self.path, ".partial.h5")
        self.tmp = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as dst:  # owns (and closes) the descriptor from here on
                check_space(self.path, self.path.stat().st_size)
                with open(self.path, "rb") as src:
                    while block := src.read(1 << 24):
                        dst.write(block)
            self.h5 = h5py.File(self.tmp, "r+")
        except BaseException as exc:
            self.tmp.unlink(missing_ok=True)
            if is_no_space(exc) and not isinstance(exc, DiskFullError):
                raise disk_full(self.path) from exc
            raise
        return self

    @contextmanager
    def writing(self, nbytes: int, rows: int = 0) -> Iterator[None]:
        """Guard one write of about ``nbytes`` raw bytes holding ``rows`` rows. HDF5 also
        writes when a dataset handle is released, where a failure can only be reported as
        "Exception ignored": such a failure for lack of space is caught here too."""
        check_stop()
        check_space(self.path, self._still_needed(rows))
        lost: list[BaseException] = []
        previous = sys.unraisablehook

        def hook(info: Any) -> None:
            if info.exc_value is not None and is_no_space(info.exc_value):
                lost.append(info.exc_value)
            else:
                previous(info)

        sys.unraisablehook = hook
        try:
            yield
        except (OSError, RuntimeError) as exc:
            if is_no_space(exc) and not isinstance(exc, DiskFullError):
                self._failed = True
                # Release the dataset handles the failed frames hold now, while the hook
                # above takes HDF5's reports of the writes that fail again as they close.
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
                raise disk_full(self.path, self._still_needed(rows) or nbytes) from exc
            raise
        finally:
            sys.unraisablehook = previous
        if lost:
            self._failed = True
            raise disk_full(self.path, self._still_needed(rows) or nbytes) from lost[0]

    def _still_needed(self, rows: int) -> int:
        """Bytes the rows still to write (``rows`` now, and the rest of ``expected_rows``) take
        at the rate of the file so far; 0 before any row is written."""
        done = self.rows_written()
        if done <= 0:
            return 0
        left = max(self.expected_rows - done, rows) if self.expected_rows else rows
        return int(self.tmp.stat().st_size / done * left)

    def rows_written(self) -> int:
        """Rows of the first dataset (0 before any); writers with another measure override."""
        for obj in self.h5.values():
            return int(obj.shape[0]) if obj.shape else 0
        return 0

    def commit(self, lengths: Mapping[str, int]) -> Path:
        """Flush, close and check the file (``lengths``: dataset → rows it must hold), then move
        it onto ``path``; on any failure (a stop included) the file is discarded."""
        try:
            with self.writing(0):
                self.h5.flush()
                self.h5.close()
            self._closed = True
            self._verify(lengths)
            check_stop()
            publish(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def _verify(self, lengths: Mapping[str, int]) -> None:
        import h5py

        try:
            with h5py.File(self.tmp, "r") as f:
                for name, n in lengths.items():
                    ds = f[name]
                    if ds.shape[0] != n:
                        raise OSError(f"dataset {name} holds {ds.shape[0]} rows, not {n}")
                    if ds.chunks is None or ds.size == 0:  # nothing stored to look for
                        continue
                    rows = ds.chunks[0]
                    zeros = (0,) * (ds.ndim - 1)
                    for start in range(0, n, rows):
                        if ds.id.get_chunk_info_by_coord((start, *zeros)).byte_offset is None:
                            raise OSError(
                                f"dataset {name}: rows {start}-{min(start + rows, n) - 1} were not stored"
                            )
                    ds[n - 1]  # the last block decodes
        except (OSError, RuntimeError, KeyError) as exc:
            if is_no_space(exc) or free_bytes(self.tmp) < SPACE_MARGIN:
                raise disk_full(self.path) from exc
            raise OSError(f"'{self.path}' did not read back complete ({exc}); nothing was replaced") from exc

    def abort(self) -> None:
        """Discard the file; ``path`` is left as it was."""
        if not self._closed:
            self._discard_writes()
            if self._failed:
                _HDF5_FAILED.append(self.tmp)
            else:
                with contextlib.suppress(Exception):
                    self.h5.close()
            self._closed = True
        self.tmp.unlink(missing_ok=True)

    def _discard_writes(self) -> None:
        """Point HDF5's file descriptor at ``/dev/null``: the file is being discarded, and a
        file whose writes failed (full disk, size limit) can then still be closed cleanly —
        otherwise HDF5 retries the writes on close and can crash the process."""
        try:
            vfd = self.h5.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
        except Exception:  # another file driver: free the space instead
            with contextlib.suppress(OSError):
                os.truncate(self.tmp, 0)
            return
        try:
            os.dup2(null, vfd)
        finally:
            os.close(null)
