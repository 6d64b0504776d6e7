"""Planar sampling-calorimeter geometry as seen by the Geant4 engine.

Depth ``d`` is the Geant4 z axis; x and y are transverse. Active layer ``i`` occupies
``[d_i, d_i + active_thickness)`` and its absorber plate sits immediately in front,
``[d_i - absorber_thickness_i, d_i)``. Everything else is vacuum (G4_Galactic).
"""

from __future__ import annotations

from dataclasses import dataclass

from caloforge.detector import Detector, get_detector

_TOLERANCE_MM = 1e-9  # touching volumes computed in floating point may "overlap" by ~1e-15


@dataclass(frozen=True)
class Geometry:
    """Stack of absorber + active layers along the depth axis (lengths in mm)."""

    layer_depths_mm: tuple[float, ...]
    active_thickness_mm: float
    absorber_thicknesses_mm: tuple[float, ...]
    active_material: str = "G4_Si"
    absorber_material: str = "G4_W"
    half_size_mm: float = 250.0
    gun_distance_mm: float = 50.0

    def __post_init__(self) -> None:
        # Coerce to plain float tuples so that equality and hashing are exact.
        object.__setattr__(self, "layer_depths_mm", tuple(float(d) for d in self.layer_depths_mm))
        object.__setattr__(
            self, "absorber_thicknesses_mm", tuple(float(t) for t in self.absorber_thicknesses_mm)
        )
        depths, absorbers = self.layer_depths_mm, self.absorber_thicknesses_mm
        if not depths:
            raise ValueError("geometry needs at least one layer")
        if len(absorbers) != len(depths):
            raise ValueError(f"{len(absorbers)} absorber thicknesses for {len(depths)} layers")
        if self.active_thickness_mm <= 0 or self.half_size_mm <= 0:
            raise ValueError("active thickness and half size must be positive")
        if self.gun_distance_mm < 0 or any(t < 0 for t in absorbers):
            raise ValueError("gun distance and absorber thicknesses must be non-negative")
        for i in range(1, len(depths)):
            previous_end = depths[i - 1] + self.active_thickness_mm
            if depths[i] - absorbers[i] < previous_end - _TOLERANCE_MM:
                raise ValueError(
                    f"layer {i} (absorber from {depths[i] - absorbers[i]} mm) overlaps "
                    f"layer {i - 1} (active up to {previous_end} mm)"
                )

    @property
    def n_layers(self) -> int:
        """Number of active layers."""
        return len(self.layer_depths_mm)

    @property
    def front_mm(self) -> float:
        """Depth of the first absorber plate's front face."""
        return self.layer_depths_mm[0] - self.absorber_thicknesses_mm[0]

    @property
    def back_mm(self) -> float:
        """Depth of the last active layer's back face."""
        return self.layer_depths_mm[-1] + self.active_thickness_mm

    @property
    def gun_depth_mm(self) -> float:
        """Depth at which primaries start (``gun_distance_mm`` before the front face)."""
        return self.front_mm - self.gun_distance_mm

    @classmethod
    def from_detector(cls, detector: Detector) -> Geometry:
        """The material stack of a caloforge :class:`~caloforge.detector.Detector`."""
        return cls(
            layer_depths_mm=detector.layer_depths_mm,
            active_thickness_mm=detector.active_thickness_mm,
            absorber_thicknesses_mm=detector.absorber_thicknesses_mm,
            active_material=detector.active_material,
            absorber_material=detector.absorber_material,
            half_size_mm=detector.half_size_mm,
            gun_distance_mm=detector.gun_distance_mm,
        )


def ild_like() -> Geometry:
    """The ``ild-ecal`` stack: 30 Si layers (0.525 mm), W plates 2.1 mm (layers 0-19) and 4.2 mm."""
    return Geometry.from_detector(get_detector("ild-ecal"))


def calochallenge_ds2_like() -> Geometry:
    """The ``calochallenge-ds2`` stack: 45 x (1.4 mm W + 0.3 mm Si)."""
    return Geometry.from_detector(get_detector("calochallenge-ds2"))
