"""Detector geometry shared by the simulator, the cell projection, the observables and the models.

A detector is a planar sampling calorimeter: ``n_layers`` active (silicon) layers, each with
one absorber plate immediately in front of it, read out either on a square cell grid
(:class:`CellGrid`, the ILD-like ECAL) or on polar voxels (:class:`PolarGrid`, the
CaloChallenge dataset-2 cylinder). Coordinates: depth ``d`` along the beam (mm, ``d = 0`` at
the front face of the first active layer), transverse ``x``, ``y`` in mm with the particle
gun on ``x = y = 0``.

>>> det = get_detector("ild-ecal")
>>> det.n_layers, round(sum(det.absorber_thicknesses_mm), 1)
(30, 84.0)
>>> round(det.layer_depths_mm[-1], 3)
198.705
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "CALOCHALLENGE_THRESHOLD_MEV",
    "CellGrid",
    "Detector",
    "DetectorError",
    "PolarGrid",
    "available_detectors",
    "common_detector",
    "detector_from_dict",
    "get_detector",
    "load_detector",
]

#: The CaloChallenge's voxel threshold: 0.5 keV deposited in silicon over its sampling fraction
#: 0.033, i.e. 0.0151515… MeV (``evaluate.py``'s ``min_energy``; datasets 2 and 3).
CALOCHALLENGE_THRESHOLD_MEV = 0.5e-3 / 0.033


class DetectorError(ValueError):
    """A detector description is invalid or unknown."""


@dataclass(frozen=True)
class CellGrid:
    """Square readout cells, identical in every layer, centred so that ``x = y = 0`` is a cell centre.

    Cell ``k`` (0-based, ``0 <= k < n_cells``) covers ``[(k - h - 1/2) s, (k - h + 1/2) s)`` with
    ``s = cell_size_mm`` and ``h = n_cells // 2``: the gun hits the centre of cell ``h``. With an
    odd ``n_cells`` the grid is symmetric around it; with an even one (the 30 × 30 image grid of
    the BIB-AE and L2LFlows papers) it has one more cell on the negative side. Grids of the
    same cell size are aligned: a smaller one is a window of a larger one.
    """

    cell_size_mm: float
    n_cells: int

    kind = "cells"

    @property
    def half_extent_mm(self) -> float:
        """Half width of the area covered by the grid."""
        return self.n_cells * self.cell_size_mm / 2

    def cell_index(self, coord_mm: np.ndarray) -> np.ndarray:
        """Cell index along one transverse axis (may fall outside ``[0, n_cells)``)."""
        return np.floor(np.asarray(coord_mm) / self.cell_size_mm + 0.5).astype(np.int64) + (self.n_cells // 2)

    def cell_centre(self, index: np.ndarray) -> np.ndarray:
        """Centre (mm) of cell ``index`` along one transverse axis."""
        return (np.asarray(index) - self.n_cells // 2) * self.cell_size_mm


@dataclass(frozen=True)
class PolarGrid:
    """Polar voxels per layer: ``n_alpha`` equal angular bins in ``[-pi, pi)`` × radial rings.

    Flattened voxel order within a shower: layer, then angle, then radius (radius fastest),
    as in the CaloChallenge files.
    """

    radial_edges_mm: tuple[float, ...]
    n_alpha: int

    kind = "polar"

    @property
    def n_radial(self) -> int:
        """Number of radial rings."""
        return len(self.radial_edges_mm) - 1

    @property
    def voxels_per_layer(self) -> int:
        """Number of voxels in one layer."""
        return self.n_alpha * self.n_radial

    @property
    def half_extent_mm(self) -> float:
        """Outer radius covered by the voxels."""
        return float(self.radial_edges_mm[-1])

    def voxel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` in mm of the voxel centres of one layer, in flattened (angle, radius) order."""
        edges = np.asarray(self.radial_edges_mm)
        r = (edges[:-1] + edges[1:]) / 2
        alpha = -math.pi + (np.arange(self.n_alpha) + 0.5) * (2 * math.pi / self.n_alpha)
        aa, rr = np.meshgrid(alpha, r, indexing="ij")
        return (rr * np.cos(aa)).ravel(), (rr * np.sin(aa)).ravel()


