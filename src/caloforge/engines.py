"""Where the pieces of a job run: processes on this machine, or a Dask cluster.

A job (``simulate``, ``generate``, ``evaluate``) cuts its work into deterministic pieces —
the event blocks of ``simulate`` (seeded per event), the batches of ``generate`` (a random
stream per batch), the file chunks of ``evaluate`` — and hands a pure function of each piece
to an engine; whatever runs the pieces, the results are the same, bit for bit.

* :class:`LocalEngine` — ``workers`` spawned processes on this machine (the ``--workers`` of
  ``simulate``, ``generate`` and ``simulate-jets``).
* :class:`DaskEngine` — a ``dask.distributed`` cluster: an existing one (``--scheduler
  tcp://host:8786``, e.g. started by dask-jobqueue on Slurm or HTCondor, docs/distributed.md)
  or, by default, a ``LocalCluster`` of ``workers`` single-threaded processes. A worker that
  dies has its pieces run again elsewhere (Dask reschedules them, up to
  ``distributed.scheduler.allowed-failures`` times); a piece whose function raises stops the
  job with that piece's error — it is never retried, since it would fail again.

Both run a per-process ``initializer`` once before the first piece in that process (for a
Dask worker: once per initializer and arguments), and both keep at most ``2 × workers``
pieces in flight, so neither holds more than a few results in memory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["ENGINES", "DaskEngine", "EngineError", "LocalEngine", "WorkerDied", "check_engine", "make_engine"]

ENGINES = ("local", "dask")


class EngineError(ValueError):
    """The engine cannot start (no Dask installed, scheduler unreachable) or a piece failed."""


# --- per-process initialisation (shared by both engines) --------------------------------

_DONE: set[str] = set()


def _initialised(initializer: Callable[..., None] | None, initargs: tuple, key: str) -> None:
    if initializer is not None and key not in _DONE:
        initializer(*initargs)
        _DONE.add(key)


def _call(
    fn: Callable[[Any], Any], item: Any, initializer: Callable[..., None] | None, initargs: tuple, key: str
) -> Any:
    _initialised(initializer, initargs, key)
    return fn(item)


#: How often a wait for results looks at the stop flag.
POLL_SECONDS = 0.2


class WorkerDied(EngineError):
    """A worker process stopped before it returned a piece (killed, out of memory, crashed)."""


class LocalEngine:
    """``workers`` spawned processes on this machine (a context manager): the one process pool
    of caloforge — ``simulate``, ``generate --workers`` and ``simulate-jets`` run their pieces
    here (a local ``evaluate`` runs in its own process).

    At most ``2 × workers`` pieces are in flight; a wait for results notices a stop request
    (:func:`~caloforge.safety.check_stop`, Ctrl-C) within :data:`POLL_SECONDS`; a worker that
    dies raises :class:`WorkerDied` instead of leaving the wait hanging. :meth:`close` ends the
    processes at once (``finish=True``: after the pieces they are running).
    """

    name = "local"

    def __init__(
        self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=initializer, initargs=initargs
        )

    def imap_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for every item, in the order they finish."""
        return self._run(fn, items, ordered=False)

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for every item, in the order of ``items``."""
        return self._run(fn, items, ordered=True)

    def _run(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool) -> Iterator[Any]:
        from caloforge.safety import check_stop

        todo = iter(items)
        pending: deque[Future[Any]] = deque()

        def submit(n: int) -> None:
            for item in itertools.islice(todo, n):
                pending.append(self._executor.submit(fn, item))

        try:
            submit(2 * self.workers)
            while pending:
                waiting = [pending[0]] if ordered else list(pending)
                done, _ = wait(waiting, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                if not done:
                    check_stop()
                    continue
                for future in [f for f in pending if f in done]:
                    pending.remove(future)
                    submit(1)
                    yield future.result()
        except BrokenProcessPool as err:
            check_stop()  # a Ctrl-C that reached a worker before it ignored it is an interrupt
            raise WorkerDied(
                "a worker process stopped unexpectedly (killed, out of memory or crashed); "
                "try fewer --workers"
            ) from err
        finally:
            for future in pending:
                future.cancel()

    def pids(self) -> list[int]:
        """The process ids of the workers started so far."""
        return list(self._processes())

    def _processes(self) -> dict[int, Any]:
        # The executor's own table of its processes (stable since Python 3.8; 3.14 adds
        # terminate_workers()).
        return dict(self._executor._processes or {})  # type: ignore[attr-defined]

    def close(self, finish: bool = False) -> None:
        """Stop the processes: at once (pieces in flight are dropped), or with ``finish`` after
        the pieces they are running (queued ones are dropped)."""
        if not finish:
            for process in self._processes().values():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DaskEngine:
    """A Dask cluster: ``scheduler`` (an address) or a new ``LocalCluster`` of ``workers``
    single-threaded processes (a context manager; the local cluster ends with it)."""

    name = "dask"

    def __init__(
        self,
        workers: int,
        scheduler: str | None = None,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        timeout_s: float = 10.0,
    ) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise EngineError(
                "--engine dask needs dask.distributed: pip install 'caloforge[distributed]'"
            ) from None
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._initializer, self._initargs = initializer, initargs
        self._key = f"{getattr(initializer, '__qualname__', '')}:{os.getpid()}:{id(self)}:{initargs!r}"[:4000]
        self._cluster = None
        if scheduler is not None:
            self.client = _connect(Client, scheduler, timeout_s)
            self.workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        else:
            import dask

            # Dask's nanny makes glibc return freed memory at 64 kB (MALLOC_TRIM_THRESHOLD_):
            # measured 1.4x slower generation here (millions of page faults on the large
            # batch tensors); glibc's own default is kept instead.
            environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
            environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.CRITICAL,
                worker_class="distributed.Nanny",
                preload=["caloforge._dask_worker"],  # workers leave Ctrl-C to this process
            )
            self.client = Client(self._cluster)
            self.workers = workers

    def _submit(self, fn: Callable[[Any], Any], item: Any, index: int) -> Any:
        return self.client.submit(
            _call,
            fn,
            item,
            self._initializer,
            self._initargs,
            self._key,
            pure=False,
            key=f"piece-{index}-{id(self)}",
        )

    def _results(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool) -> Iterator[Any]:
        window = 2 * self.workers
        numbered = enumerate(items)
        if ordered:
            pending: deque[Any] = deque(
                self._submit(fn, item, i) for i, item in itertools.islice(numbered, window)
            )
            try:
                while pending:
                    future = pending.popleft()
                    yield self._result(future)
                    for i, item in itertools.islice(numbered, 1):
                        pending.append(self._submit(fn, item, i))
            finally:
                self.client.cancel(list(pending))
            return
        pending = {self._submit(fn, item, i) for i, item in itertools.islice(numbered, window)}
        try:
            while pending:
                for future in self._first_done(pending):
                    pending.discard(future)
                    result = self._result(future)
                    for i, item in itertools.islice(numbered, 1):
                        pending.add(self._submit(fn, item, i))
                    yield result
        finally:
            with contextlib.suppress(Exception):
                self.client.cancel(list(pending))

    @staticmethod
    def _first_done(futures: set[Any]) -> set[Any]:
        """The futures done once at least one is, looking at the stop flag while it waits."""
        from distributed import wait

        from caloforge.safety import check_stop

        while True:
            try:
                return wait(list(futures), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                check_stop()

    @staticmethod
    def _result(future: Any) -> Any:
        from distributed import KilledWorker

        DaskEngine._first_done({future})
        try:
            return future.result()
        except KilledWorker as exc:
            raise EngineError(
                f"a piece was lost with its Dask workers too often ({exc}); the workers keep dying "
                "(out of memory?): try fewer or larger workers"
            ) from None
        except (KeyboardInterrupt, EngineError):
            raise
        except Exception as exc:
            raise EngineError(f"a piece failed on a Dask worker: {type(exc).__name__}: {exc}") from exc

    def imap_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for every item, in the order they finish."""
        return self._results(fn, items, ordered=False)

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for every item, in the order of ``items``."""
        return self._results(fn, items, ordered=True)

    def close(self) -> None:
        """Disconnect; a local cluster is shut down."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(client: Any, scheduler: str, timeout_s: float) -> Any:
    """A Dask client of ``scheduler``, or a one-line :class:`EngineError`."""
    try:
        return client(scheduler, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise EngineError(
            f"cannot reach the Dask scheduler at '{scheduler}' ({type(exc).__name__}): is it "
            "running and is the address right? (drop --scheduler for a local cluster)"
        ) from None


def _check_names(engine: str, scheduler: str | None) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}': use {' or '.join(ENGINES)}")
    if engine == "local" and scheduler is not None:
        raise ValueError("--scheduler needs --engine dask")


def check_engine(engine: str, scheduler: str | None = None, timeout_s: float = 10.0) -> None:
    """Check ``engine`` and ``scheduler`` the way a run will use them — the names, Dask being
    installed, the scheduler answering — so that a run refuses them before it makes anything
    on disk (its pieces, its lock)."""
    _check_names(engine, scheduler)
    if engine == "local":
        return
    try:
        from distributed import Client
    except ImportError:
        raise EngineError(
            "--engine dask needs dask.distributed: pip install 'caloforge[distributed]'"
        ) from None
    if scheduler is not None:
        _connect(Client, scheduler, timeout_s).close()


def make_engine(
    engine: str,
    workers: int,
    scheduler: str | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> LocalEngine | DaskEngine:
    """The engine named ``engine`` (``local`` or ``dask``); ``scheduler`` only for Dask."""
    _check_names(engine, scheduler)
    if engine == "local":
        return LocalEngine(workers, initializer, initargs)
    return DaskEngine(workers, scheduler, initializer, initargs)
