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

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from caloforge.safety import remove_stale_partials

__all__ = ["atomic_open", "atomic_output", "atomic_write_text", "publish", "temporary"]


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
