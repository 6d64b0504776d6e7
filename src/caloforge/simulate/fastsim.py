"""Fast simulation inside a Geant4 run: a trained shower model replaces Geant4's shower.

Geant4 tracks every event as usual; a stacking action (``_engine._TriggerStacking``) looks at
each new track and, when the :class:`~caloforge.simulate._config.Trigger` selects it (its
particle type, at least its minimum energy, created in front of the calorimeter and heading
into the front face: :func:`front_face_entry`), kills it and records where it enters. After
the event, the model generates one shower per recorded track (all the tracks of a block of
events in one batch), each shower is placed at its track's entry point (:func:`place`) and its
points are deposited as hits of the same readout that full simulation fills: they are merged
with Geant4's own deposits of the event and clustered together, so both modes write the same
file kind.

Why a stacking action, not a ``G4VFastSimulationModel``: geant4_pybind 0.1.3 binds neither
``G4VFastSimulationModel`` nor ``G4FastTrack``/``G4FastStep``, and the world in front of the
calorimeter is vacuum, so a track's entry point is its straight-line extrapolation (exact).
The cost is one Python call per new track — in a fast-simulated event, one per primary.

The shipped models are conditioned on energy alone: a shower is placed at the entry point
along the detector normal, and tracks more than ``max_angle_deg`` off the normal are counted
and reported.

>>> front_face_entry((1.0, 2.0, -50.0), (0.0, 0.0, 1.0), front_mm=0.0, half_mm=100.0)
(1.0, 2.0)
>>> front_face_entry((0.0, 0.0, 10.0), (0.0, 0.0, 1.0), front_mm=0.0, half_mm=100.0) is None  # inside
True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caloforge.detector import Detector
from caloforge.simulate._config import ENTRY_COLUMNS, Trigger

__all__ = [
    "ENTRY_COLUMNS",
    "FastSim",
    "FastSimError",
    "Trigger",
    "front_face_entry",
    "place",
]

#: Showers of energy-only models are placed along the normal; tracks further off it are reported.
DEFAULT_MAX_ANGLE_DEG = 5.0


class FastSimError(ValueError):
    """A fast-simulation set-up that cannot work (wrong detector, a trigger that never fires, …)."""


def front_face_entry(
    position: Sequence[float], direction: Sequence[float], front_mm: float, half_mm: float
) -> tuple[float, float] | None:
    """Where a track at ``position`` (mm) along ``direction`` crosses the front face (depth
    ``front_mm``, ``|x|, |y| <= half_mm``), or ``None``: already inside or behind it, not heading
    into it, or passing beside it."""
    x, y, z = position
    dx, dy, dz = direction
    if z >= front_mm or dz <= 0:
        return None
    t = (front_mm - z) / dz
    ex, ey = x + t * dx, y + t * dy
    if abs(ex) > half_mm or abs(ey) > half_mm:
        return None
    return float(ex), float(ey)


def place(points: np.ndarray, entry: np.ndarray, n_layers: int) -> np.ndarray:
    """A generated shower (``(P, 4)``: x, y, layer coordinate, E MeV; ``E == 0`` padding) as hits
    ``(k, 4)`` (x mm, y mm, layer index, E MeV) with its axis through ``entry`` (ENTRY_COLUMNS)."""
    pts = np.asarray(points, np.float64)
    pts = pts[pts[:, 3] > 0]
    layer = np.clip(np.floor(pts[:, 2]), 0, n_layers - 1)
    return np.column_stack([pts[:, 0] + entry[1], pts[:, 1] + entry[2], layer, pts[:, 3]])


@dataclass
class FastSimBlock:
    """What fast simulation added to a block of events."""

    deposits: list[np.ndarray]  # per event: the placed hits of all its model showers
    n_showers: int = 0
    off_normal: int = 0  # showers whose track was more than max_angle_deg off the normal
    seconds: float = 0.0

    @property
    def model_energy_mev(self) -> np.ndarray:
        """Per event: the summed energy of its model showers."""
        return np.array([d[:, 3].sum() for d in self.deposits])


class FastSim:
    """A shower model ready to take over the tracks a trigger selects in ``detector``.

    Refuses (:class:`FastSimError`) a model of another detector or that makes voxels, before
    any event is simulated.
    """

    def __init__(
        self,
        model: str | Path,
        detector: Detector,
        *,
        precision: str = "auto",
        max_angle_deg: float = DEFAULT_MAX_ANGLE_DEG,
        device: str = "cpu",
    ) -> None:
        from caloforge.kinds import get_kind
        from caloforge.models.protocol import GenerationRequest
        from caloforge.models.registry import load_generator

        generator = load_generator(model)
        if not get_kind(generator.output).positions:
            raise FastSimError(
                f"model '{model}' generates {generator.output}: fast simulation places point-cloud "
                "showers as hits (use a point-cloud model such as 'default')"
            )
        if generator.detector.to_dict() != detector.to_dict():
            raise FastSimError(
                f"model '{model}' was trained for detector '{generator.detector.name}', this simulation "
                f"is in '{detector.name}' (another geometry): use a model of this detector"
            )
        self.model = str(model)
        self.generator = generator
        self.detector = detector
        self.plan = generator.plan(GenerationRequest(precision=precision, device=device))
        self.max_angle_deg = float(max_angle_deg)
        energy = [c for c in generator.conditions if c.name == "energy"]
        if len(generator.conditions) != 1 or not energy:
            names = ", ".join(c.name for c in generator.conditions)
            raise FastSimError(
                f"model '{model}' is conditioned on {names}: fast simulation supplies the energy only"
            )
        self.energy_range = (energy[0].low, energy[0].high)

    @property
    def label(self) -> str:
        """The model's generator label (what its own generated files record)."""
        return self.generator.label

    def default_trigger(
        self, particles: Sequence[str] | None = None, min_energy_gev: float | None = None
    ) -> Trigger:
        """A trigger for this model: its own particle and, unless given, its lowest trained energy."""
        return Trigger(
            tuple(particles) if particles else (self.generator.particle,),
            self.energy_range[0] if min_energy_gev is None else float(min_energy_gev),
        )

    def check(
        self, trigger: Trigger, particle: str, energies_gev: tuple[float, float], targets_mm: np.ndarray
    ) -> None:
        """Refuse, before the run, a gun whose tracks the trigger never takes or this model cannot make."""
        hi = energies_gev[1]
        if particle not in trigger.particles:
            raise FastSimError(
                f"the trigger never fires: it takes {', '.join(trigger.particles)}, the gun shoots {particle}"
            )
        if hi < trigger.min_energy_gev:
            raise FastSimError(
                f"the trigger never fires: the gun's energies (at most {hi:g} GeV) lie below its "
                f"minimum of {trigger.min_energy_gev:g} GeV"
            )
        if np.any(np.abs(targets_mm) > self.detector.half_size_mm):
            raise FastSimError(
                f"the trigger never fires: the gun aims outside the calorimeter's front face "
                f"(|x|, |y| <= {self.detector.half_size_mm:g} mm)"
            )
        bottom, top = self.energy_range
        if trigger.min_energy_gev < bottom * (1 - 1e-3) and not self.plan.allow_extrapolation:
            raise FastSimError(
                f"the trigger's minimum of {trigger.min_energy_gev:g} GeV lies below model '{self.model}''s "
                f"trained range ({bottom:g}-{top:g} GeV): raise --trigger-min-energy to at least {bottom:g}"
            )
        if hi > top * (1 + 1e-3) and not self.plan.allow_extrapolation:
            raise FastSimError(
                f"the gun reaches {hi:g} GeV and model '{self.model}' was trained up to {top:g} GeV: "
                "lower the energy range"
            )

    def showers(self, entries: Sequence[np.ndarray], seed: int, index: int) -> FastSimBlock:
        """The hits of one shower per recorded track (``entries[k]``: ``(m_k, 6)`` of event ``k``),
        all generated in one batch with batch index ``index`` of a run with ``seed``."""
        start = time.perf_counter()
        counts = [len(e) for e in entries]
        flat = (
            np.concatenate([np.asarray(e, np.float64).reshape(-1, 6) for e in entries])
            if entries
            else np.zeros((0, 6))
        )
        block = FastSimBlock([np.zeros((0, 4)) for _ in entries], n_showers=len(flat))
        if len(flat) == 0:
            return block
        showers = self.generator.generate_batch({"energy": flat[:, 0]}, self.plan, seed, index)
        angles = np.degrees(np.arccos(np.clip(flat[:, 5], -1.0, 1.0)))
        block.off_normal = int((angles > self.max_angle_deg).sum())
        n_layers = self.detector.n_layers
        placed = [place(showers.points[i], flat[i], n_layers) for i in range(len(flat))]
        bounds = np.cumsum([0, *counts])
        for k in range(len(entries)):
            mine = placed[bounds[k] : bounds[k + 1]]
            if mine:
                block.deposits[k] = np.concatenate(mine)
        block.seconds = time.perf_counter() - start
        return block


def off_normal_warning(count: int, total: int, max_angle_deg: float) -> str | None:
    """The warning for showers placed along the normal although their track was tilted."""
    if count == 0:
        return None
    return (
        f"{count} of {total} fast-simulated showers came in more than {max_angle_deg:g} degrees off the "
        "detector normal: the model is conditioned on energy only, so they were placed along the normal"
    )