@dataclass(frozen=True)
class Detector:
    """A planar sampling calorimeter and its readout.

    Active layer ``i`` occupies depth ``[layer_depths_mm[i], layer_depths_mm[i] + active_thickness_mm)``;
    its absorber plate ``[layer_depths_mm[i] - absorber_thicknesses_mm[i], layer_depths_mm[i])``.
    ``long_edges`` (layer numbers, 0-based, half-open, last closed) and ``radial_edges_mm``
    define the E_long and E_radial observables.
    """

    name: str
    description: str
    layer_depths_mm: tuple[float, ...]
    active_thickness_mm: float
    absorber_thicknesses_mm: tuple[float, ...]
    readout: CellGrid | PolarGrid
    threshold_mev: float
    long_edges: tuple[int, ...]
    radial_edges_mm: tuple[float, ...]
    active_material: str = "G4_Si"
    absorber_material: str = "G4_W"
    half_size_mm: float = 250.0
    gun_distance_mm: float = 50.0
    cluster_subdivision: int = 6
    source: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_layers(self) -> int:
        """Number of active layers."""
        return len(self.layer_depths_mm)

    @property
    def n_cells_per_layer(self) -> int:
        """Readout channels per layer."""
        if isinstance(self.readout, CellGrid):
            return self.readout.n_cells**2
        return self.readout.voxels_per_layer

    @property
    def n_channels(self) -> int:
        """Readout channels in the whole detector (voxels for a polar readout)."""
        return self.n_layers * self.n_cells_per_layer

    @property
    def front_mm(self) -> float:
        """Depth of the front face of the first absorber plate."""
        return self.layer_depths_mm[0] - self.absorber_thicknesses_mm[0]

    @property
    def fine_cell_mm(self) -> float:
        """Pitch of the point-clustering grid (the readout cell subdivided ``cluster_subdivision`` times).

        For a polar readout there are no cells; the clustering grid then uses 1/``cluster_subdivision``
        of the first radial ring's width.
        """
        if isinstance(self.readout, CellGrid):
            return self.readout.cell_size_mm / self.cluster_subdivision
        edges = self.readout.radial_edges_mm
        return (edges[1] - edges[0]) / self.cluster_subdivision

    def layer_of_depth(self, depth_mm: np.ndarray) -> np.ndarray:
        """Index of the active layer nearest to each depth (mm); used to read files storing depth in mm."""
        centres = np.asarray(self.layer_depths_mm) + self.active_thickness_mm / 2
        depth = np.asarray(depth_mm, dtype=np.float64)
        idx = np.clip(np.searchsorted(centres, depth), 1, len(centres) - 1)
        left_closer = (depth - centres[idx - 1]) < (centres[idx] - depth)
        return np.where(left_closer, idx - 1, idx)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :func:`detector_from_dict` turns back into this detector."""

        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        out = {k: plain(v) for k, v in asdict(self).items() if k != "readout"}
        out["readout"] = {"type": self.readout.kind} | {k: plain(v) for k, v in asdict(self.readout).items()}
        return out

    def is_window_of(self, other: Detector) -> bool:
        """Whether this detector's cells are a subset of ``other``'s: the same stack and cell
        size, a cell grid no larger (``ild-ecal-30`` is a window of ``ild-ecal``).

        >>> get_detector("ild-ecal-30").is_window_of(get_detector("ild-ecal"))
        True
        >>> get_detector("ild-ecal").is_window_of(get_detector("ild-ecal-30"))
        False
        """
        if not (isinstance(self.readout, CellGrid) and isinstance(other.readout, CellGrid)):
            return self.to_dict() == other.to_dict()
        labels = ("name", "description", "source", "readout")
        mine, theirs = self.to_dict(), other.to_dict()
        return (
            all(mine[k] == theirs[k] for k in mine if k not in labels)
            and self.readout.cell_size_mm == other.readout.cell_size_mm
            and self.readout.n_cells <= other.readout.n_cells
        )


#: Largest size or depth a detector may have (100 m): beyond it a value is a typo, not a calorimeter.
_MAX_SIZE_MM = 1e5


def _increasing(values: Sequence[float]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


@functools.cache
def nist_materials() -> frozenset[str]:
    """Names of Geant4's NIST materials (the ones a detector's materials may name), from the
    list shipped in ``assets/g4_nist_materials.txt``."""
    text = (Path(__file__).parent / "assets" / "g4_nist_materials.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and line[0] != "#")


def _validate(det: Detector) -> None:
    def bad(field_name: str, why: str) -> DetectorError:
        return DetectorError(f"detector '{det.name}': field '{field_name}' {why}")

    numbers: dict[str, Sequence[float]] = {
        "layer_depths_mm": det.layer_depths_mm,
        "active_thickness_mm": (det.active_thickness_mm,),
        "absorber_thicknesses_mm": det.absorber_thicknesses_mm,
        "threshold_mev": (det.threshold_mev,),
        "half_size_mm": (det.half_size_mm,),
        "gun_distance_mm": (det.gun_distance_mm,),
        "radial_edges_mm": det.radial_edges_mm,
    }
    if isinstance(det.readout, CellGrid):
        numbers["readout.cell_size_mm"] = (det.readout.cell_size_mm,)
    else:
        numbers["readout.radial_edges_mm"] = det.readout.radial_edges_mm
    for key, values in numbers.items():
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise bad(key, "must be a finite number (not nan or inf)")
    for key, value in (
        ("cluster_subdivision", det.cluster_subdivision),
        ("readout.n_cells", getattr(det.readout, "n_cells", 1)),
        ("readout.n_alpha", getattr(det.readout, "n_alpha", 1)),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(key, f"must be a whole number, not {value!r}")
    for key, material in (
        ("active_material", det.active_material),
        ("absorber_material", det.absorber_material),
    ):
        if material not in nist_materials():
            raise bad(
                key,
                f"names an unknown material {material!r}: use a Geant4 NIST material such as G4_W, "
                "G4_Pb, G4_Si or G4_PbWO4",
            )
    if isinstance(det.readout, CellGrid) and det.readout.half_extent_mm > _MAX_SIZE_MM:
        raise bad("readout.n_cells", f"and cell_size_mm cover more than {_MAX_SIZE_MM:g} mm")
    if det.half_size_mm > _MAX_SIZE_MM:
        raise bad("half_size_mm", f"must be at most {_MAX_SIZE_MM:g} mm")
    if any(abs(d) > _MAX_SIZE_MM for d in det.layer_depths_mm):
        raise bad("layer_depths_mm", f"must stay within {_MAX_SIZE_MM:g} mm")
    depths = det.layer_depths_mm
    if len(depths) < 1:
        raise bad("layer_depths_mm", "must list at least one layer")
    if not _increasing(depths):
        raise bad("layer_depths_mm", "must increase strictly from layer to layer")
    if len(det.absorber_thicknesses_mm) != len(depths):
        raise bad(
            "absorber_thicknesses_mm",
            f"has {len(det.absorber_thicknesses_mm)} entries but there are {len(depths)} layers",
        )
    if det.active_thickness_mm <= 0:
        raise bad("active_thickness_mm", "must be positive")
    if any(t < 0 for t in det.absorber_thicknesses_mm):
        raise bad("absorber_thicknesses_mm", "must not be negative")
    for i in range(1, len(depths)):
        if depths[i] - det.absorber_thicknesses_mm[i] < depths[i - 1] + det.active_thickness_mm - 1e-9:
            raise bad(
                "layer_depths_mm",
                f"puts absorber {i} inside active layer {i - 1}: layers overlap",
            )
    if det.threshold_mev < 0:
        raise bad("threshold_mev", "must not be negative")
    if det.half_size_mm <= 0:
        raise bad("half_size_mm", "must be positive")
    if det.gun_distance_mm < 0:
        raise bad("gun_distance_mm", "must not be negative")
    if det.cluster_subdivision < 1:
        raise bad("cluster_subdivision", "must be a positive integer")
    ro = det.readout
    if isinstance(ro, CellGrid):
        if ro.cell_size_mm <= 0:
            raise bad("readout.cell_size_mm", "must be positive")
        if ro.n_cells < 1:
            raise bad("readout.n_cells", "must be a positive integer")
    else:
        edges = ro.radial_edges_mm
        if len(edges) < 2 or edges[0] != 0 or not _increasing(edges):
            raise bad("readout.radial_edges_mm", "must start at 0 and increase strictly")
        if ro.n_alpha < 1:
            raise bad("readout.n_alpha", "must be a positive integer")
    le = det.long_edges
    if len(le) < 2 or le[0] != 0 or le[-1] != len(depths) or not _increasing(le):
        raise bad("long_edges", f"must increase strictly from 0 to the number of layers ({len(depths)})")
    re_ = det.radial_edges_mm
    if len(re_) < 2 or re_[0] != 0 or not _increasing(re_):
        raise bad("radial_edges_mm", "must start at 0 and increase strictly")


def _ild_layer_depths() -> tuple[float, ...]:
    # SPEC 2.1: alternating gaps because sensor pairs around one absorber face opposite ways.
    depths = [0.0]
    for i in range(29):
        if i < 19:
            gap = 3.125 if i % 2 == 0 else 9.345
        elif i == 19:
            gap = 11.445
        else:
            gap = 5.225 if i % 2 == 0 else 11.445
        depths.append(round(depths[-1] + gap, 6))
    return tuple(depths)


def _ild_ecal() -> Detector:
    cell = 5.0883
    # Odd number of cells, wide enough to cover the whole +-250 mm world transversely.
    n_cells = 2 * math.ceil(250.0 / cell - 0.5) + 1
    return Detector(
        name="ild-ecal",
        description=(
            "ILD-like Si-W ECAL (CaloClouds II setting): 30 Si layers of 0.525 mm, W 2.1 mm "
            "(layers 1-20) / 4.2 mm (21-30), 5.0883 mm cells, 0.1 MeV threshold"
        ),
        layer_depths_mm=_ild_layer_depths(),
        active_thickness_mm=0.525,
        absorber_thicknesses_mm=tuple([2.1] * 20 + [4.2] * 10),
        readout=CellGrid(cell_size_mm=cell, n_cells=n_cells),
        threshold_mev=0.1,
        long_edges=(0, 8, 11, 13, 15, 16, 18, 19, 21, 24, 30),
        radial_edges_mm=(0, 6.6, 9.8, 13, 17, 23.4, 33.6, 40.1, 48.5, 68.8, 300),
        source="SPEC 2.1 (planar stand-in for the ILD ECAL barrel, arXiv:2309.05704)",
    )


def _ild_ecal_30() -> Detector:
    # SPEC 6.6: the same stack read out on 30 x 30 cells around the gun (152.6 mm wide), the
    # images of BIB-AE and L2LFlows; a window of ild-ecal's grid (same cells, same centres).
    base = _ild_ecal()
    return dataclasses.replace(
        base,
        name="ild-ecal-30",
        description=(
            "ILD-like Si-W ECAL read out as images: the ild-ecal stack, 30 x 30 cells of 5.0883 mm per "
            "layer around the gun (152.6 mm wide, the BIB-AE / L2LFlows grid), 0.1 MeV threshold"
        ),
        readout=CellGrid(cell_size_mm=base.readout.cell_size_mm, n_cells=30),
        source="SPEC 6.6 (the 30 x 30 x 30 grid of arXiv:2005.05334, 2302.11594)",
    )


def _calochallenge_ds2() -> Detector:
    n_layers = 45
    return Detector(
        name="calochallenge-ds2",
        description=(
            "CaloChallenge dataset-2-like stack: 45 layers of 1.4 mm W + 0.3 mm Si, "
            "16 angular x 9 radial voxels per layer, 15.15 keV threshold"
        ),
        layer_depths_mm=tuple(round(1.4 + 1.7 * i, 6) for i in range(n_layers)),
        active_thickness_mm=0.3,
        absorber_thicknesses_mm=tuple([1.4] * n_layers),
        readout=PolarGrid(
            # binning_dataset_2.xml of the CaloChallenge 2022 (code/binning_dataset_2.xml in
            # the public CaloChallenge repository): r_edges identical in all 45 layers.
            radial_edges_mm=(0, 4.65, 9.3, 13.95, 18.6, 23.25, 27.9, 32.55, 37.2, 41.85),
            n_alpha=16,
        ),
        threshold_mev=CALOCHALLENGE_THRESHOLD_MEV,
        long_edges=(0, 5, 9, 13, 17, 21, 25, 29, 33, 39, 45),
        radial_edges_mm=(0, 4.65, 9.3, 13.95, 18.6, 23.25, 27.9, 32.55, 37.2, 41.85),
        source="SPEC 2.2; radial edges from the CaloChallenge 2022 binning_dataset_2.xml",
    )


def _calochallenge_ds3() -> Detector:
    """The dataset-2-like stack read out as CaloChallenge dataset 3: 50 angular x 18 radial voxels
    per layer (40,500 in all), the radial pitch of dataset 2 halved."""
    ds2 = _calochallenge_ds2()
    edges = tuple(round(2.325 * i, 6) for i in range(19))
    return dataclasses.replace(
        ds2,
        name="calochallenge-ds3",
        description=(
            "CaloChallenge dataset-3-like readout of the dataset-2 stack: 45 layers of 1.4 mm W + "
            "0.3 mm Si, 50 angular x 18 radial voxels per layer, 15.15 keV threshold"
        ),
        # binning_dataset_3.xml of the CaloChallenge 2022: r_edges 0, 2.325, ..., 41.85 mm and
        # n_bin_alpha 50 in all 45 layers.
        readout=PolarGrid(radial_edges_mm=edges, n_alpha=50),
        radial_edges_mm=edges,
        # the clustering grid of the point file stays dataset 2's (0.775 mm)
        cluster_subdivision=3,
        source="SPEC 2.2; radial edges and angular bins from the CaloChallenge 2022 binning_dataset_3.xml",
    )


_BUILTINS = {
    "ild-ecal": _ild_ecal,
    "ild-ecal-30": _ild_ecal_30,
    "calochallenge-ds2": _calochallenge_ds2,
    "calochallenge-ds3": _calochallenge_ds3,
}


def common_detector(detectors: Sequence[Detector]) -> Detector | None:
    """The detector on whose channels all of ``detectors`` can be compared: the smallest window
    (:meth:`Detector.is_window_of`) if every one contains it, else ``None``."""
    smallest = min(detectors, key=lambda d: d.n_channels)
    return smallest if all(smallest.is_window_of(d) for d in detectors) else None


def available_detectors() -> list[str]:
    """Names of the built-in detectors."""
    return sorted(_BUILTINS)


def get_detector(name_or_path: str | Path | Detector) -> Detector:
    """A built-in detector by name, or one described in a TOML/YAML file.

    >>> get_detector("calochallenge-ds2").n_channels, get_detector("calochallenge-ds3").n_channels
    (6480, 40500)
    """
    if isinstance(name_or_path, Detector):
        return name_or_path
    key = str(name_or_path)
    if key in _BUILTINS:
        return _BUILTINS[key]()
    path = Path(key)
    if path.suffix.lower() in (".toml", ".yaml", ".yml") or path.exists():
        return load_detector(path)
    raise DetectorError(
        f"unknown detector '{key}': use one of {', '.join(available_detectors())} "
        "or the path of a .toml/.yaml detector file"
    )


def load_detector(path: str | Path) -> Detector:
    """Read a detector description from a TOML or YAML file (same keys as :meth:`Detector.to_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"detector file '{path}' does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DetectorError(f"detector file '{path}' is not a text (TOML or YAML) file") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # both parsers raise their own error types
        why = " ".join(str(exc).split())  # the parsers' messages span several lines
        raise DetectorError(
            f"detector file '{path}' is not valid {path.suffix[1:] or 'YAML'}: {why}"
        ) from None
    if not isinstance(data, dict):
        raise DetectorError(f"detector file '{path}' must hold a table of fields at top level")
    det = detector_from_dict(data, default_name=path.stem)
    if det.name in _BUILTINS:
        builtin = _BUILTINS[det.name]().to_dict()
        changed = [k for k, v in det.to_dict().items() if builtin.get(k) != v and k != "description"]
        if changed:
            raise DetectorError(
                f"detector file '{path}' calls itself '{det.name}', the name of a built-in detector, "
                f"but differs from it in {', '.join(changed)}: give it a name of its own (field 'name')"
            )
    return det


def _float_list(data: Mapping[str, Any], key: str, where: str, n: int | None = None) -> tuple[float, ...]:
    value = data[key]
    if isinstance(value, (int, float)) and n is not None:
        value = [value] * n
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
        raise DetectorError(f"{where}: field '{key}' must be a list of numbers")
    return tuple(float(v) for v in value)


def _whole(data: Mapping[str, Any], key: str, where: str, prefix: str = "") -> int:
    """``data[key]`` as an int, refusing 99.5, "12" and True rather than truncating them."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DetectorError(f"{where}: field '{prefix}{key}' must be a whole number, not {value!r}")
    return int(value)


def detector_from_dict(data: Mapping[str, Any], default_name: str = "custom") -> Detector:
    """Build a :class:`Detector` from a mapping, naming any missing or malformed field.

    ``layer_depths_mm`` may be replaced by ``n_layers`` + ``layer_pitch_mm`` for an even stack,
    and ``absorber_thicknesses_mm`` may be a single number.

    >>> d = detector_from_dict({"name": "toy", "n_layers": 3, "layer_pitch_mm": 5,
    ...     "active_thickness_mm": 0.5, "absorber_thicknesses_mm": 3.0, "threshold_mev": 0.1,
    ...     "readout": {"type": "cells", "cell_size_mm": 5, "n_cells": 11}})
    >>> d.layer_depths_mm, d.long_edges
    ((0.0, 5.0, 10.0), (0, 1, 2, 3))
    """
    name = str(data.get("name", default_name))
    where = f"detector '{name}'"
    known = {f for f in Detector.__dataclass_fields__} | {"n_layers", "layer_pitch_mm"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DetectorError(f"{where}: unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")
    try:
        if "layer_depths_mm" in data:
            depths = _float_list(data, "layer_depths_mm", where)
        elif "n_layers" in data and "layer_pitch_mm" in data:
            n, pitch = _whole(data, "n_layers", where), float(data["layer_pitch_mm"])
            depths = tuple(i * pitch for i in range(n))
        else:
            raise DetectorError(
                f"{where}: field 'layer_depths_mm' is missing (or give n_layers and layer_pitch_mm)"
            )
        for required in (
            "active_thickness_mm",
            "absorber_thicknesses_mm",
            "threshold_mev",
            "readout",
        ):
            if required not in data:
                raise DetectorError(f"{where}: field '{required}' is missing")
        readout = data["readout"]
        if not isinstance(readout, Mapping) or "type" not in readout:
            raise DetectorError(
                f"{where}: field 'readout' must be a table with a 'type' ('cells' or 'polar')"
            )
        rtype = readout["type"]
        if rtype == "cells":
            for key in ("cell_size_mm", "n_cells"):
                if key not in readout:
                    raise DetectorError(f"{where}: field 'readout.{key}' is missing")
            grid: CellGrid | PolarGrid = CellGrid(
                float(readout["cell_size_mm"]), _whole(readout, "n_cells", where, "readout.")
            )
        elif rtype == "polar":
            for key in ("radial_edges_mm", "n_alpha"):
                if key not in readout:
                    raise DetectorError(f"{where}: field 'readout.{key}' is missing")
            grid = PolarGrid(
                _float_list(readout, "radial_edges_mm", where + " readout"),
                _whole(readout, "n_alpha", where, "readout."),
            )
        else:
            raise DetectorError(f"{where}: field 'readout.type' must be 'cells' or 'polar', not {rtype!r}")
        n_layers = len(depths)
        edges = data.get("long_edges", list(range(n_layers + 1)))
        if not isinstance(edges, list):
            raise DetectorError(f"{where}: field 'long_edges' must be a list of layer numbers")
        long_edges = tuple(_whole({"long_edges": v}, "long_edges", where) for v in edges)
        if "radial_edges_mm" in data:
            radial = _float_list(data, "radial_edges_mm", where)
        elif isinstance(grid, PolarGrid):
            radial = grid.radial_edges_mm
        else:
            radial = tuple(float(v) for v in np.linspace(0, grid.half_extent_mm, 11))
        kwargs: dict[str, Any] = {}
        for key in (
            "active_material",
            "absorber_material",
            "half_size_mm",
            "gun_distance_mm",
            "cluster_subdivision",
            "source",
            "description",
        ):
            if key in data:
                kwargs[key] = data[key]
        kwargs.setdefault("description", f"user-defined detector from {default_name}")
        return Detector(
            name=name,
            layer_depths_mm=depths,
            active_thickness_mm=float(data["active_thickness_mm"]),
            absorber_thicknesses_mm=_float_list(data, "absorber_thicknesses_mm", where, n_layers),
            readout=grid,
            threshold_mev=_corrected_threshold(name, float(data["threshold_mev"])),
            long_edges=long_edges,
            radial_edges_mm=radial,
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DetectorError):
            raise
        raise DetectorError(f"{where}: a field has the wrong type ({exc})") from exc


#: Thresholds that files and checkpoints written before a correction carry -> the value meant.
_SUPERSEDED_THRESHOLDS = {("calochallenge-ds2", 0.01515): CALOCHALLENGE_THRESHOLD_MEV}


def _corrected_threshold(name: str, threshold: float) -> float:
    """The threshold a stored detector description means: ``calochallenge-ds2`` files and
    checkpoints written with the rounded 0.01515 MeV mean the challenge's exact value.

    >>> _corrected_threshold("calochallenge-ds2", 0.01515) == CALOCHALLENGE_THRESHOLD_MEV
    True
    """
    return _SUPERSEDED_THRESHOLDS.get((name, threshold), threshold)


def layer_depth_table(det: Detector) -> Sequence[tuple[int, float, float, float]]:
    """Rows ``(layer, absorber front, active front, active back)`` in mm, for printing."""
    return [
        (i, d - t, d, d + det.active_thickness_mm)
        for i, (d, t) in enumerate(zip(det.layer_depths_mm, det.absorber_thicknesses_mm, strict=True))
    ]
