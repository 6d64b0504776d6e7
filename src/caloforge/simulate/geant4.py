"""Geant4 reference simulation of single-particle showers in a planar calorimeter.

Usage::

    from caloforge.simulate.geant4 import run_showers
    from caloforge.simulate.geometry import ild_like

    for hits in run_showers(ild_like(), "gamma", np.full(10, 50.0), seed=1):
        ...  # hits: (n_steps, 4) float64 array of x_mm, y_mm, layer, edep_MeV

Each row is one Geant4 step with energy deposit in an active layer; x and y are
taken at the step midpoint (mean of pre- and post-step points), which lies inside
the layer. Event ``i`` of a call is seeded from ``(seed, first_event + i)`` only, so
showers do not depend on how events are split between calls or processes.

Geant4 allows one run manager per process: the first call builds it for its
geometry/physics, later calls in the same process must use the same ones (this
module never imports geant4_pybind before that first call). Geant4 may crash while
tearing down at interpreter exit, so worker processes should write their results,
then leave with :func:`hard_exit`; :func:`run_showers_isolated` does this for you.

``physics="datafree"`` (default) needs no Geant4 data sets: standard-like EM physics
for gamma/e-/e+ (photo-effect, Compton, conversion, Urban msc, ionisation,
relativistic bremsstrahlung at all energies, annihilation; production cut 0.7 mm) is
assembled by a small C++ bridge compiled with g++ on first use (about 0.5 s) and
cached under ``~/.cache/caloforge``. ``physics="standard"`` uses FTFP_BERT and needs
the real data sets (``GEANT4_DATA_DIR``).

Environment: ``CALOFORGE_CACHE_DIR`` moves the cache, ``CXX`` picks the compiler and
``CALOFORGE_G4_VERBOSE=1`` shows Geant4's start-up output (otherwise written to a
log file in the cache that is deleted after a successful start).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from caloforge.processes import ChildFailed, run_in_fresh_process
from caloforge.simulate._build import cache_dir
from caloforge.simulate._config import (
    COLLECTOR_CHOICES,
    HIT_COLUMNS,
    PHYSICS_CHOICES,
    EngineConfig,
    EngineStats,
    Trigger,
)
from caloforge.simulate.geometry import Geometry
from caloforge.simulate.gun import Gun, primaries

if TYPE_CHECKING:
    from caloforge.simulate._engine import Engine

__all__ = [
    "COLLECTOR_CHOICES",
    "HIT_COLUMNS",
    "PHYSICS_CHOICES",
    "EngineStats",
    "IsolatedResult",
    "engine_stats",
    "event_seeds",
    "hard_exit",
    "prepare_environment",
    "run_events",
    "run_events_isolated",
    "run_showers",
    "run_showers_isolated",
]

_PARTICLE_ALIASES = {"photon": "gamma", "electron": "e-", "positron": "e+"}
_DATAFREE_PARTICLES = ("gamma", "e-", "e+")
_VERBOSE_ENV = "CALOFORGE_G4_VERBOSE"

_instance: Engine | None = None
_busy = False


def _has_real_data(directory: str | None) -> bool:
    """Whether ``directory`` holds Geant4's EM data set (G4EMLOW*)."""
    return bool(directory) and any(Path(str(directory)).glob("G4EMLOW*"))


#: The Geant4 data sets physics="standard" (FTFP_BERT) reads, by the prefix of their folders.
STANDARD_DATA = ("G4EMLOW", "G4ENSDFSTATE", "PhotonEvaporation", "G4PARTICLEXS", "G4SAIDDATA")


def check_physics_data(physics: str) -> None:
    """Refuse, in one line, a ``physics`` whose Geant4 data sets are not installed, naming the
    missing ones (before a run makes anything on disk)."""
    if physics != "standard":
        return
    data_dir = os.environ.get("GEANT4_DATA_DIR")
    if not data_dir:
        raise ValueError(
            "--physics standard needs the Geant4 data sets (" + ", ".join(STANDARD_DATA) + "): set "
            "GEANT4_DATA_DIR to the folder holding them, or use --physics datafree (EM showers of "
            "photons, electrons and positrons need no data)"
        )
    missing = [name for name in STANDARD_DATA if not any(Path(data_dir).glob(f"{name}*"))]
    if missing:
        raise ValueError(
            f"--physics standard: GEANT4_DATA_DIR '{data_dir}' lacks the Geant4 data sets "
            f"{', '.join(missing)}; install them there, or use --physics datafree"
        )


