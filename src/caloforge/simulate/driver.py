"""``caloforge simulate``: Geant4 showers in worker processes, clustered and streamed to disk.

Every event ``i`` of a job is fully determined by ``(seed, i)``: its incident energy comes
from a NumPy stream seeded with ``seed`` and its Geant4 random state is derived from
``(seed, i)`` by the engine. So the file does not depend on the number of workers, and a
resumed job produces the same showers as an uninterrupted one.

Geant4 never runs in the calling process: workers (one Geant4 each) are started with the
``spawn`` method and terminated at the end, which also sidesteps Geant4's unreliable
teardown at interpreter exit.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.clustering import cluster_steps
from caloforge.detector import Detector, get_detector
from caloforge.engines import check_engine, make_engine
from caloforge.io import (
    MAX_INCIDENT_GEV,
    PointShowers,
    ShowerFileError,
    ShowerWriter,
    VoxelShowers,
    open_showers,
)
from caloforge.pieces import PieceStore
from caloforge.projection import voxelise
from caloforge.safety import check_count, check_outputs, check_stop, output_lock, stop_signals, worker_setup
from caloforge.simulate._config import PHYSICS_CHOICES, Trigger
from caloforge.simulate.fastsim import DEFAULT_MAX_ANGLE_DEG
from caloforge.simulate.geometry import Geometry
from caloforge.simulate.gun import Gun, primaries

__all__ = [
    "EnergySpec",
    "FastSimSpec",
    "SimulationConfig",
    "SimulationResult",
    "draw_energies",
    "draw_event_energies",
    "energy_spectrum",
    "simulate",
]

PARTICLES = ("gamma", "e-", "e+")
DEFAULT_BLOCK = 10  # events per block (a piece of the job on disk)
FAST_SIM_BLOCK = 64  # with fast simulation: the model's batch


@dataclass(frozen=True)
class EnergySpec:
    """Incident-energy spectrum in GeV: ``fixed`` (lo only), ``uniform`` or ``log-uniform`` in [lo, hi]."""

    kind: str
    lo: float
    hi: float

    @classmethod
    def parse(cls, text: str, log: bool = False) -> EnergySpec:
        """``"50"`` → fixed, ``"10:90"`` → uniform (log-uniform with ``log``).

        >>> EnergySpec.parse("10:90"), EnergySpec.parse("1:100", log=True).kind
        (EnergySpec(kind='uniform', lo=10.0, hi=90.0), 'log-uniform')
        """
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(f"energy '{text}' is not a number or a range LO:HI in GeV") from None
        if len(parts) == 1:
            spec = cls("fixed", parts[0], parts[0])
        elif len(parts) == 2:
            spec = cls("log-uniform" if log else "uniform", parts[0], parts[1])
        else:
            raise ValueError(f"energy '{text}' must be a number or a range LO:HI in GeV")
        if not all(math.isfinite(p) for p in parts):
            raise ValueError(f"energy '{text}' must be finite numbers in GeV (not nan or inf)")
        if spec.lo <= 0 or spec.hi < spec.lo:
            raise ValueError(f"energy '{text}': need 0 < LO <= HI (GeV)")
        if spec.hi > MAX_INCIDENT_GEV:
            raise ValueError(f"energy '{text}': at most {MAX_INCIDENT_GEV:g} GeV")
        return spec

    def __str__(self) -> str:
        return f"{self.lo:g} GeV" if self.kind == "fixed" else f"{self.kind} {self.lo:g}-{self.hi:g} GeV"


def energy_spectrum(energy: str | None, energy_log: str | None) -> EnergySpec:
    """The incident-energy spectrum of ``--energy`` / ``--energy-log`` (default uniform 10-90 GeV).

    >>> energy_spectrum(None, "1:100").kind
    'log-uniform'
    """
    if energy is not None and energy_log is not None:
        raise ValueError("give either --energy or --energy-log, not both")
    return EnergySpec.parse(energy_log, log=True) if energy_log else EnergySpec.parse(energy or "10:90")


def draw_energies(spec: EnergySpec, n: int, seed: int, stream: int = 0) -> np.ndarray:
    """The incident energies (GeV) of events ``0..n-1`` of a job with ``seed`` (``stream`` k > 0:
    the k-th extra particle of each event, its own random stream)."""
    rng = np.random.default_rng([seed, 0xE1E + stream])
    if spec.kind == "fixed":
        return np.full(n, spec.lo)
    if spec.kind == "uniform":
        return rng.uniform(spec.lo, spec.hi, n)
    return np.exp(rng.uniform(math.log(spec.lo), math.log(spec.hi), n))


def draw_event_energies(spec: EnergySpec, n: int, seed: int, per_event: int = 1) -> np.ndarray:
    """``(n, per_event)``: the energy of each primary of events ``0..n-1`` (the first column is
    :func:`draw_energies`; a pair's second particle has its own stream)."""
    return np.column_stack([draw_energies(spec, n, seed, k) for k in range(per_event)])


@dataclass(frozen=True)
class FastSimSpec:
    """Fast simulation inside the run: ``model`` (a shipped name or a checkpoint) takes over the
    tracks of ``particles`` above ``min_energy_gev`` (``None``: the model's particle, its lowest
    trained energy)."""

    model: str
    particles: tuple[str, ...] | None = None
    min_energy_gev: float | None = None
    max_angle_deg: float = DEFAULT_MAX_ANGLE_DEG
    precision: str = "auto"
    device: str = "cpu"  # resolved (caloforge.devices): where the model's networks run

    def __post_init__(self) -> None:
        if self.particles is not None:
            unknown = [p for p in self.particles if p not in PARTICLES]
            if unknown or not self.particles:
                raise ValueError(
                    f"trigger particle '{(unknown or [''])[0]}' is not one of {', '.join(PARTICLES)}"
                )
        if not self.max_angle_deg >= 0:
            raise ValueError(f"the maximum angle must be >= 0 degrees, not {self.max_angle_deg}")

    def trigger(self, fast: Any) -> Trigger:
        """The trigger for the loaded model ``fast`` (:class:`~caloforge.simulate.fastsim.FastSim`)."""
        return fast.default_trigger(self.particles, self.min_energy_gev)

    def attrs(self, label: str, trigger: Trigger) -> dict[str, Any]:
        """File attributes of a fast-simulated data set."""
        return {
            "generator": f"geant4+{label}",
            "fast_sim_model": self.model,
            "fast_sim_label": label,
            "trigger_particles": ",".join(trigger.particles),
            "trigger_min_energy_gev": trigger.min_energy_gev,
        }


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated data set (recorded in the file's attributes)."""

    detector: str | Detector = "ild-ecal"  # a built-in name, a detector file, or a Detector
    particle: str = "gamma"
    energy: EnergySpec = field(default_factory=lambda: EnergySpec("uniform", 10.0, 90.0))
    n_showers: int = 100
    seed: int = 0
    physics: str = "datafree"
    gun: Gun = field(default_factory=Gun)
    fast_sim: FastSimSpec | None = None

    def __post_init__(self) -> None:
        # checked here, before a run makes anything on disk (its pieces, its lock)
        if self.physics not in PHYSICS_CHOICES:
            raise ValueError(f"unknown physics '{self.physics}': use {' or '.join(PHYSICS_CHOICES)}")
        check_count(self.n_showers, 64, "-n", "the energies and bookkeeping of the showers")

    def attrs(self) -> dict[str, Any]:
        """File attributes describing this job (the fast-simulation ones are added by the run)."""
        return self.gun.attrs() | {
            "generator": "geant4",
            "particle": self.particle,
            "energy_spectrum": self.energy.kind,
            "energy_min_gev": self.energy.lo,
            "energy_max_gev": self.energy.hi,
            "n_requested": self.n_showers,
            "physics": self.physics,
            "seed": self.seed,
        }


@dataclass
class SimulationResult:
    """What a :func:`simulate` call did."""

    path: Path
    voxel_path: Path | None  # the first voxel output (all of them: voxel_paths)
    n_done: int
    n_new: int
    wall_seconds: float
    geant4_seconds: float = 0.0  # summed over workers: inside Geant4 (incl. step collection)
    ours_seconds: float = 0.0  # summed over workers: clustering, voxelisation, copies
    model_seconds: float = 0.0  # summed over workers: fast-simulation model and placement
    fast_showers: int = 0  # showers the fast-simulation model made
    off_normal: int = 0  # of which placed along the normal although their track was tilted
    steps: int = 0
    points: int = 0
    interrupted: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    voxel_paths: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["voxel_path"] = str(self.voxel_path) if self.voxel_path else None
        out["voxel_paths"] = [str(p) for p in self.voxel_paths]
        return out


VoxelOut = str | Path | tuple[str | Path, str | Detector]


def voxel_outputs(voxel_out: VoxelOut | list[VoxelOut] | None, det: Detector) -> list[tuple[Path, Detector]]:
    """The voxel files of a simulation of ``det`` and the readout each one gets: a path (the
    detector's own readout) or ``(path, readout)`` for another polar readout of the same stack
    (e.g. ``calochallenge-ds3`` beside ``calochallenge-ds2``: one simulation, both files).

    >>> [(str(p), d.name) for p, d in voxel_outputs(["a.h5", ("b.h5", "calochallenge-ds3")],
    ...     get_detector("calochallenge-ds2"))]
    [('a.h5', 'calochallenge-ds2'), ('b.h5', 'calochallenge-ds3')]
    """
    if voxel_out is None:
        return []
    items = voxel_out if isinstance(voxel_out, list) else [voxel_out]
    out = []
    for item in items:
        path, readout = item if isinstance(item, tuple) else (item, det)
        ro = get_detector(readout)
        if not hasattr(ro.readout, "n_alpha"):
            raise ValueError(
                f"detector '{ro.name}' has a cell readout: --voxel-out writes polar voxels; for cell images "
                "convert the point file (caloforge convert --detector ild-ecal-30)"
            )
        if ro.name != det.name and Geometry.from_detector(ro) != Geometry.from_detector(det):
            raise ValueError(
                f"readout '{ro.name}' is not a readout of '{det.name}': its layers or materials differ "
                "(--voxel-out READOUT=PATH takes a readout of the simulated stack)"
            )
        out.append((Path(path), ro))
    return out


# --- worker side -------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(config: SimulationConfig, readouts: list[Detector]) -> None:
    worker_setup()  # Ctrl-C is handled by the parent, which stops the pool
    _WORKER["config"] = config
    _WORKER["detector"] = get_detector(config.detector)
    _WORKER["readouts"] = readouts
    _WORKER["fast"] = None
    if config.fast_sim is not None:
        import torch

        from caloforge.simulate.fastsim import FastSim

        torch.set_num_threads(1)  # one core per worker, like its Geant4
        spec = config.fast_sim
        fast = FastSim(
            spec.model,
            _WORKER["detector"],
            precision=spec.precision,
            max_angle_deg=spec.max_angle_deg,
            device=spec.device,
        )
        _WORKER["fast"] = fast
        _WORKER["trigger"] = spec.trigger(fast)


def _simulate_block(block: tuple[int, np.ndarray]) -> dict[str, Any]:
    from caloforge.simulate.geant4 import run_events, run_events_isolated

    first, energies = block
    config: SimulationConfig = _WORKER["config"]
    det: Detector = _WORKER["detector"]
    fast = _WORKER["fast"]
    t0 = time.perf_counter()
    geometry = Geometry.from_detector(det)
    args = (geometry, config.particle, primaries(config.gun, geometry, energies))
    kwargs = {
        "seed": config.seed,
        "first_event": first,
        "physics": config.physics,
        "trigger": _WORKER["trigger"] if fast is not None else None,
    }
    try:
        events = list(run_events(*args, **kwargs))
    except RuntimeError as exc:
        if "already initialised" not in str(exc):
            raise
        # A long-lived (Dask) worker whose Geant4 serves another geometry: a fresh process.
        events = list(run_events_isolated(*args, **kwargs).showers)
    steps = [hits for hits, _ in events]
    t1 = time.perf_counter()
    result: dict[str, Any] = {"first": first, "steps": int(sum(len(s) for s in steps))}
    result["fast_showers"] = result["off_normal"] = 0
    result["model_seconds"] = 0.0
    if fast is not None:
        added = fast.showers([entries for _, entries in events], config.seed, first)
        steps = [np.concatenate([s, d]) for s, d in zip(steps, added.deposits, strict=True)]
        result["fast_showers"], result["off_normal"] = added.n_showers, added.off_normal
        result["model_seconds"] = added.seconds
    t2 = time.perf_counter()
    result["clouds"] = [c.astype(np.float32) for c in cluster_steps(steps, det)]
    if _WORKER["readouts"]:
        # Voxels come from the raw steps, not the clustered points: exact voxel energies.
        raw = PointShowers.from_list(
            energies.sum(axis=1), [np.column_stack([s[:, :2], s[:, 2] + 0.5, s[:, 3]]) for s in steps]
        )
        result["voxels"] = [voxelise(raw, ro).voxels for ro in _WORKER["readouts"]]
    result["geant4_seconds"] = t1 - t0
    result["ours_seconds"] = time.perf_counter() - t2
    return result


# --- parent side -------------------------------------------------------------------------


def _fast_attrs(config: SimulationConfig, det: Detector) -> dict[str, Any]:
    """The fast-simulation attributes of ``config``'s files (after checking its set-up), or ``{}``."""
    spec = config.fast_sim
    if spec is None:
        return {}
    from caloforge.simulate.fastsim import FastSim

    fast = FastSim(
        spec.model, det, precision=spec.precision, max_angle_deg=spec.max_angle_deg, device=spec.device
    )
    trigger = spec.trigger(fast)
    fast.check(trigger, config.particle, (config.energy.lo, config.energy.hi), config.gun.targets_mm())
    return spec.attrs(fast.label, trigger)


def _check_resumable(path: Path, config: SimulationConfig, det: Detector, extra: dict[str, Any]) -> int:
    """Showers in ``path`` (an output of this job, on the readout ``det``) after checking it was
    made with the same settings."""
    with open_showers(path) as f:
        attrs = f.attrs
        n = len(f)
        geometry = f.detector.to_dict()
    expected = (
        config.attrs()
        | {"detector": det.name}
        | {k: v for k, v in extra.items() if k != "detector_description"}
    )
    for key, value in expected.items():
        have = attrs.get(key)
        same = math.isclose(float(have), float(value)) if isinstance(value, float) else have == value
        if key != "n_requested" and not same:
            raise ShowerFileError(
                f"cannot resume '{path}': it was made with {key}={have!r}, this job has {key}={value!r}"
            )
    if geometry != det.to_dict():
        raise ShowerFileError(
            f"cannot resume '{path}': it was simulated in another geometry of '{det.name}' "
            "(its detector_json attribute differs from this job's detector)"
        )
    return n


def _piece(block: dict[str, Any]) -> dict[str, np.ndarray]:
    """A finished block as arrays for the piece store (points concatenated, with counts)."""
    clouds = block["clouds"]
    arrays = {
        "counts": np.array([len(c) for c in clouds], np.int64),
        "points": np.concatenate(clouds) if clouds else np.zeros((0, 4), np.float32),
        "stats": np.array([block["steps"], block["geant4_seconds"], block["ours_seconds"]], np.float64),
    }
    for i, voxels in enumerate(block.get("voxels", [])):
        arrays[_voxel_key(i)] = voxels.astype(np.float32)
    return arrays


def _manifest_voxels(det: Detector, readouts: list[Detector]) -> bool | list[str]:
    """What the piece store records of the voxel outputs: whether there is one on the simulated
    detector (as written before there could be several), else the readouts' names."""
    names = [r.name for r in readouts]
    return bool(names) if names in ([], [det.name]) else names


def _voxel_key(i: int) -> str:
    """The piece array of voxel output ``i`` (``voxels`` for the first, as before)."""
    return "voxels" if i == 0 else f"voxels_{i}"


def _clouds(piece: dict[str, np.ndarray]) -> list[np.ndarray]:
    return np.split(piece["points"], np.cumsum(piece["counts"])[:-1]) if len(piece["counts"]) else []


def simulate(
    config: SimulationConfig,
    out: str | Path,
    *,
    voxel_out: VoxelOut | list[VoxelOut] | None = None,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    block_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> SimulationResult:
    """Simulate ``config.n_showers`` showers into ``out`` (points) and optionally ``voxel_out``
    (one or more voxel files: :func:`voxel_outputs`; every readout from the same showers).

    Every finished block of ``block_size`` events (default 10; 64 with fast simulation, the
    model's batch) is saved at once in the job's piece store (:mod:`caloforge.pieces`,
    ``.OUT.pieces/``); the outputs are assembled from the pieces,
    atomically, only when every block is done. So Ctrl-C, SIGTERM or even ``kill -9`` lose
    at most the blocks in flight, leave existing outputs exactly as they were, and
    ``resume=True`` continues from the saved blocks (or extends a finished file with more
    showers). One run at a time per output (:func:`caloforge.safety.output_lock`).
    ``progress(done, total)`` is called after every block. ``engine`` runs the blocks
    (:mod:`caloforge.engines`: ``local`` processes, or ``dask`` on ``scheduler`` or a local
    cluster of ``workers``); the file is the same whatever runs them.
    """
    det = get_detector(config.detector)
    if config.particle not in PARTICLES:
        raise ValueError(f"particle '{config.particle}' is not one of {', '.join(PARTICLES)}")
    if config.n_showers < 1:
        raise ValueError("the number of showers must be at least 1")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if block_size is None:  # fast simulation generates a block's showers in one batch
        block_size = FAST_SIM_BLOCK if config.fast_sim is not None else DEFAULT_BLOCK
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    voxels = voxel_outputs(voxel_out, det)
    paths = [Path(out)] + [p for p, _ in voxels]
    readouts = [det] + [ro for _, ro in voxels]
    check_outputs(
        {"--out": paths[0]}
        | {"--voxel-out" + (f" #{i + 1}" if i else ""): p for i, p in enumerate(paths[1:])}
    )
    check_engine(engine, scheduler)  # the names and the scheduler, before the pieces are made
    from caloforge.simulate.geant4 import check_physics_data

    check_physics_data(config.physics)
    if max(map(abs, config.gun.offset_mm)) > det.half_size_mm:
        raise ValueError(
            f"--gun-offset {','.join(f'{v:g}' for v in config.gun.offset_mm)} mm misses the front face of "
            f"'{det.name}' (half size {det.half_size_mm:g} mm): every shower would be empty"
        )
    if (
        config.gun.pair_separation_mm is not None
        and config.gun.pair_separation_mm / 2 + max(map(abs, config.gun.offset_mm)) > det.half_size_mm
    ):
        raise ValueError(
            f"the pair does not fit on the front face of '{det.name}' (half size {det.half_size_mm:g} mm)"
        )
    # A fast-simulation set-up that cannot work fails here, before any event.
    extra = {"detector_description": det.description} | _fast_attrs(config, det)
    with output_lock(*paths), stop_signals(deferred=True):
        return _run(
            config,
            det,
            extra,
            list(zip(paths, readouts, strict=True)),
            (engine, workers, scheduler),
            resume,
            overwrite,
            block_size,
            progress,
        )


def _run(
    config: SimulationConfig,
    det: Detector,
    extra: dict[str, Any],
    outputs: list[tuple[Path, Detector]],
    engine: tuple[str, int, str | None],
    resume: bool,
    overwrite: bool,
    block_size: int,
    progress: Callable[[int, int], None] | None,
) -> SimulationResult:
    base = 0
    paths = [p for p, _ in outputs]
    readouts = [ro for _, ro in outputs[1:]]
    if resume:
        existing = [_check_resumable(p, config, ro, extra) if p.exists() else 0 for p, ro in outputs]
        if len(set(existing)) != 1:
            counts = ", ".join(f"'{p}' has {k}" for p, k in zip(paths, existing, strict=True))
            raise ShowerFileError(f"cannot resume: the outputs differ ({counts} showers); remove one")
        base = existing[0]
    else:
        for p in paths:
            if p.exists() and not overwrite:
                raise FileExistsError(
                    f"'{p}' exists: pass --resume to continue it or --overwrite to replace it"
                )
    manifest = (
        config.attrs()
        | extra
        | {
            "detector_json": json.dumps(det.to_dict(), sort_keys=True),
            "block_size": block_size,
            "base": base,
            "voxels": _manifest_voxels(det, readouts),
        }
    )
    store = PieceStore.open(paths[0], manifest, resume=resume, overwrite=overwrite, ignore=("n_requested",))
    if store.manifest["base"] != base:
        raise ShowerFileError(
            f"cannot resume '{paths[0]}': it held {store.manifest['base']} showers when its unfinished "
            f"run started and holds {base} now; pass --overwrite to start again"
        )
    block_size = int(store.manifest["block_size"])
    n = config.n_showers
    energies = draw_event_energies(config.energy, n, config.seed, config.gun.n_particles)
    firsts = range(base, n, block_size)
    finished = store.finished()
    for first, count in finished.items():
        if first not in firsts or count != min(block_size, n - first):
            store.drop(first)  # a block of another -n, computed again below
    finished = {f: c for f, c in store.finished().items() if f in firsts}
    first_voxels = paths[1] if len(paths) > 1 else None
    result = SimulationResult(paths[0], first_voxels, base, 0, 0.0, voxel_paths=paths[1:])
    saved = sum(finished.values())
    todo = [(lo, energies[lo : lo + block_size]) for lo in firsts if lo not in finished]
    t0 = time.perf_counter()
    result.n_done = base + saved
    if todo:
        done = result.n_done
        result.n_done = _simulate_pieces(config, store, todo, engine, readouts, result, done, progress)
    if not result.interrupted and firsts:
        try:
            _assemble(config, extra, outputs, store, list(firsts), energies, block_size, resume)
        except KeyboardInterrupt:
            result.interrupted = True  # the outputs are as they were; the pieces are kept
        else:
            store.remove()
    elif not result.interrupted:
        store.remove()  # nothing was left to simulate
    result.wall_seconds = time.perf_counter() - t0
    return result


def _simulate_pieces(
    config: SimulationConfig,
    store: PieceStore,
    todo: list[tuple[int, np.ndarray]],
    engine: tuple[str, int, str | None],
    readouts: list[Detector],
    result: SimulationResult,
    done: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Run the missing blocks, saving each as it arrives; returns ``done`` plus the showers saved."""
    name, workers, scheduler = engine
    workers = min(workers, len(todo))
    pool = make_engine(name, workers, scheduler, _worker_init, (config, readouts))
    try:
        for block in pool.imap_unordered(_simulate_block, todo):
            check_stop()
            n_block = len(block["clouds"])
            store.save(block["first"], n_block, _piece(block))
            done += n_block
            result.n_new += n_block
            result.steps += block["steps"]
            result.points += int(sum(len(c) for c in block["clouds"]))
            result.geant4_seconds += block["geant4_seconds"]
            result.ours_seconds += block["ours_seconds"]
            result.model_seconds += block["model_seconds"]
            result.fast_showers += block["fast_showers"]
            result.off_normal += block["off_normal"]
            if progress is not None:
                progress(done, config.n_showers)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        pool.close()
    return done


def _assemble(
    config: SimulationConfig,
    extra: dict[str, Any],
    outputs: list[tuple[Path, Detector]],
    store: PieceStore,
    firsts: list[int],
    energies: np.ndarray,
    block_size: int,
    resume: bool,
) -> None:
    """Write the outputs from the existing files (when resuming) and the pieces, atomically."""
    attrs = config.attrs() | extra
    generator = attrs["generator"]
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(
                ShowerWriter(
                    p,
                    "points" if i == 0 else "voxels",
                    ro,
                    generator=generator,
                    seed=config.seed,
                    attrs=attrs | ({"detector_description": ro.description} if i else {}),
                    append=resume and p.exists(),
                    expected=config.n_showers,
                )
            )
            for i, (p, ro) in enumerate(outputs)
        ]
        for first in firsts:
            check_stop()
            piece = store.load(first)
            block_energy = energies[first : first + block_size].sum(axis=1)
            writers[0].write(PointShowers.from_list(block_energy, _clouds(piece)))
            for i, writer in enumerate(writers[1:]):
                writer.write(VoxelShowers(block_energy, piece[_voxel_key(i)]))
