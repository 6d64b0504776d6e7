"""Plain data types shared by the engine and its callers (no Geant4 import)."""

from __future__ import annotations

from dataclasses import dataclass

from caloforge.simulate.geometry import Geometry

HIT_COLUMNS = ("x_mm", "y_mm", "layer", "edep_MeV")
PHYSICS_CHOICES = ("datafree", "standard")
COLLECTOR_CHOICES = ("cpp", "python", "none")


#: Columns of a primary (one row per particle of an event): E [GeV], start x, y, z [mm],
#: direction dx, dy, dz (unit vector).
PRIMARY_COLUMNS = ("energy_gev", "x_mm", "y_mm", "z_mm", "dx", "dy", "dz")
#: Columns of a fast-simulation trigger record: the track's E [GeV], where it crosses the
#: calorimeter's front face (x, y [mm]) and its direction there (dx, dy, dz).
ENTRY_COLUMNS = ("energy_gev", "x_mm", "y_mm", "dx", "dy", "dz")


@dataclass(frozen=True)
class Trigger:
    """Which tracks a fast-simulation model takes over: one of ``particles``, with at least
    ``min_energy_gev`` of kinetic energy, created in front of the calorimeter and heading into
    its front face (Geant4 kills them and records where they enter)."""

    particles: tuple[str, ...] = ("gamma",)
    min_energy_gev: float = 1.0

    def __post_init__(self) -> None:
        if not self.particles:
            raise ValueError("a fast-simulation trigger needs at least one particle type")
        if not self.min_energy_gev >= 0:
            raise ValueError(f"the trigger's minimum energy must be >= 0 GeV, not {self.min_energy_gev}")


@dataclass(frozen=True)
class EngineConfig:
    """What a process's Geant4 instance is built for; it cannot change afterwards."""

    geometry: Geometry
    physics: str = "datafree"
    collector: str = "cpp"
    trigger: Trigger | None = None  # fast simulation: kill and record the tracks it selects

    def __post_init__(self) -> None:
        if self.physics not in PHYSICS_CHOICES:
            raise ValueError(f"physics must be one of {PHYSICS_CHOICES}, not {self.physics!r}")
        if self.collector not in COLLECTOR_CHOICES:
            raise ValueError(f"collector must be one of {COLLECTOR_CHOICES}, not {self.collector!r}")


@dataclass
class EngineStats:
    """Cumulative counters of one process's Geant4 engine (times are wall-clock seconds)."""

    events: int = 0
    steps: int = 0
    init_seconds: float = 0.0
    geant4_seconds: float = 0.0  # inside BeamOn: tracking plus the step collector
    overhead_seconds: float = 0.0  # our per-event work outside Geant4 (seeding, buffer copy)
