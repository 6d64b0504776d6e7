"""``caloforge generate``: showers from a trained model, streamed to the simulator's file format.

The model is a checkpoint directory or file written by ``caloforge train``, or ``default``
(the model shipped in ``caloforge/assets``). Incident energies are drawn exactly as
``caloforge simulate`` draws them (same spectrum syntax, same seed → same energies), so a
generated file can be compared shower for shower in energy with a simulated one.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.io import COMPRESSIONS, ShowerWriter

__all__ = [
    "DEFAULT_MODEL",
    "SHIPPED_MODELS",
    "GenerationPool",
    "GenerationResult",
    "generate_file",
    "parallel_generate",
    "resolve_model",
]

#: Models shipped in ``caloforge/assets``, by the name that selects them (``--model NAME``).
SHIPPED_MODELS = {
    "caloclouds2": "caloclouds2_cpu.pt",
    "caloclouds2-cm": "caloclouds2_cm_cpu.pt",
    "calodream": "calodream_ds2_cpu.pt",
    "calodream-lavit": "calodream_lavit_ds2_cpu.pt",
}
#: The shipped model that ``--model default`` means.
DEFAULT_MODEL = "caloclouds2-cm"


def resolve_model(model: str | Path) -> Path:
    """Path of a checkpoint: ``default`` or a name of :data:`SHIPPED_MODELS`, a run directory or a file."""
    name = DEFAULT_MODEL if str(model) == "default" else str(model)
    if name in SHIPPED_MODELS:
        from caloforge import asset_path

        return asset_path(SHIPPED_MODELS[name])
    path = Path(model)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"model '{model}' not found: give 'default', {', '.join(SHIPPED_MODELS)}, "
            "a run directory or a checkpoint file"
        )
    return path


@dataclass
class GenerationResult:
    """What :func:`generate_file` did."""

    path: Path
    n_showers: int
    seconds: float

    @property
    def ms_per_shower(self) -> float:
        """Wall-clock time per shower, everything included (flow, sampling, calibration, writing)."""
        return 1000 * self.seconds / max(self.n_showers, 1)


_WORKER: dict[str, Any] = {}


def _worker_start(path: str) -> None:
    import torch

    from caloforge.models.caloclouds2 import load_model

    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the parent has warned already
    _WORKER["model"] = load_model(path)


def _worker_batch(job: tuple[int, np.ndarray, dict[str, Any]]) -> Any:
    from caloforge.models.caloclouds2 import generate

    index, energies, options = job
    return next(generate(_WORKER["model"], energies, batch_size=len(energies), first_batch=index, **options))


class GenerationPool:
    """``workers`` single-threaded processes, each holding the CaloClouds II model at ``path``,
    that :meth:`generate` spreads batches over (a context manager; started once, used for
    many runs). The workers are spawned at the first request: in a script, create the pool
    under ``if __name__ == "__main__":``. A worker that dies (killed, out of memory) or
    cannot load the model raises :class:`~caloforge.models.caloclouds2.GenerationError`
    instead of hanging; Ctrl-C stops the workers."""

    def __init__(self, path: str | Path, workers: int) -> None:
        from caloforge.models.caloclouds2 import load_model

        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.path = str(path)
        self.model = load_model(path)  # for checking requests here, before the workers see them
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_worker_start, initargs=(self.path,)
        )

    def generate(
        self,
        energies_gev: np.ndarray,
        batch_size: int = 64,
        *,
        seed: int = 0,
        n_steps: int | None = None,
        sampler: str | None = None,
        allow_extrapolation: bool = False,
        points_per_call: int | None = None,
        precision: str = "auto",
        first_batch: int = 0,
    ) -> Iterator[Any]:
        """:func:`caloforge.models.caloclouds2.generate`'s showers (same arguments), batches
        made by the workers and yielded in order: the same showers as a single-process run
        with the same precision (every batch has its own random stream,
        :func:`~caloforge.models.caloclouds2.batch_seed`). A bad request raises
        :class:`~caloforge.models.caloclouds2.GenerationError` here, before any work starts."""
        from caloforge.models.caloclouds2 import POINTS_PER_CALL, check_request, resolve_sampler

        per_call = POINTS_PER_CALL if points_per_call is None else points_per_call
        energies = check_request(
            self.model, energies_gev, batch_size, allow_extrapolation, per_call, precision
        )
        spec = resolve_sampler(self.model, sampler, n_steps)
        options = {
            "seed": seed,
            "n_steps": spec.n_steps,
            "sampler": spec.name,
            "allow_extrapolation": allow_extrapolation,
            "points_per_call": per_call,
            "precision": precision,
        }
        jobs = (
            (first_batch + index, energies[start : start + batch_size], options)
            for index, start in enumerate(range(0, len(energies), batch_size))
        )
        return self._run(jobs)

    def _run(self, jobs: Iterator[tuple[int, np.ndarray, dict[str, Any]]]) -> Iterator[Any]:
        """Results of ``jobs`` in order, at most two batches per worker in flight."""
        from caloforge.models.caloclouds2 import GenerationError

        pending: deque[Future[Any]] = deque()
        try:
            for job in itertools.islice(jobs, 2 * self.workers):
                pending.append(self._executor.submit(_worker_batch, job))
            while pending:
                result = pending.popleft().result()
                for job in itertools.islice(jobs, 1):
                    pending.append(self._executor.submit(_worker_batch, job))
                yield result
        except BrokenProcessPool as err:
            raise GenerationError(
                "a generation worker stopped unexpectedly (killed, out of memory, or the model "
                f"'{self.path}' could not be loaded there); try fewer --workers"
            ) from err
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (batches in flight are finished first, queued ones dropped)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GenerationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_generate(
    path: str | Path, energies_gev: np.ndarray, workers: int, batch_size: int = 64, **options: Any
) -> Iterator[Any]:
    """:func:`caloforge.models.caloclouds2.generate` of the CaloClouds II checkpoint ``path``,
    its batches spread over ``workers`` single-threaded processes (:class:`GenerationPool`) and
    yielded in order; the same showers as one process. The request is checked (and
    :class:`~caloforge.models.caloclouds2.GenerationError` raised) at the call, before any
    worker starts."""
    pool = GenerationPool(path, workers)
    try:
        batches = pool.generate(energies_gev, batch_size, **options)
    except BaseException:
        pool.close()
        raise
    if not pool.model.complete:
        warnings.warn("this CaloClouds II model has not finished training", stacklevel=2)
    return _closing(pool, batches)


def _closing(pool: GenerationPool, batches: Iterator[Any]) -> Iterator[Any]:
    with pool:
        yield from batches


def generate_file(
    model: str | Path,
    energies_gev: np.ndarray,
    out: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    n_steps: int | None = None,
    sampler: str | None = None,
    allow_extrapolation: bool = False,
    precision: str = "auto",
    compression: str = "gzip",
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate one shower per entry of ``energies_gev`` into ``out`` (point-cloud file).

    Written atomically: an error or Ctrl-C leaves no partial output and an existing file as
    it was. ``compression`` is the file's (:data:`caloforge.io.COMPRESSIONS`). ``workers`` > 1
    spreads a CaloClouds II model's batches over that many single-threaded processes
    (:func:`parallel_generate`; the same showers, this process writes them). ``progress(done,
    total)`` is called after every batch.
    """
    from caloforge.models.caloclouds2 import generate, load_model, resolve_precision, resolve_sampler
    from caloforge.models.calodream import is_calodream_checkpoint

    out = Path(out)
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression '{compression}': use {', '.join(COMPRESSIONS)}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists: pass --overwrite to replace it")
    path = resolve_model(model)
    if is_calodream_checkpoint(path):
        if workers != 1:
            raise ValueError("--workers applies to CaloClouds II models; CaloDREAM uses --threads")
        if precision not in ("auto", "float32"):
            raise ValueError(
                f"--precision {precision}: CaloDREAM models run in float32 (use auto or float32)"
            )
        return _generate_calodream(
            path,
            model,
            energies_gev,
            out,
            seed,
            batch_size,
            n_steps,
            sampler,
            allow_extrapolation,
            compression,
            progress,
        )
    net = load_model(path)
    energies = np.asarray(energies_gev, np.float64)
    spec = resolve_sampler(net, sampler, n_steps)
    attrs = _attrs(model, path, energies, "caloclouds2", spec.name, spec.n_steps, spec.network_calls)
    precision = resolve_precision(precision)
    attrs["precision"] = precision
    options = {
        "seed": seed,
        "n_steps": spec.n_steps,
        "sampler": spec.name,
        "allow_extrapolation": allow_extrapolation,
        "precision": precision,
    }
    if workers > 1:
        batches = parallel_generate(path, energies, workers, batch_size, **options)
    else:
        batches = generate(net, energies, batch_size=batch_size, **options)
    label = "caloclouds2-cm" if spec.consistency else "caloclouds2"
    return _stream(
        out, "points", net.detector, label, seed, attrs, batches, len(energies), compression, progress
    )


