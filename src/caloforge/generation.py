"""``caloforge generate``: showers from a trained model of any family, streamed to a shower file.

The model is a checkpoint directory or file written by ``caloforge train``, ``default`` or a
shipped model's name; the registry (:mod:`caloforge.models.registry`) finds its family from
the format key the checkpoint stores, and everything here talks to the family only through
the protocol (:mod:`caloforge.models.protocol`). Incident energies are drawn exactly as
``caloforge simulate`` draws them (same spectrum syntax, same seed → same energies), so a
generated file can be compared shower for shower in energy with a simulated one.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.engines import LocalEngine, WorkerDied, check_engine
from caloforge.io import COMPRESSIONS
from caloforge.kinds import Kind, get_kind, register_kind
from caloforge.models.protocol import (
    Family,
    GenerationError,
    GenerationRequest,
    Plan,
    ShowerGenerator,
    batch_conditions,
    generate_batches,
)
from caloforge.models.registry import DEFAULT_MODEL, get_family, load_generator, register, resolve_model
from caloforge.pieces import pieces_dir
from caloforge.safety import (
    check_count,
    check_outputs,
    check_stop,
    output_lock,
    refuse_existing,
    stop_signals,
    worker_setup,
)

__all__ = [
    "DEFAULT_MODEL",
    "GenerationPool",
    "GenerationResult",
    "drawn_conditions",
    "generate_file",
    "model_conditions",
    "parallel_generate",
    "resolve_model",
    "run_conditions",
    "write_batches",
]


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


def _worker_start(path: str, family: Family) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops the workers.
    worker_setup()
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the parent has warned already
    register(family)  # a family registered at run time in the parent is known here too
    _WORKER["generator"] = load_generator(path)


def _worker_batch(job: tuple[int, dict[str, np.ndarray], Plan, int]) -> Any:
    index, conditions, plan, seed = job
    return _WORKER["generator"].generate_batch(conditions, plan, seed, index)


class GenerationPool:
    """``workers`` single-threaded processes, each holding the model at ``path`` (any family
    that supports workers), that :meth:`generate` spreads batches over (a context manager;
    started once, used for many runs). The workers are spawned at the first request: in a
    script, create the pool under ``if __name__ == "__main__":``. A worker that dies (killed,
    out of memory) or cannot load the model raises
    :class:`~caloforge.models.protocol.GenerationError` instead of hanging; Ctrl-C stops the
    workers."""

    def __init__(self, path: str | Path, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.path = str(resolve_model(path))
        self.generator = load_generator(self.path)  # for checking requests here, before the workers see them
        self.family = get_family(self.generator.family)
        if workers > 1:
            self.family.require("workers")
        self.workers = workers
        self.engine = LocalEngine(workers, _worker_start, (self.path, self.family))

    def plan(self, request: GenerationRequest) -> Plan:
        """The model's :meth:`~caloforge.models.protocol.ShowerGenerator.plan` of ``request``."""
        return self.generator.plan(request)

    def generate(
        self,
        conditions: Mapping[str, Any] | np.ndarray,
        plan: Plan,
        batch_size: int = 64,
        *,
        seed: int = 0,
        first_batch: int = 0,
    ) -> Iterator[Any]:
        """The showers of :func:`~caloforge.models.protocol.generate_batches` (``conditions``: a
        mapping, or the incident energies), batches made by the workers and yielded in order:
        the same showers as a single-process run (every batch has its own random stream). Bad
        conditions raise :class:`~caloforge.models.protocol.GenerationError` here, before any
        work starts."""
        if not isinstance(conditions, Mapping):
            conditions = {"energy": conditions}
        batches = batch_conditions(self.generator, conditions, plan, batch_size, first_batch)
        return self._run((index, chunk, plan, seed) for index, chunk in batches)

    def _run(self, jobs: Iterator[tuple[int, dict[str, np.ndarray], Plan, int]]) -> Iterator[Any]:
        """Results of ``jobs`` in order (the engine keeps at most two batches per worker in flight)."""
        try:
            yield from self.engine.imap(_worker_batch, jobs)
        except WorkerDied as err:
            raise GenerationError(
                "a generation worker stopped unexpectedly (killed, out of memory, or the model "
                f"'{self.path}' could not be loaded there); try fewer --workers"
            ) from err

    def close(self) -> None:
        """Stop the workers (batches in flight are finished first, queued ones dropped)."""
        self.engine.close(finish=True)

    def __enter__(self) -> GenerationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parallel_generate(
    path: str | Path,
    energies_gev: np.ndarray,
    workers: int,
    batch_size: int = 64,
    *,
    seed: int = 0,
    sampler: str | None = None,
    n_steps: int | None = None,
    precision: str = "auto",
    allow_extrapolation: bool = False,
    first_batch: int = 0,
    **options: Any,
) -> Iterator[Any]:
    """The showers of the model at ``path`` for ``energies_gev``, its batches spread over
    ``workers`` single-threaded processes (:class:`GenerationPool`) and yielded in order; the
    same showers as one process. ``options`` are the family's own generation options. The
    request is checked (and :class:`~caloforge.models.protocol.GenerationError` raised) at
    the call, before any worker starts."""
    pool = GenerationPool(path, workers)
    try:
        request = GenerationRequest(sampler, n_steps, precision, allow_extrapolation, "cpu", options)
        plan = pool.plan(request)
        batches = pool.generate(energies_gev, plan, batch_size, seed=seed, first_batch=first_batch)
    except BaseException:
        pool.close()
        raise
    _warn_incomplete(pool.generator)
    return _closing(pool, batches)