def prepare_environment(physics: str = "datafree") -> None:
    """Set the Geant4 data variables; must run before geant4_pybind is imported.

    geant4_pybind downloads data sets at import unless ``GEANT4_DATA_DIR`` is set.
    Even with data-free physics, Geant4 insists that two data sets exist: an empty
    ENSDFSTATE.dat and an empty PhotonEvaporation directory satisfy it (EM physics
    of gamma/e-/e+ reads neither). Variables that are already set are kept.
    """
    if physics not in PHYSICS_CHOICES:
        raise ValueError(f"physics must be one of {PHYSICS_CHOICES}, not {physics!r}")
    data_dir = os.environ.get("GEANT4_DATA_DIR")
    if physics == "standard":
        check_physics_data(physics)
        return
    if _has_real_data(data_dir):
        return
    stub = cache_dir() / "g4data-stub"
    ensdf = stub / "ENSDFSTATE"
    levels = stub / "PhotonEvaporation"
    ensdf.mkdir(parents=True, exist_ok=True)
    levels.mkdir(parents=True, exist_ok=True)
    (ensdf / "ENSDFSTATE.dat").touch()
    os.environ.setdefault("GEANT4_DATA_DIR", str(stub))
    os.environ.setdefault("G4ENSDFSTATEDATA", str(ensdf))
    os.environ.setdefault("G4LEVELGAMMADATA", str(levels))


def event_seeds(seed: int, event_index: int) -> tuple[int, int, int, int]:
    """Four 32-bit MixMax seeds for event ``event_index`` of a run seeded with ``seed``."""
    if seed < 0 or event_index < 0:
        raise ValueError("seed and event index must be non-negative")
    state = np.random.SeedSequence(seed, spawn_key=(event_index,)).generate_state(4, np.uint32)
    a, b, c, d = (int(s) for s in state)
    return a, b, c, d


def _geant4_library() -> Path:
    spec = importlib.util.find_spec("geant4_pybind")
    if spec is None or spec.origin is None:
        raise ImportError(
            "geant4_pybind is not installed: pip install 'caloforge[geant4]' (geant4_pybind==0.1.3)"
        )
    return Path(spec.origin)


def get_engine(
    geometry: Geometry, physics: str = "datafree", collector: str = "cpp", trigger: Trigger | None = None
) -> Engine:
    """Return this process's Geant4 engine, building it on first use."""
    global _instance
    config = EngineConfig(geometry, physics, collector, trigger)
    if _instance is None:
        prepare_environment(physics)
        library = _geant4_library()
        from caloforge.simulate._engine import Engine

        verbose = os.environ.get(_VERBOSE_ENV, "") not in ("", "0")
        log_path = None if verbose else cache_dir() / "logs" / f"geant4-init-{os.getpid()}.log"
        _instance = Engine(config, library, log_path)
    elif _instance.config != config:
        what = "geometry" if _instance.config.geometry != geometry else "physics/collector/trigger"
        raise RuntimeError(
            f"Geant4 is already initialised in this process for another {what}; it cannot "
            "be re-initialised, so simulate other configurations in another process"
        )
    return _instance


def engine_stats() -> EngineStats | None:
    """Timing/step counters of this process's engine (None before the first call)."""
    return None if _instance is None else _instance.stats


def run_showers(
    geometry: Geometry,
    particle: str,
    energies_gev: np.ndarray,
    seed: int,
    physics: str = "datafree",
    *,
    first_event: int = 0,
    collector: str = "cpp",
) -> Iterator[np.ndarray]:
    """Simulate one shower per entry of ``energies_gev`` and yield its deposits.

    Yields, per event, a float64 array of shape (n_steps, 4) with columns
    ``x_mm, y_mm, layer, edep_MeV`` (see the module docstring). Event ``k`` uses the
    seeds ``event_seeds(seed, first_event + k)``. ``collector="python"`` selects a
    slow pure-Python step collector (bit-identical, for cross-checks) and ``"none"``
    records nothing (for timing Geant4 alone). Geant4 is initialised by this call,
    not lazily on iteration, so configuration errors surface immediately.
    """
    if not isinstance(geometry, Geometry):
        raise TypeError(
            f"geometry must be a caloforge.simulate.geometry.Geometry, not {type(geometry).__name__}"
        )
    energies = np.asarray(energies_gev, dtype=np.float64)
    if energies.ndim != 1 or not np.all(np.isfinite(energies)) or np.any(energies <= 0):
        raise ValueError("energies_gev must be a 1-D array of positive, finite energies")
    events = run_events(
        geometry,
        particle,
        primaries(Gun(), geometry, energies[:, None]),  # one particle on the beam axis
        seed,
        physics,
        first_event=first_event,
        collector=collector,
    )
    return (hits for hits, _ in events)


