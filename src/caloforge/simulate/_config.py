"""Plain data types shared by the engine and its callers (no Geant4 import)."""

from __future__ import annotations

from dataclasses import dataclass

from caloforge.simulate.geometry import Geometry

HIT_COLUMNS = ("x_mm", "y_mm", "layer", "edep_MeV")
PHYSICS_CHOICES = ("datafree", "standard")
COLLECTOR_CHOICES = ("cpp", "python", "none")


@dataclass(frozen=True)
class EngineConfig:
    """What a process's Geant4 instance is built for; it cannot change afterwards."""

    geometry: Geometry
    physics: str = "datafree"
    collector: str = "cpp"

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
