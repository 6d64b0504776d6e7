"""One call in a fresh process: ``run_in_fresh_process(fn, *args)`` runs ``fn`` in a spawned
Python (its own threads, its own peak memory, nothing of the caller's imports) and returns its
result, or raises :class:`ChildFailed` — one mechanism for the isolated Geant4 runs and the
benchmark's timed rows.

>>> run_in_fresh_process(divmod, 7, 2)
(3, 1)
>>> try:
...     run_in_fresh_process(divmod, 1, 0)
... except ChildFailed as exc:
...     print(exc.summary)
ZeroDivisionError: integer division or modulo by zero
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["ChildFailed", "run_in_fresh_process"]


class ChildFailed(RuntimeError):
    """The fresh process raised (``summary``: ``Type: message``, ``detail``: its traceback) or
    died before it answered (``exitcode`` set, e.g. killed or out of memory)."""

    def __init__(self, summary: str, detail: str = "", exitcode: int | None = None) -> None:
        super().__init__(summary)
        self.summary, self.detail, self.exitcode = summary, detail, exitcode

    @property
    def died(self) -> bool:
        """Whether the process ended without an answer."""
        return self.exitcode is not None


def _child(connection: Any, fn: Callable[..., Any], args: tuple, kwargs: dict, hard_exit: bool) -> None:
    try:
        connection.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # report anything, including Ctrl-C in the child
        connection.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))
    finally:
        connection.close()
        if hard_exit:  # skip an interpreter teardown that a native library makes crash-prone
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def run_in_fresh_process(
    fn: Callable[..., Any], *args: Any, daemon: bool = False, hard_exit: bool = False, **kwargs: Any
) -> Any:
    """``fn(*args, **kwargs)`` (importable, its arguments and result picklable) in a spawned
    process; its result. ``daemon``: the process dies with this one (but cannot start processes
    of its own); ``hard_exit``: it ends with ``os._exit`` once it answered (Geant4's teardown is
    skipped). Raises :class:`ChildFailed` if ``fn`` raised there or the process died first."""
    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, fn, args, kwargs, hard_exit), daemon=daemon)
    process.start()
    sender.close()  # so that recv() sees EOF if the child dies before sending
    try:
        status, payload = receiver.recv()
    except EOFError:
        process.join()
        raise ChildFailed(
            f"the process died (exit code {process.exitcode})", exitcode=process.exitcode
        ) from None
    except BaseException:  # Ctrl-C or a signal here: the child goes too
        process.terminate()
        process.join()
        raise
    finally:
        receiver.close()
    process.join()
    if status != "ok":
        raise ChildFailed(*payload)
    return payload
