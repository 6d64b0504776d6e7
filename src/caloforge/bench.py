"""``caloforge bench``: time per shower of Geant4 and of the generative models, in one run.

Every row is one generator at one incident energy, one thread count and one batch size;
its speed-up is the Geant4 time per shower *at the same energy and thread count, measured in
the same run*, divided by its own. What is timed is what a user waits for:

* **Geant4**: simulation, clustering into points and writing the file (``caloforge
  simulate`` with as many workers as threads; the clock starts when the first block of
  showers is back, so starting the workers and building the geometry are not counted);
* **models** (any registered family): the whole of ``caloforge generate`` — for CaloClouds II
  Shower Flow, point sampling, calibration; for CaloDREAM energy network, shape network and
  decoder — and writing the showers to an HDF5 file; loading the model and one warm-up batch
  are not counted.

Each model is timed against Geant4 on its own detector and particle (photons in ``ild-ecal``
for CaloClouds II, electrons in ``calochallenge-ds2`` for CaloDREAM), simulated in the same run.

A loaded machine: the default model (else the first) is timed again, at ``nice 19`` (a job run in
the background, as users run long ones), while one busy process at normal priority keeps a
core busy, with the thread count ``caloforge generate`` chooses by default (the CPUs
other work does not keep busy, :func:`caloforge.hardware.default_threads`), with 1 thread and
with all cores; :func:`loaded_lines` compares them.

Each generator and thread count runs in a fresh process (``spawn``), so its peak resident
memory (``ru_maxrss``, for Geant4 the largest worker) is its own. A GPU, when torch sees one,
adds rows for the models on it (batch sizes 1, 64 and 1,000, at least two batches of showers
each, timed with synchronisation, against the one-thread Geant4 row), with the device's name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.hardware import cpu_name
from caloforge.kinds import GEANT4, PYTHIA8, Reference, get_kind, kinds
from caloforge.processes import ChildFailed, run_in_fresh_process

__all__ = [
    "LOADED",
    "QUIET",
    "BenchConfig",
    "BenchRow",
    "ModelSpec",
    "busy_process",
    "cpu_name",
    "loaded_lines",
    "run_bench",
    "to_markdown",
]


@dataclass(frozen=True)
class ModelSpec:
    """A generator to time: ``kind`` is ``model`` (a checkpoint of any registered family, with
    an optional sampler override) or ``onnx`` (a file written by ``caloforge export``)."""

    label: str
    kind: str
    path: str
    sampler: str | None = None
    n_steps: int | None = None
    precision: str = "auto"


#: The machine of a row: nothing else running, or one busy process beside the timed one.
QUIET, LOADED = "quiet", "1 busy process, timed at nice 19"


@dataclass(frozen=True)
class BenchConfig:
    """What to time. ``showers[E]`` showers per row at ``E`` GeV for the models (Geant4 gets
    ``geant4_showers[E]``), repeated ``repeats`` times (mean ± std of the repeats). GPU rows
    run at ``gpu_batch_sizes`` with at least two batches of showers per row."""

    energies: tuple[float, ...] = (10.0, 50.0, 90.0)
    threads: tuple[int, ...] = (1, os.cpu_count() or 1)
    batch_sizes: tuple[int, ...] = (1, 64)
    gpu_batch_sizes: tuple[int, ...] = (1, 64, 1000)
    showers: dict[float, int] = field(default_factory=lambda: {10.0: 256, 50.0: 128, 90.0: 128})
    geant4_showers: dict[float, int] = field(default_factory=lambda: {10.0: 100, 50.0: 40, 90.0: 30})
    repeats: int = 3
    seed: int = 0
    jets: int = 512  # per jet-model row
    pythia_jets: int = 500  # per Pythia 8 + FastJet row (two pieces of the simulation)
    #: Also time the default model (else the first) on a machine loaded by one busy process:
    #: with the default threads (what ``caloforge generate`` chooses), 1 thread and all cores.
    loaded: bool = True

    @classmethod
    def quick(cls) -> BenchConfig:
        """A few showers per row: checks that every row runs (tests, first look)."""
        return cls(
            energies=(10.0, 90.0),
            showers={10.0: 4, 90.0: 2},
            geant4_showers={10.0: 4, 90.0: 2},
            batch_sizes=(1, 2),
            repeats=1,
            jets=4,
            pythia_jets=2,
            loaded=False,
        )

    def n_showers(self, energy: float, geant4: bool = False) -> int:
        table = self.geant4_showers if geant4 else self.showers
        return int(table.get(energy, min(table.values())))


@dataclass
class BenchRow:
    """One measurement: ms per shower (mean and std over repeats) and peak memory of its process."""

    generator: str
    energy_gev: float
    threads: int
    batch_size: int | None  # None for Geant4
    device: str
    ms_per_shower: float
    ms_std: float
    n_showers: int
    peak_rss_mb: float
    speedup: float | None = None
    network_calls: int | None = None
    precision: str = "—"  # of the network, as resolved on this machine
    detector: str = "ild-ecal"  # what Geant4 simulated, and what the model was trained on
    particle: str = "gamma"
    load: str = QUIET  # what else the machine ran: QUIET or LOADED
    default_threads: bool = False  # threads chosen as caloforge generate chooses them (no --threads)


def _peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def _live_peak_rss_mb() -> float:
    """Largest peak RSS (``VmHWM``) of this process's live children (Linux; 0 elsewhere)."""
    peak = 0.0
    for child in mp.active_children():
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, float(line.split()[1]) / 1024)
    return peak