def _generate_calodream(
    path: Path,
    model: str | Path,
    energies_gev: np.ndarray,
    out: Path,
    seed: int,
    batch_size: int,
    n_steps: int | None,
    sampler: str | None,
    allow_extrapolation: bool,
    compression: str,
    progress: Callable[[int, int], None] | None,
) -> GenerationResult:
    """CaloDREAM: energy network then shape network, written as a CaloChallenge voxel file."""
    from caloforge.models.calodream import generate, load_model, resolve_solver, uses_calibration

    net = load_model(path)
    if net.part != "shape":
        raise ValueError(f"'{path}' is a CaloDREAM {net.part} network: generate with a shape model")
    spec = resolve_solver(net, sampler, n_steps)
    energies = np.asarray(energies_gev, np.float64)
    attrs = _attrs(model, path, energies, "calodream", spec.method, spec.n_steps, spec.evaluations)
    attrs["latent"] = bool(net.latent)
    attrs["calibrated"] = uses_calibration(net, spec)  # hit energies calibrated (calibrate --model)
    batches = generate(
        net,
        energies,
        batch_size=batch_size,
        seed=seed,
        shape_solver=spec,
        allow_extrapolation=allow_extrapolation,
    )
    label = "calodream-lavit" if net.latent else "calodream"
    return _stream(
        out, "voxels", net.detector, label, seed, attrs, batches, len(energies), compression, progress
    )