def _warn_incomplete(generator: ShowerGenerator) -> None:
    if not generator.complete:
        warnings.warn(f"this {generator.label} model has not finished training", stacklevel=3)


def _closing(pool: GenerationPool, batches: Iterator[Any]) -> Iterator[Any]:
    with pool:
        yield from batches


def generation_device(generator: ShowerGenerator, spec: str, spread: bool = False) -> str:
    """The device ``--device spec`` names for ``generator``: ``auto`` is the first CUDA device
    where its family generates on one (``Capabilities.gpu``) and the run is not ``spread`` over
    worker processes or a cluster, else the CPU; an explicit CUDA device it cannot use is a
    one-line ``ValueError``."""
    from caloforge.devices import resolve_device

    family = get_family(generator.family)
    if not family.capabilities.gpu:
        return resolve_device(spec, cpu_only=f"{family.description} generation")
    if spread and spec.strip().lower() == "auto":
        return "cpu"
    return resolve_device(spec)


def generate_file(
    model: str | Path,
    energies_gev: np.ndarray | Mapping[str, np.ndarray],
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
    options: Mapping[str, Any] | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    resume: bool = False,
    device: str = "cpu",
) -> GenerationResult:
    """Generate one shower per entry of ``energies_gev`` into ``out`` (the file kind the model's
    family writes: points, voxels, jets), with any registered family's model. ``energies_gev``
    is the incident energies, or a mapping of every condition the model takes (a jet model's
    ``pt``, ``eta``, ``num_particles``, …: see :func:`model_conditions`).

    Written atomically: an error or Ctrl-C leaves no partial output and an existing file as
    it was. ``compression`` is the file's (:data:`caloforge.io.COMPRESSIONS`). ``workers`` > 1
    spreads the batches over that many single-threaded processes (:class:`GenerationPool`;
    the same showers, this process writes them) where the family supports it. ``options``
    are the family's own generation options. ``progress(done, total)`` is called after every
    batch. The request is checked in full before anything is generated.

    ``engine="dask"`` runs pieces of :data:`BATCHES_PER_PIECE` batches on a Dask cluster
    (``scheduler``, or a local cluster of ``workers``; :mod:`caloforge.engines`); each
    finished piece is kept in ``.OUT.pieces/`` (:mod:`caloforge.pieces`) until the file is
    assembled, so an interrupted run continues with ``resume``. The file is the same as with
    the local engine: every batch has its own random stream.

    ``device`` (a torch device string, :func:`caloforge.devices.resolve_device`) runs the
    networks there, in this process, where the family can (``Capabilities.gpu``).
    """
    out = Path(out)
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression '{compression}': use {', '.join(COMPRESSIONS)}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if device != "cpu" and (workers > 1 or engine != "local"):
        raise ValueError(f"--device {device} generates in this process: use --workers 1 and the local engine")
    conditions = _as_conditions(energies_gev)
    energies = conditions.get("energy")
    if energies is not None:
        bad = ~(np.isfinite(energies) & (energies > 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"incident energy {i} is {energies[i]:g} GeV: energies must be finite and positive"
            )
    check_engine(engine, scheduler)  # the names and the scheduler, before anything is made
    if resume and engine != "dask":
        raise ValueError("--resume continues the pieces of an --engine dask run; the local engine keeps none")
    if not resume:
        refuse_existing(out, overwrite)
    elif out.exists() and not pieces_dir(out).exists():
        raise FileExistsError(f"'{out}' is complete (no unfinished pieces to resume): nothing to do")
    path = resolve_model(model)
    check_outputs({"--out": out}, {"--model": path})
    options = get_family(load_generator(path).family).check_options("generate", options or {})
    request = GenerationRequest(sampler, n_steps, precision, allow_extrapolation, device, options)
    with output_lock(out), stop_signals(deferred=True):
        if engine == "dask":
            return _generate_on_dask(
                path,
                model,
                conditions,
                out,
                seed,
                batch_size,
                request,
                compression,
                (workers, scheduler),
                (resume, overwrite),
                progress,
            )
        return _generate_file(
            path,
            model,
            conditions,
            out,
            seed=seed,
            batch_size=batch_size,
            request=request,
            compression=compression,
            workers=workers,
            progress=progress,
        )


def _as_conditions(values: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Conditions as float64 arrays: a mapping as given, an array as the incident energies."""
    if isinstance(values, Mapping):
        return {k: np.asarray(v, np.float64).reshape(-1) for k, v in values.items()}
    return {"energy": np.asarray(values, np.float64).reshape(-1)}


def _n_of(conditions: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(conditions.values()))) if conditions else 0


def _conditions_digest(conditions: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the conditions (of the energies alone for a shower model, as before)."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(conditions):
        if key != "energy":
            digest.update(key.encode())
        digest.update(np.ascontiguousarray(conditions[key]).tobytes())
    return digest.hexdigest()


def model_conditions(
    model: str | Path | ShowerGenerator,
    n: int | None,
    seed: int,
    conditions_file: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The conditions of a run of ``model`` (a model as :func:`load_generator` takes it, or a
    loaded generator) whose generator draws its own (:meth:`sample_conditions`: jet models):
    ``n`` (default 100) drawn with ``seed`` (``options``: the run's generation options, which
    may say where from), or those of the first ``n`` entries of ``conditions_file`` (a jet
    file: its jet features), keeping the ones the model takes."""
    generator = model if isinstance(model, ShowerGenerator) else load_generator(model)
    if conditions_file is not None:
        options = options or {}
        if chosen := [
            o.name
            for o in get_family(generator.family).generate_options
            if o.draws_conditions and o.name in options
        ]:
            raise GenerationError(
                f"--option {chosen[0]}=… chooses how conditions are drawn; with --conditions-file "
                "none are drawn: drop one of them"
            )
        kind = get_kind(generator.output)
        if kind.conditions_file is None:  # the kind's files hold no conditions (showers)
            raise GenerationError(
                f"--conditions-file is for jet models; this model writes {generator.output}"
            )
        return kind.part("conditions_file")(conditions_file, generator.conditions, n)
    return drawn_conditions(generator, 100 if n is None else n, seed, options)


def run_conditions(
    generator: ShowerGenerator,
    n: int | None,
    seed: int,
    *,
    energy: str | None = None,
    energy_log: str | None = None,
    energies_file: str | Path | None = None,
    conditions_file: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """The conditions of a ``caloforge generate`` run of ``generator``: a jet model's drawn as it
    draws them (``options``: the run's generation options) or read from ``conditions_file``
    (:func:`model_conditions`); a shower
    model's incident energies from ``energies_file`` (its first ``n`` showers, default all) or
    ``n`` (default 100) drawn with ``seed`` from ``--energy`` / ``--energy-log``."""
    from caloforge.io import ShowerFileError, open_showers
    from caloforge.simulate.driver import draw_energies, energy_spectrum

    if n is not None:
        check_count(n, 64, "-n", "the conditions of the showers")  # a few float64 per shower
    if hasattr(generator, "sample_conditions"):
        if energies_file is not None or energy is not None or energy_log is not None:
            raise ValueError("jet models take no incident energies: give --conditions-file (jet file) or -n")
        return model_conditions(generator, n, seed, conditions_file, options)
    if conditions_file is not None:
        raise ValueError("--conditions-file is for jet models; shower models take --energies-file, --energy")
    if energies_file is None:
        return draw_energies(energy_spectrum(energy, energy_log), n or 100, seed)
    if energy is not None or energy_log is not None:
        raise ValueError("give either --energies-file or --energy/--energy-log, not both")
    with open_showers(energies_file) as f:
        energies = f.read_energy()
    if len(energies) == 0:
        raise ShowerFileError(f"--energies-file '{energies_file}' holds no showers")
    if n is not None and n > len(energies):
        raise ValueError(
            f"-n {n} asks for more showers than --energies-file '{energies_file}' holds "
            f"({len(energies)}): drop -n to use them all"
        )
    return energies[:n]


def drawn_conditions(
    generator: ShowerGenerator, n: int, seed: int, options: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """``n`` conditions the generator draws from its training distribution
    (``sample_conditions``; ``options``: the run's generation options), only those it takes."""
    sample = getattr(generator, "sample_conditions", None)
    if sample is None:
        raise GenerationError(f"{generator.label} models take incident energies (--energy, --energies-file)")
    drawn = sample(n, seed, options) if options else sample(n, seed)
    return {c.name: np.asarray(drawn[c.name], np.float64) for c in generator.conditions}


def _generate_file(
    path: Path,
    model: str | Path,
    conditions: dict[str, np.ndarray],
    out: Path,
    *,
    seed: int,
    batch_size: int,
    request: GenerationRequest,
    compression: str,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> GenerationResult:
    if workers > 1:
        pool = GenerationPool(path, workers)
        try:
            generator = pool.generator
            plan = pool.plan(request)
            batches = _closing(pool, pool.generate(conditions, plan, batch_size, seed=seed))
        except BaseException:
            pool.close()
            raise
    else:
        generator = load_generator(path)
        plan = generator.plan(request)
        batches = generate_batches(generator, conditions, plan, seed, batch_size)
    _warn_incomplete(generator)
    attrs = _attrs(model, path, conditions, generator, plan)
    return _stream(out, generator, seed, attrs, batches, _n_of(conditions), compression, progress)


def _attrs(
    model: str | Path,
    path: Path,
    conditions: Mapping[str, np.ndarray],
    generator: ShowerGenerator,
    plan: Plan,
) -> dict[str, Any]:
    """File attributes every generated file carries (which model and sampler, the energy
    range of shower models), then the family's own (:attr:`~caloforge.models.protocol.Plan.attrs`)."""
    from caloforge.models.registry import shipped_models

    shipped = str(model) == "default" or str(model) in shipped_models()
    attrs: dict[str, Any] = {
        "model": str(path.name if shipped else path),
        "model_family": generator.family,
        "sampler": plan.sampler.name,
        "sampler_steps": plan.sampler.n_steps,
        "network_calls": plan.sampler.network_calls,
    }
    energies = conditions.get("energy")
    if energies is not None:
        attrs["energy_min_gev"] = float(energies.min()) if len(energies) else 0.0
        attrs["energy_max_gev"] = float(energies.max()) if len(energies) else 0.0
    return attrs | dict(plan.attrs)


def write_batches(
    out: Path,
    kind: str | Kind,
    detector: Any,
    label: str,
    batches: Iterator[Any],
    *,
    seed: int | None = None,
    attrs: dict[str, Any] | None = None,
    compression: str | None = "gzip",
    on_batch: Callable[[int], None] | None = None,
    expected: int | None = None,
) -> int:
    """Write ``batches`` atomically into ``out`` with the writer of the output kind ``kind``
    (a :class:`~caloforge.kinds.Kind` or its name: points, voxels, jets; a jet file's particle
    count and type come from the first batch); ``on_batch(done)`` after every batch. A stop
    signal between batches leaves no output; so does a full disk, refused as soon as the file
    so far and the ``expected`` number of showers say it will not fit. Returns the number
    written."""
    kind = get_kind(kind)
    first = next(batches, None)
    if first is None:
        raise GenerationError("nothing to generate: no conditions were given")
    writer = kind.open_writer(
        out,
        detector,
        first,
        generator=label,
        seed=seed,
        attrs=attrs,
        compression=compression,
        expected=expected,
    )
    done = 0
    with writer:
        for batch in itertools.chain([first], batches):
            check_stop()
            writer.write(batch)
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
    return done


def _stream(
    out: Path,
    generator: ShowerGenerator,
    seed: int,
    attrs: dict[str, Any],
    batches: Iterator[Any],
    total: int,
    compression: str,
    progress: Callable[[int, int], None] | None,
) -> GenerationResult:
    """Write generated batches atomically into ``out``, timing everything (generation and writing)."""
    start = time.perf_counter()
    codec = None if compression == "none" else compression
    try:
        done = write_batches(
            out, generator.output, generator.detector, generator.label, batches, seed=seed, attrs=attrs,
            compression=codec, on_batch=None if progress is None else (lambda done: progress(done, total)),
            expected=total,
        )  # fmt: skip
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops a worker pool at once on Ctrl-C or an error
    return GenerationResult(out, done, time.perf_counter() - start)


#: Batches of a Dask piece (512 showers at the default batch size): pieces of a few seconds,
#: so the scheduler's overhead (milliseconds per piece) stays negligible.
BATCHES_PER_PIECE = 8

_DASK: dict[str, ShowerGenerator] = {}


def _dask_start(path: str, family: Family, kind: Kind) -> None:
    """Once per Dask worker process: one thread for torch, the family and its output kind
    known, the model loaded."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the client has warned already
    register(family)
    register_kind(kind)
    _DASK[path] = load_generator(path)


def _dask_piece(job: tuple[str, Plan, int, list[tuple[int, dict[str, np.ndarray]]]]) -> dict[str, np.ndarray]:
    """One piece on a Dask worker: its batches, each from its own random stream, as the plain
    arrays of its output kind (:meth:`~caloforge.kinds.Kind.encode_piece`) with ``first`` (its
    first batch index) and ``count`` (its entries)."""
    path, plan, seed, batches = job
    generator = _DASK[path]
    made = [generator.generate_batch(conditions, plan, seed, index) for index, conditions in batches]
    showers = type(made[0]).concatenate(made)
    arrays = get_kind(generator.output).encode_piece(showers)
    return {"first": np.asarray(batches[0][0]), "count": np.asarray(len(showers))} | arrays


def _generate_on_dask(
    path: Path,
    model: str | Path,
    conditions: dict[str, np.ndarray],
    out: Path,
    seed: int,
    batch_size: int,
    request: GenerationRequest,
    compression: str,
    engine: tuple[int, str | None],
    modes: tuple[bool, bool],
    progress: Callable[[int, int], None] | None,
) -> GenerationResult:
    """:func:`generate_file` with ``engine="dask"``: pieces on the cluster, kept on disk."""
    from caloforge.engines import DaskEngine
    from caloforge.pieces import PieceStore

    (workers, scheduler), (resume, overwrite) = engine, modes
    generator = load_generator(path)
    family = get_family(generator.family)
    kind = get_kind(generator.output)
    plan = generator.plan(request)
    batches = list(batch_conditions(generator, conditions, plan, batch_size))
    _warn_incomplete(generator)
    manifest = {
        "model": str(path),
        "seed": seed,
        "batch_size": batch_size,
        "batches_per_piece": BATCHES_PER_PIECE,
        "sampler": plan.sampler.name,
        "sampler_steps": plan.sampler.n_steps,
        "precision": request.precision,
        "options": repr(sorted(request.options.items())),  # the --option values asked for
        "allow_extrapolation": bool(request.allow_extrapolation),
        "energies_sha256": _conditions_digest(conditions),
    }
    store = PieceStore.open(out, manifest, resume=resume, overwrite=overwrite)
    pieces = [batches[i : i + BATCHES_PER_PIECE] for i in range(0, len(batches), BATCHES_PER_PIECE)]
    counts = {piece[0][0]: sum(_n_of(c) for _, c in piece) for piece in pieces}
    finished = store.finished()
    todo = [(str(path), plan, seed, p) for p in pieces if finished.get(p[0][0]) != counts[p[0][0]]]
    done = sum(c for first, c in counts.items() if finished.get(first) == c)
    start = time.perf_counter()
    if todo:
        with DaskEngine(workers, scheduler, _dask_start, (str(path), family, kind)) as cluster:
            for arrays in cluster.imap_unordered(_dask_piece, todo):
                check_stop()
                first, count = int(arrays.pop("first")), int(arrays.pop("count"))
                store.save(first, count, arrays)
                done += count
                if progress is not None:
                    progress(done, _n_of(conditions))
    attrs = _attrs(model, path, conditions, generator, plan)
    stored = (kind.decode_piece(store.load(first)) for first in counts)
    written = _stream(out, generator, seed, attrs, stored, _n_of(conditions), compression, None)
    store.remove()
    return GenerationResult(out, written.n_showers, time.perf_counter() - start)
