"""Where and how the primaries of ``caloforge simulate`` start: one particle or a pair.

Every primary is aimed at a point of the calorimeter's front face and starts
``gun_distance_mm`` in front of it (in depth), along a direction tilted by ``angle_deg`` from
the detector normal in the x-z plane. A pair puts two particles ``pair_separation_mm`` apart at
the front face, along x, symmetric about ``offset_mm`` (the di-photon events DDML validates).

>>> from caloforge.simulate.geometry import ild_like
>>> rows = primaries(Gun(pair_separation_mm=30.0), ild_like(), np.array([[10.0, 20.0]]))[0]
>>> rows[:, :3].round(1).tolist(), rows[:, 6].tolist()
([[10.0, -15.0, 0.0], [20.0, 15.0, 0.0]], [1.0, 1.0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from caloforge.simulate.geometry import Geometry

__all__ = ["MAX_GUN_ANGLE_DEG", "Gun", "primaries"]

MAX_GUN_ANGLE_DEG = 80.0


@dataclass(frozen=True)
class Gun:
    """The primaries of each event: ``offset_mm`` (x, y) where they hit the front face,
    ``angle_deg`` from the normal (in the x-z plane), and one particle, or two
    ``pair_separation_mm`` apart."""

    offset_mm: tuple[float, float] = (0.0, 0.0)
    angle_deg: float = 0.0
    pair_separation_mm: float | None = None

    def __post_init__(self) -> None:
        values = [*self.offset_mm, self.angle_deg, self.pair_separation_mm or 0.0]
        if len(self.offset_mm) != 2 or not all(math.isfinite(v) for v in values):
            raise ValueError("the gun offset (X,Y mm), angle and pair separation must be finite numbers")
        if not 0 <= self.angle_deg <= MAX_GUN_ANGLE_DEG:
            raise ValueError(
                f"the gun angle must lie in 0-{MAX_GUN_ANGLE_DEG:g} degrees, not {self.angle_deg:g}"
            )
        if self.pair_separation_mm is not None and self.pair_separation_mm <= 0:
            raise ValueError(f"the pair separation must be positive (mm), not {self.pair_separation_mm:g}")

    @property
    def n_particles(self) -> int:
        """Primaries per event."""
        return 1 if self.pair_separation_mm is None else 2

    @property
    def is_default(self) -> bool:
        """One particle on the beam axis along the normal (what older files hold)."""
        return self == Gun()

    def targets_mm(self) -> np.ndarray:
        """``(n_particles, 2)``: where each primary hits the front face."""
        x0, y0 = self.offset_mm
        if self.pair_separation_mm is None:
            return np.array([[x0, y0]])
        half = self.pair_separation_mm / 2
        return np.array([[x0 - half, y0], [x0 + half, y0]])

    def attrs(self) -> dict[str, Any]:
        """File attributes (none for the default gun, so older files resume unchanged)."""
        if self.is_default:
            return {}
        return {
            "gun_offset_x_mm": float(self.offset_mm[0]),
            "gun_offset_y_mm": float(self.offset_mm[1]),
            "gun_angle_deg": float(self.angle_deg),
            "pair_separation_mm": float(self.pair_separation_mm or 0.0),
        }


def primaries(gun: Gun, geometry: Geometry, energies_gev: np.ndarray) -> list[np.ndarray]:
    """One ``(n_particles, 7)`` array per event (PRIMARY_COLUMNS); ``energies_gev``: ``(n, n_particles)``."""
    energies = np.asarray(energies_gev, np.float64).reshape(len(energies_gev), -1)
    if energies.shape[1] != gun.n_particles:
        raise ValueError(f"{energies.shape[1]} energies per event for a gun of {gun.n_particles} particle(s)")
    theta = math.radians(gun.angle_deg)
    direction = np.array([math.sin(theta), 0.0, math.cos(theta)])
    targets = gun.targets_mm()
    start = np.column_stack(
        [
            targets[:, 0] - math.tan(theta) * geometry.gun_distance_mm,
            targets[:, 1],
            np.full(len(targets), geometry.gun_depth_mm),
        ]
    )
    fixed = np.column_stack([start, np.tile(direction, (len(targets), 1))])
    return [np.column_stack([row, fixed]) for row in energies]
