"""What keeps a user's files safe whatever happens to a run: one writer per output (a lock),
no output that is also an input, signals handled once, and no worker outliving its parent.

The lock rule (``docs/formats.md``): a run writing ``OUT`` holds an exclusive ``flock`` on
``.OUT.lock`` next to it for as long as it runs. The kernel releases the lock when the owner
dies, however it dies (``kill -9`` included), so a lock left by a dead run is never in the
way; the file itself only records who holds it (pid, host, start time) for the message a
second run gets.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "showers.h5"
>>> with output_lock(out):
...     with output_lock(out):
...         pass
Traceback (most recent call last):
...
caloforge.safety.OutputBusyError: ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "OutputBusyError",
    "available_memory",
    "check_count",
    "check_output_dir",
    "check_outputs",
    "check_stop",
    "die_with_parent",
    "lock_path",
    "output_lock",
    "pid_alive",
    "refuse_existing",
    "remove_stale_partials",
    "stop_signals",
    "worker_setup",
]


class OutputBusyError(FileExistsError):
    """Another live run is writing the same output."""


def lock_path(out: str | Path) -> Path:
    """The lock file of output ``out``: ``.NAME.lock`` in the same directory."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(*outputs: str | Path | None) -> Iterator[None]:
    """Hold the lock of every output for the block; a second run refuses in one line.

    Locks are taken in a fixed order (sorted paths), so two runs sharing several outputs
    cannot deadlock; they are exclusive ``flock`` locks released by the kernel when this
    process ends, so a stale lock of a killed run never blocks a later one.
    """
    paths = sorted({Path(p).absolute() for p in outputs if p is not None})
    with contextlib.ExitStack() as stack:
        for out in paths:
            stack.enter_context(_one_lock(out))
        yield


@contextlib.contextmanager
def _one_lock(out: Path) -> Iterator[None]:
    path = lock_path(out)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise OutputBusyError(
                f"'{out}' is being written by another caloforge run ({owner}): wait for it to "
                "finish or write elsewhere"
            ) from None
        # The previous owner may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else sees. Retry on the file now at that path.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _read_owner(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip() or "owner unknown"
    except OSError:
        return "owner unknown"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None] | None = None
) -> None:
    """Refuse (one line) an output that is one of the inputs, two outputs that are one file, or an
    output that is a directory. Keys are how the user named each path (``--out``, ``MODEL``…).

    >>> check_outputs({"--out": "a.h5"}, {"--energies-file": "a.h5"})
    Traceback (most recent call last):
    ...
    ValueError: --out 'a.h5' is also the --energies-file: write the output to another file
    """
    outs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(v)) for k, v in (inputs or {}).items() if v is not None]
    for i, (name, path) in enumerate(outs):
        if path.is_dir():
            raise IsADirectoryError(f"{name} '{path}' is a directory: give a file name")
        for other, other_path in outs[i + 1 :]:
            if _same(path, other_path):
                raise ValueError(f"{name} and {other} are the same file '{path}': give two different files")
        for what, source in ins:
            if _same(path, source):
                raise ValueError(f"{name} '{path}' is also the {what}: write the output to another file")


def check_output_dir(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    *,
    purpose: str = "the output",
    error: type[Exception] = NotADirectoryError,
    option: str = "--out",
) -> None:
    """Refuse (one line, ``error``) an output directory that is one of the ``inputs`` or an
    existing file: the directory outputs' side of :func:`check_outputs` (reports, training runs).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".h5") as f:
    ...     check_output_dir(f.name, [f.name], purpose="the report", error=ValueError)
    Traceback (most recent call last):
    ...
    ValueError: --out '...' is the input file '...': give a directory for the report
    """
    out = Path(out)
    for source in inputs:
        if _same(out, Path(source)) and Path(source).exists():
            raise error(f"{option} '{out}' is the input file '{source}': give a directory for {purpose}")
    if out.exists() and not out.is_dir():
        raise error(f"{option} '{out}' is a file: give a directory for {purpose}")


def refuse_existing(path: str | Path, overwrite: bool, option: str = "--overwrite") -> None:
    """A one-line refusal to replace an existing ``path`` unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a directory: give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists: pass {option} to replace it")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str | Path) -> None:
    """Delete temporary files (``.NAME.PID.*.partial*``) that killed writers of ``path`` left."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for tmp in path.parent.glob(f".{path.name}.*.partial*"):
        parts = tmp.name[len(path.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not pid_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def stop_signals(deferred: bool = False) -> Iterator[None]:
    """Ctrl-C and SIGTERM raise :class:`KeyboardInterrupt` once inside the block; a second
    signal while the run is already stopping is only acknowledged (no traceback, nothing lost).

    ``deferred``: the signal only sets the stop flag, and :func:`check_stop` raises at the next
    safe point (between batches or blocks) — for jobs that call it often, so that a stop never
    lands inside a library's bookkeeping (a process pool starting a thread, say).

    Explicit handlers also undo a ``SIG_IGN`` inherited by a job started in the background.
    Only the main thread can install handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can handle signals
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if _STOP.is_set():
            with contextlib.suppress(Exception):
                sys.stderr.write("already stopping: finishing the clean-up\n")
            return
        _STOP.set()
        if not deferred:
            raise KeyboardInterrupt

    def unraisable(info: Any) -> None:
        # The stop raised where Python cannot propagate it (a weakref callback, __del__, an
        # atexit hook): nothing to print, check_stop() ends the run at the next unit of work.
        if not issubclass(info.exc_type, KeyboardInterrupt):
            hook(info)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for sig, old in previous.items():
            signal.signal(sig, old)
        _STOP.clear()


#: Set by the first Ctrl-C / SIGTERM inside :func:`stop_signals`.
_STOP = threading.Event()


def check_stop() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop signal has arrived.

    A signal handler's exception can land where Python swallows it (a weakref callback or
    ``__del__`` prints "Exception ignored" and goes on); long loops call this between units
    of work so such a stop still happens, at the next unit.
    """
    if _STOP.is_set():
        raise KeyboardInterrupt


def worker_setup() -> None:
    """What every worker process of a local pool does first: leave Ctrl-C to the parent (which
    stops the pool) and die with the parent. In a thread (a Dask worker runs pieces in one)
    there is nothing to do: the Dask nanny owns the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent()


def die_with_parent(poll_seconds: float = 1.0) -> None:
    """Make this (worker) process end when its parent dies, even by ``kill -9``.

    Linux delivers SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); a watchdog thread
    that notices the parent has changed covers every other system and the case where the
    parent thread that started this process has ended.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if parent == 1:  # already orphaned before the death signal was set
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="caloforge-parent-watch", daemon=True).start()


def available_memory() -> int:
    """Bytes of memory this machine can still give a process (``MemAvailable`` on Linux, the
    free physical pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_count(n: int, bytes_each: int, option: str, what: str) -> None:
    """Refuse, in one line, a request of ``n`` items whose ``what`` alone (``bytes_each`` per
    item) would not fit in the memory this machine has, naming the largest that would.

    >>> check_count(10, 8, "-n", "the incident energies")
    >>> check_count(10**15, 8, "-n", "the incident energies")
    Traceback (most recent call last):
    ...
    ValueError: -n 1,000,000,000,000,000: the incident energies alone would take 8,000,000.0 GB of memory...
    """
    need, have = n * bytes_each, available_memory()
    if need > have:
        raise ValueError(
            f"{option} {n:,}: {what} alone would take {need / 1e9:,.1f} GB of memory, this machine has "
            f"{have / 1e9:,.1f} GB free: ask for at most {have // bytes_each:,} per run"
        )