def run_events(
    geometry: Geometry,
    particle: str,
    primaries: list[np.ndarray],
    seed: int,
    physics: str = "datafree",
    *,
    first_event: int = 0,
    collector: str = "cpp",
    trigger: Trigger | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like :func:`run_showers` for events of any primaries (``primaries[k]``: ``(m, 7)``,
    :data:`~caloforge.simulate._config.PRIMARY_COLUMNS`); yields ``(hits, entries)`` per
    event, ``entries`` being the tracks ``trigger`` handed to fast simulation
    (:data:`~caloforge.simulate._config.ENTRY_COLUMNS`; empty without a trigger)."""
    if not isinstance(geometry, Geometry):
        raise TypeError(
            f"geometry must be a caloforge.simulate.geometry.Geometry, not {type(geometry).__name__}"
        )
    rows = [np.asarray(p, dtype=np.float64).reshape(-1, 7) for p in primaries]
    for p in rows:
        if not np.all(np.isfinite(p)) or np.any(p[:, 0] <= 0):
            raise ValueError("primary energies must be positive and finite, positions and directions finite")
    particle = _PARTICLE_ALIASES.get(particle, particle)
    if physics == "datafree" and particle not in _DATAFREE_PARTICLES:
        raise ValueError(f"data-free physics only simulates {_DATAFREE_PARTICLES}, not {particle!r}")
    if first_event < 0:
        raise ValueError("first_event must be non-negative")
    seeds = [event_seeds(seed, first_event + k) for k in range(len(rows))]
    engine = get_engine(geometry, physics, collector, trigger)
    return _iterate(engine, particle, rows, seeds)


def _iterate(
    engine: Engine, particle: str, primaries: list[np.ndarray], seeds: list[tuple[int, int, int, int]]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    global _busy
    # One Geant4 instance and one hit buffer cannot serve two loops at once.
    if _busy:
        raise RuntimeError(
            "another run_showers() iteration is still active in this process (exhaust or close() it first)"
        )
    _busy = True
    try:
        yield from engine.events(particle, primaries, seeds)
    finally:
        _busy = False


def hard_exit(code: int = 0) -> None:
    """Flush Python's streams and end the process, skipping Geant4's crash-prone teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class IsolatedResult:
    """Showers and engine counters returned by :func:`run_showers_isolated`."""

    showers: list[np.ndarray]
    stats: EngineStats = field(default_factory=EngineStats)


def _isolated_run(args: tuple, kwargs: dict, events: bool = False) -> IsolatedResult:
    """The showers (or events) of one run and the engine's counters, in the fresh process."""
    showers = list((run_events if events else run_showers)(*args, **kwargs))
    return IsolatedResult(showers, engine_stats() or EngineStats())


def run_showers_isolated(
    geometry: Geometry,
    particle: str,
    energies_gev: np.ndarray,
    seed: int,
    physics: str = "datafree",
    *,
    first_event: int = 0,
    collector: str = "cpp",
) -> IsolatedResult:
    """Like :func:`run_showers`, but in a fresh (spawned) process; returns all showers.

    Keeps the calling process free of Geant4, e.g. to simulate several geometries
    from one program or in tests.
    """
    args = (geometry, particle, np.asarray(energies_gev, dtype=np.float64), seed, physics)
    return _in_spawned(args, {"first_event": first_event, "collector": collector}, events=False)


def run_events_isolated(
    geometry: Geometry,
    particle: str,
    primaries: list[np.ndarray],
    seed: int,
    physics: str = "datafree",
    *,
    first_event: int = 0,
    collector: str = "cpp",
    trigger: Trigger | None = None,
) -> IsolatedResult:
    """:func:`run_events` in a fresh (spawned) process; ``showers`` holds the ``(hits, entries)``."""
    kwargs = {"first_event": first_event, "collector": collector, "trigger": trigger}
    return _in_spawned((geometry, particle, primaries, seed, physics), kwargs, events=True)


def _in_spawned(args: tuple, kwargs: dict, events: bool) -> IsolatedResult:
    try:
        return run_in_fresh_process(_isolated_run, args, kwargs, events, daemon=True, hard_exit=True)
    except ChildFailed as exc:
        if exc.died:
            raise RuntimeError(
                f"Geant4 worker process died (exit code {exc.exitcode}) before returning showers"
            ) from None
        raise RuntimeError(f"Geant4 worker process failed:\n{exc.detail}") from None