def _time_geant4(
    energy: float, n: int, workers: int, directory: Path, seed: int, detector: str, particle: str
) -> float:
    """ms per shower of ``caloforge simulate`` at ``energy`` with ``workers`` workers."""
    from caloforge.simulate.driver import EnergySpec, SimulationConfig

    config = SimulationConfig(
        detector=detector,
        particle=particle,
        energy=EnergySpec("fixed", energy, energy),
        n_showers=n,
        seed=seed,
    )
    return _time_simulation(config, workers, directory / f"g4_{detector}_{particle}_{energy:g}_{workers}.h5")


def _time_simulation(config: Any, workers: int, path: Path, block: int | None = None, skip: int = 1) -> float:
    """ms per event of ``caloforge simulate`` of ``config`` (a SimulationConfig) with ``workers``,
    from the ``skip``-th finished block to the last (blocks of ``block`` events, default at most 5:
    Geant4's time per event does not depend on the block)."""
    from caloforge.simulate.driver import simulate

    n = config.n_showers
    marks: list[tuple[float, int]] = []
    block = block or max(1, min(5, n // (2 * workers)))
    simulate(
        config,
        path,
        workers=workers,
        block_size=block,
        overwrite=True,
        progress=lambda done, total: marks.append((time.perf_counter(), done)),
    )
    (t_first, n_first), (t_last, n_last) = marks[skip - 1], marks[-1]
    if n_last == n_first:  # one block only: no interval to time
        raise ValueError(f"need more than {skip} block(s) of events ({config.energy}): raise the count")
    return 1000 * (t_last - t_first) / (n_last - n_first)


#: The di-photon events of the full-chain rows: two photons of ``PAIR_ENERGY_GEV`` each.
PAIR_SEPARATION_MM = 25.0
PAIR_ENERGY_GEV = 50.0


def _chain_worker(config: BenchConfig, model: str, threads: int) -> list[dict[str, Any]]:
    """Full-chain rows: ``caloforge simulate`` of the same events with full Geant4 and with
    ``model`` as its fast simulation, ms per event, at each energy and for di-photon events."""
    from caloforge.models.registry import load_generator
    from caloforge.simulate.driver import FAST_SIM_BLOCK, EnergySpec, FastSimSpec, SimulationConfig
    from caloforge.simulate.gun import Gun

    generator = load_generator(model)
    detector, particle = generator.detector.name, generator.particle
    cases = [(e, Gun(), particle) for e in config.energies]
    cases.append(
        (
            PAIR_ENERGY_GEV,
            Gun(pair_separation_mm=PAIR_SEPARATION_MM),
            f"{particle} pair {PAIR_SEPARATION_MM:g} mm",
        )
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for energy, gun, what in cases:
            n = config.n_showers(energy, geant4=True)
            measured = {}
            for mode, fast in (("full", None), ("fast", FastSimSpec(model))):
                times = []
                # Fast simulation: the same first events and more, in the model's batches of
                # FAST_SIM_BLOCK, timed after two blocks (the network's warm-up for new shapes).
                count, block, skip = (
                    (n, None, 1)
                    if fast is None
                    else (max(n, 4 * threads * FAST_SIM_BLOCK), FAST_SIM_BLOCK, 2)
                )
                for r in range(config.repeats):
                    sim = SimulationConfig(
                        detector=detector,
                        particle=particle,
                        energy=EnergySpec("fixed", energy, energy),
                        n_showers=count,
                        seed=config.seed + r,
                        gun=gun,
                        fast_sim=fast,
                    )
                    times.append(_time_simulation(sim, threads, Path(tmp) / f"chain_{mode}.h5", block, skip))
                measured[mode] = times
                label = "Geant4 full chain" if fast is None else f"Geant4 + {model} fast sim"
                rows.append(
                    _simulation_row(label, energy, threads, times, count, detector, f"{what} (ms/event)")
                )
            rows[-1].speedup = statistics.fmean(measured["full"]) / statistics.fmean(measured["fast"])
    return [asdict(r) for r in rows]


def _simulation_row(
    label: str, energy: float, threads: int, times: list[float], n: int, detector: str, particle: str
) -> BenchRow:
    """A row of ``caloforge simulate`` timings (its peak memory: the largest worker's)."""
    return BenchRow(
        label,
        energy,
        threads,
        None,
        "cpu",
        statistics.fmean(times),
        statistics.pstdev(times),
        n,
        max(_peak_rss_mb(children=True), _peak_rss_mb()),
        detector=detector,
        particle=particle,
    )


#: What jet rows stand in the table as: the "detector" and "energy" of Pythia 8 + FastJet jets
#: (the hard process's pT-hat window is centred on 1 TeV): the jets kind's reference
#: (:data:`caloforge.kinds.PYTHIA8`).
JETS_DETECTOR: str = PYTHIA8.detector  # type: ignore[assignment]
JET_PT_GEV: float = PYTHIA8.energy_gev  # type: ignore[assignment]


def _pythia_worker(config: BenchConfig, threads: int, detector: str, jet_type: str) -> list[dict[str, Any]]:
    """ms per jet of ``caloforge simulate-jets`` (Pythia 8 + FastJet, everything included:
    one Pythia initialisation per piece of 250 jets, clustering, writing) with ``threads`` workers
    (``detector``: the jets kind's, :data:`JETS_DETECTOR`)."""
    from caloforge.jets.pythia import JETS_PER_PIECE, JetSimulationConfig, simulate_jets

    times = []
    # at least one piece per worker (a full-size run: the quick config's few jets stay few)
    n = (
        config.pythia_jets
        if config.pythia_jets < JETS_PER_PIECE
        else max(config.pythia_jets, threads * JETS_PER_PIECE)
    )
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(config.repeats):
            start = time.perf_counter()
            simulate_jets(Path(tmp) / "jets.h5", n, JetSimulationConfig(jet_type, 30), seed=config.seed + r,
                          workers=threads, overwrite=True)  # fmt: skip
            times.append(1000 * (time.perf_counter() - start) / n)
    row = _simulation_row(PYTHIA8.label, JET_PT_GEV, threads, times, n, detector, jet_type)
    return [asdict(row)]


def _geant4_worker(config: BenchConfig, threads: int, detector: str, particle: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for energy in config.energies:
            n = config.n_showers(energy, geant4=True)
            times = [
                _time_geant4(energy, n, threads, Path(tmp), config.seed + r, detector, particle)
                for r in range(config.repeats)
            ]
            rows.append(_simulation_row(GEANT4.label, energy, threads, times, n, detector, particle))
    return [asdict(r) for r in rows]


@dataclass
class _Timed:
    """What a model row needs: ``run(energies, batch_size) -> iterator of showers`` and facts."""

    run: Callable[[np.ndarray, int], Any]
    network_calls: int
    detector: Any
    precision: str
    output: str
    particle: str


def _model_generator(
    spec: ModelSpec, device: str, exit_stack: contextlib.ExitStack, workers: int = 1
) -> _Timed:
    """How to run ``spec`` on ``device``. With ``workers`` > 1 (CPU), a model whose family
    supports it runs in that many single-threaded processes
    (:class:`caloforge.generation.GenerationPool`, closed by ``exit_stack``), as
    ``caloforge generate --workers`` does; other families use ``workers`` torch threads."""
    if spec.kind == "onnx":
        from caloforge.export import load_exported

        runner = load_exported(spec.path)
        return _Timed(
            lambda energies, batch_size: runner.generate(energies, batch_size),
            runner.network_calls,
            runner.detector,
            "float32",
            runner.output,
            runner.particle,
        )
    from caloforge.models.protocol import GenerationRequest, generate_batches
    from caloforge.models.registry import get_family, load_generator

    generator = load_generator(spec.path)
    family = get_family(generator.family)
    if device != "cpu":
        family.require("gpu")
    plan = generator.plan(GenerationRequest(spec.sampler, spec.n_steps, spec.precision, device=device))

    drawn: dict[int, dict[str, np.ndarray]] = {}

    def conditions(energies: np.ndarray) -> dict[str, np.ndarray]:
        if hasattr(generator, "sample_conditions"):  # jets: as many, drawn as the model draws them
            from caloforge.generation import drawn_conditions

            if len(energies) not in drawn:  # once per count: the repeats time the jets, not the draw
                drawn[len(energies)] = drawn_conditions(generator, len(energies), 0)
            return drawn[len(energies)]
        return {"energy": energies}

    facts = (
        plan.sampler.network_calls,
        generator.detector,
        plan.precision,
        generator.output,
        generator.particle,
    )
    if device == "cpu" and workers > 1 and family.capabilities.workers:
        from caloforge.generation import GenerationPool

        pool = exit_stack.enter_context(GenerationPool(spec.path, workers))
        return _Timed(
            lambda energies, batch_size: pool.generate(conditions(energies), plan, batch_size), *facts
        )

    def run(energies: np.ndarray, batch_size: int) -> Any:
        return generate_batches(generator, conditions(energies), plan, batch_size=batch_size)

    return _Timed(run, *facts)


def _target(spec: ModelSpec) -> tuple[str, str, bool, Reference]:
    """The detector and particle of ``spec``'s showers (what its reference simulates for its
    speed-up: Geant4 the model's own detector; a kind with a fixed reference detector, as jets'
    Pythia 8 + FastJet, that one), whether it is timed on a GPU too (a model whose family
    generates there) and that reference (its output kind's)."""
    if spec.kind == "onnx":
        from caloforge.export import load_exported

        made: Any = load_exported(spec.path, threads=1)
        gpu = False
    else:
        from caloforge.models.registry import get_family, load_generator

        made = load_generator(spec.path)
        gpu = get_family(made.family).capabilities.gpu
    reference = get_kind(made.output).reference
    return reference.detector or made.detector.name, made.particle, gpu, reference


def _row_energies(reference: Reference, config: BenchConfig) -> list[tuple[float, int]]:
    """``(energy, count)`` of every row of a model whose reference is ``reference``: the bench's
    energies and shower counts, or the reference's one energy with ``config.jets`` (jets)."""
    if reference.energy_gev is not None:
        return [(reference.energy_gev, config.jets)]
    return [(energy, config.n_showers(energy)) for energy in config.energies]


def _model_worker(config: BenchConfig, spec: ModelSpec, threads: int, device: str) -> list[dict[str, Any]]:
    import torch

    from caloforge.generation import write_batches

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        timed = _model_generator(spec, device, stack, threads)
        run = timed.run
        kind = get_kind(timed.output)
        on_gpu = device != "cpu"
        for energy, shown in _row_energies(kind.reference, config):
            for batch in config.gpu_batch_sizes if on_gpu else config.batch_sizes:
                n = max(shown, 2 * batch) if on_gpu else shown
                energies = np.full(n, energy)
                for _ in run(energies[: min(batch * threads, n)], batch):  # warm-up (every worker)
                    pass
                times = []
                for _ in range(config.repeats):
                    out = Path(tmp) / "gen.h5"
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    write_batches(out, kind, timed.detector, spec.label, iter(run(energies, batch)))
                    times.append(1000 * (time.perf_counter() - start) / n)
                    out.unlink()
                rows.append(
                    BenchRow(
                        spec.label,
                        energy,
                        threads,
                        batch,
                        device if device == "cpu" else torch.cuda.get_device_name(device),
                        statistics.fmean(times),
                        statistics.pstdev(times),
                        n,
                        max(_peak_rss_mb(), _live_peak_rss_mb()),  # the largest process
                        network_calls=timed.network_calls,
                        precision=timed.precision,
                        detector=kind.reference.detector or timed.detector.name,
                        particle=timed.particle,
                    )
                )
    return [asdict(r) for r in rows]


def _in_fresh_process(fn: Callable[..., list[dict[str, Any]]], *args: Any) -> list[dict[str, Any]]:
    """Run ``fn(*args)`` in a spawned (non-daemonic: Geant4 starts its own workers) process,
    so it has its own threads and its own peak memory."""
    try:
        return run_in_fresh_process(fn, *args)
    except ChildFailed as exc:
        what = f"the benchmark process died (exit code {exc.exitcode})" if exc.died else exc.summary
        raise RuntimeError(f"benchmark of {fn.__name__.strip('_')} failed: {what}") from None


def _spin(stop: Any) -> None:
    """A busy process: one core's worth of pure Python work until ``stop`` is set."""
    while not stop.is_set():
        sum(range(10_000))


@contextlib.contextmanager
def busy_process() -> Any:
    """One process that keeps a core busy while the block runs (the bench's loaded machine)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    spinner = ctx.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)  # started and spinning before anything is timed or measured
        yield spinner
    finally:
        stop.set()
        spinner.join(5)
        if spinner.is_alive():
            spinner.kill()


def _command_worker(config: BenchConfig, spec: ModelSpec, threads: int | None) -> list[dict[str, Any]]:
    """Rows of what ``caloforge generate`` does (:func:`caloforge.generation.generate_file`,
    written file included), run at ``nice 19`` as a background job, with ``threads`` torch
    threads (None: the default that :func:`caloforge.hardware.default_threads` chooses, as
    the command does without ``--threads``)."""
    import torch

    from caloforge.generation import generate_file
    from caloforge.hardware import default_threads
    from caloforge.models.protocol import GenerationRequest
    from caloforge.models.registry import load_generator

    os.nice(19)  # a background job beside a busy process: every thread it waits for may stall
    chosen = threads is None
    threads = default_threads()[0] if threads is None else threads
    torch.set_num_threads(threads)
    generator = load_generator(spec.path)
    kind = get_kind(generator.output)
    plan = generator.plan(GenerationRequest(spec.sampler, spec.n_steps, spec.precision))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen.h5"
        for energy, n in _row_energies(kind.reference, config):
            for batch in config.batch_sizes:
                run = functools.partial(
                    generate_file,
                    spec.path,
                    out=out,
                    batch_size=batch,
                    n_steps=spec.n_steps,
                    sampler=spec.sampler,
                    precision=spec.precision,
                    overwrite=True,
                )
                run(np.full(min(batch, n), energy))  # warm-up
                times = [run(np.full(n, energy), seed=r).ms_per_shower for r in range(config.repeats)]
                rows.append(
                    BenchRow(
                        spec.label,
                        energy,
                        threads,
                        batch,
                        "cpu",
                        statistics.fmean(times),
                        statistics.pstdev(times),
                        n,
                        _peak_rss_mb(),
                        network_calls=plan.sampler.network_calls,
                        precision=plan.precision,
                        detector=kind.reference.detector or generator.detector.name,
                        particle=generator.particle,
                        load=LOADED,
                        default_threads=chosen,
                    )
                )
    return [asdict(r) for r in rows]


def _loaded_rows(config: BenchConfig, spec: ModelSpec) -> list[dict[str, Any]]:
    """``spec`` with one busy process beside it: default threads, 1 thread and all cores, at the
    middle energy and the largest batch size (a stalled run takes long: one row each)."""
    import dataclasses

    energies = sorted(config.energies)
    config = dataclasses.replace(
        config, energies=(energies[len(energies) // 2],), batch_sizes=(max(config.batch_sizes),)
    )
    rows = []
    with busy_process():
        for threads in dict.fromkeys((None, 1, os.cpu_count() or 1)):
            rows += _in_fresh_process(_command_worker, config, spec, threads)
    return rows


def _loaded_spec(
    models: Sequence[ModelSpec], targets: dict[str, tuple[str, str, bool, Reference]]
) -> ModelSpec | None:
    """The model of the loaded rows: the default model where it is timed, else the first shower
    model (a checkpoint, not an export); ``targets`` are :func:`_target` of every model."""
    from caloforge.models.registry import resolve_model

    default = str(resolve_model("default"))
    plain = [m for m in models if m.kind == "model" and targets[m.label][3].energy_gev is None]  # showers
    return next((m for m in plain if m.path == default), plain[0] if plain else None)


def _gpu(device: str = "auto") -> str | None:
    """The CUDA device the GPU rows run on for ``--device device`` (None: no GPU rows)."""
    from caloforge.devices import resolve_device

    on = resolve_device(device)
    return None if on == "cpu" else on


def run_bench(
    models: Sequence[ModelSpec],
    config: BenchConfig | None = None,
    progress: Callable[[str], None] | None = None,
    geant4: bool = True,
    fast_sim: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Time Geant4 and ``models``; returns ``{"machine": ..., "rows": [...]}`` (JSON-able).

    ``device`` (``--device``): ``auto`` adds GPU rows (one thread, the families that generate
    on a GPU) where torch sees a CUDA device, ``cuda:N`` on that one, ``cpu`` none.

    Speed-ups are filled in against the Geant4 row at the same energy and thread count. With
    ``fast_sim`` (a point-cloud model), full-chain rows too: ms per event of full Geant4 and of
    Geant4 with that model as its fast simulation, same events, and their ratio.
    """
    from caloforge.detector import available_detectors

    config = config or BenchConfig()
    gpu = _gpu(device)  # a CUDA device torch does not see: refused before anything runs
    rows: list[dict[str, Any]] = []
    targets = {spec.label: _target(spec) for spec in models}
    if fast_sim is not None:
        from caloforge.models.registry import load_generator

        if not get_kind(load_generator(fast_sim).output).positions:
            raise ValueError(f"--fast-sim {fast_sim}: fast simulation needs a point-cloud shower model")
    if geant4:
        for simulator in dict.fromkeys(t[3] for t in targets.values()):
            simulator.check()  # e.g. Pythia 8 + FastJet for jet models: refuse now, not late
    # The reference of every detector and particle a model makes (at least Geant4's ILD photons).
    references = list(dict.fromkeys((t[0], t[1], t[3]) for t in targets.values())) or [
        ("ild-ecal", "gamma", GEANT4)
    ]
    for threads in config.threads:
        if geant4:
            for detector, particle, simulator in references:
                if simulator.detector is None and detector not in available_detectors():
                    continue  # a user-defined detector: simulate it yourself for the reference
                if progress is not None:
                    what = simulator.what.format(detector=detector, particle=particle)
                    progress(f"{simulator.label} ({what}), {threads} worker(s)")
                rows += _in_fresh_process(simulator.timer(), config, threads, detector, particle)
        for spec in models:
            if progress is not None:
                progress(f"{spec.label}, {threads} thread(s)")
            rows += _in_fresh_process(_model_worker, config, spec, threads, "cpu")
    loaded = _loaded_spec(models, targets) if config.loaded else None
    if loaded is not None:
        if progress is not None:
            progress(f"{loaded.label} on a machine loaded by one busy process")
        rows += _loaded_rows(config, loaded)
    if fast_sim is not None:
        for threads in config.threads:
            if progress is not None:
                progress(f"full chain with {fast_sim}, {threads} worker(s)")
            rows += _in_fresh_process(_chain_worker, config, fast_sim, threads)
    if gpu is not None:
        for spec in models:
            if targets[spec.label][2]:
                if progress is not None:
                    progress(f"{spec.label}, GPU")
                rows += _in_fresh_process(_model_worker, config, spec, 1, gpu)
    reference = {
        (r["detector"], r["particle"], r["energy_gev"], r["threads"]): r["ms_per_shower"]
        for r in rows
        if r["generator"] in {kind.reference.label for kind in kinds()}
    }
    for r in rows:
        if r.get("load", QUIET) != QUIET:
            continue  # a loaded row is compared with the same model's loaded rows, not Geant4's
        g4 = reference.get((r["detector"], r["particle"], r["energy_gev"], r["threads"]))
        if g4 is not None and r["ms_per_shower"] > 0 and r.get("speedup") is None:
            r["speedup"] = g4 / r["ms_per_shower"]
    return {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "gpu": None if gpu is None else _gpu_name(gpu),
        },
        "config": {
            "energies_gev": list(config.energies),
            "threads": list(config.threads),
            "batch_sizes": list(config.batch_sizes),
            "gpu_batch_sizes": list(config.gpu_batch_sizes),
            "showers": {str(k): v for k, v in config.showers.items()},
            "geant4_showers": {str(k): v for k, v in config.geant4_showers.items()},
            "repeats": config.repeats,
            "loaded": config.loaded,
        },
        "models": [asdict(m) for m in models],
        "fast_sim": fast_sim,
        "rows": rows,
    }


def _gpu_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def to_markdown(result: dict[str, Any]) -> str:
    """The bench result as a Markdown table (one row per measurement; "× reference" is the
    speed-up against Geant4, or for jet models against Pythia 8 + FastJet, in the same run;
    threads marked "default" were chosen as ``caloforge generate`` chooses them), then one line
    per loaded-machine comparison (:func:`loaded_lines`)."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"),
        "",
        "| generator | showers | E [GeV] | machine | threads | batch | device | precision | calls "
        "| ms/shower | × reference | peak RSS [MB] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        speed = f"{r['speedup']:.1f}" if r.get("speedup") is not None else "—"
        batch = "—" if r["batch_size"] is None else str(r["batch_size"])
        calls = "—" if r.get("network_calls") is None else str(r["network_calls"])
        threads = f"{r['threads']} (default)" if r.get("default_threads") else str(r["threads"])
        lines.append(
            f"| {r['generator']} | {r.get('detector', 'ild-ecal')} {r.get('particle', 'gamma')} "
            f"| {r['energy_gev']:g} | {r.get('load', QUIET)} | {threads} | {batch} | {r['device']} "
            f"| {r.get('precision', '—')} | {calls} | {r['ms_per_shower']:.2f} ± {r['ms_std']:.2f} "
            f"| {speed} | {r['peak_rss_mb']:.0f} |"
        )
    loaded = loaded_lines(result)
    return "\n".join(lines + (["", *loaded] if loaded else [])) + "\n"


def loaded_lines(result: dict[str, Any]) -> list[str]:
    """One sentence per energy and batch size of the loaded-machine rows: the default thread
    choice against ``--threads 1`` and against all cores, on the same loaded machine."""
    loaded = [r for r in result["rows"] if r.get("load", QUIET) == LOADED and r["device"] == "cpu"]
    lines = []
    for key in dict.fromkeys((r["generator"], r["energy_gev"], r["batch_size"]) for r in loaded):
        same = [r for r in loaded if (r["generator"], r["energy_gev"], r["batch_size"]) == key]
        default = next((r for r in same if r.get("default_threads")), None)
        one = next((r for r in same if r["threads"] == 1 and not r.get("default_threads")), None)
        if default is None or one is None:
            continue
        most = max((r for r in same if not r.get("default_threads")), key=lambda r: r["threads"])
        line = (
            f"- Loaded machine ({LOADED}), {key[0]} at {key[1]:g} GeV, batch {key[2]}: default settings "
            f"({default['threads']} thread(s)) {default['ms_per_shower']:.2f} ms/shower, "
            f"{default['ms_per_shower'] / one['ms_per_shower']:.2f}× the time with --threads 1 "
            f"({one['ms_per_shower']:.2f} ms)"
        )
        if most["threads"] > 1:
            line += f"; --threads {most['threads']}: {most['ms_per_shower']:.2f} ms"
        lines.append(line + ".")
    return lines


def write_results(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.md`` in ``out_dir`` (atomically)."""
    from caloforge.atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "bench.md", to_markdown(result))
    return out / "bench.json", out / "bench.md"


ONNX_SUFFIX = " ONNX Runtime"


def default_models(
    models: Sequence[str] | None = None,
    onnx: bool = True,
    workdir: str | Path = ".",
    precisions: Sequence[str] = ("auto",),
) -> list[ModelSpec]:
    """The models to time: ``LABEL=PATH`` entries (or paths, or shipped names) of any family,
    else every family's shipped models (:attr:`~caloforge.models.protocol.Family.bench_models`),
    each at every precision of ``precisions`` its family runs (``auto``, ``float32``,
    ``bfloat16``; a label gets the precision appended when there are several); with ``onnx``,
    the last model whose family exports ONNX is also exported (into ``workdir``) and timed
    with ONNX Runtime."""
    from caloforge.models.protocol import PRECISIONS
    from caloforge.models.registry import families, family_of

    if not precisions:
        raise ValueError(f"no precision to time: give at least one of {', '.join(PRECISIONS)}")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision '{unknown[0]}': use {', '.join(PRECISIONS)}")
    if not models:
        entries = [f"{label}={name}" for family in families() for label, name in family.bench_models]
    else:
        entries = list(models)
    bases = []
    for entry in entries:
        label, _, path = entry.rpartition("=")
        family, checkpoint, _ = family_of(path)
        bases.append((label or Path(path).stem, str(checkpoint), family))
    wanted = list(dict.fromkeys(precisions))
    specs = []
    for p in wanted:
        for label, path, family in bases:
            runs = [q for q in wanted if q == "auto" or q in family.capabilities.precisions]
            if p not in runs:
                continue
            name = label if len(runs) == 1 else f"{label} {p}"
            specs.append(ModelSpec(name, "model", path, precision=p))
    if onnx:
        exportable = [(label, path) for label, path, family in bases if "onnx" in family.capabilities.export]
        if not exportable:
            raise ValueError(
                "--onnx needs a model whose family exports ONNX among --model; or pass --no-onnx"
            )
        from caloforge.export import export_model

        label, path = exportable[-1]
        target = Path(workdir) / (Path(path).stem + ".onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        export_model(path, target, "onnx")
        specs.append(ModelSpec(label + ONNX_SUFFIX, "onnx", str(target), precision="float32"))
    return specs