def _attrs(
    model: str | Path, path: Path, energies: np.ndarray, family: str, sampler: str, steps: int, calls: int
) -> dict[str, Any]:
    """File attributes every generated file carries: which model and sampler, the energy range."""
    return {
        "model": str(path.name if str(model) == "default" or str(model) in SHIPPED_MODELS else path),
        "model_family": family,
        "sampler": sampler,
        "sampler_steps": steps,
        "network_calls": calls,
        "energy_min_gev": float(energies.min()),
        "energy_max_gev": float(energies.max()),
    }


def _stream(
    out: Path,
    kind: str,
    detector: Any,
    label: str,
    seed: int,
    attrs: dict[str, Any],
    batches: Iterator[Any],
    total: int,
    compression: str,
    progress: Callable[[int, int], None] | None,
) -> GenerationResult:
    """Write generated batches atomically into ``out``, timing everything (generation and writing)."""
    start = time.perf_counter()
    done = 0
    codec = None if compression == "none" else compression
    with ShowerWriter(
        out,
        kind,  # type: ignore[arg-type]
        detector,
        generator=label,
        seed=seed,
        attrs=attrs,
        compression=codec,
    ) as writer:
        for batch in batches:
            writer.write(batch)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return GenerationResult(out, done, time.perf_counter() - start)
