"""Points → readout: project point clouds onto a detector's cells (sparse hits or dense cell
images) or polar voxels.

Everything is vectorised over a whole batch of showers (no Python loop over points or
showers). Energy is conserved except for points outside the readout (outside the grid,
beyond the last radial ring or outside the layer range); that energy is reported per shower
in ``Hits.lost_mev``.

>>> import numpy as np
>>> from caloforge.detector import get_detector
>>> from caloforge.io import PointShowers
>>> pts = np.array([[[0.1, 0.2, 3.5, 1.0], [2.0, -1.0, 3.2, 0.5], [6.0, 0.0, 0.5, 0.25]]], np.float32)
>>> hits = project_points(PointShowers([50.0], pts), get_detector("ild-ecal"))
>>> hits.layer.tolist(), hits.x.round(4).tolist(), hits.energy.tolist()
([0, 3], [5.0883, 0.0], [0.25, 1.5])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caloforge.detector import CellGrid, Detector, PolarGrid
from caloforge.io import PointShowers, VoxelShowers

__all__ = [
    "Hits",
    "apply_threshold",
    "channel_centres",
    "hits_from_voxels",
    "project_points",
    "to_hits",
    "voxelise",
    "voxelise_with_loss",
]


@dataclass
class Hits:
    """Sparse readout hits of a batch of ``n_showers`` showers, one entry per fired channel.

    ``channel`` is the flat channel index (``layer * channels_per_layer + cell``); ``x``, ``y``
    the channel centre in mm; ``energy`` in MeV. Entries are sorted by (shower, channel).
    """

    n_showers: int
    shower: np.ndarray
    layer: np.ndarray
    channel: np.ndarray
    x: np.ndarray
    y: np.ndarray
    energy: np.ndarray
    lost_mev: np.ndarray

    @property
    def radius(self) -> np.ndarray:
        """Distance of each hit's channel centre from the shower axis (mm)."""
        return np.hypot(self.x, self.y)

    def select(self, keep: np.ndarray) -> Hits:
        """The hits where ``keep`` is true."""
        return Hits(
            self.n_showers,
            self.shower[keep],
            self.layer[keep],
            self.channel[keep],
            self.x[keep],
            self.y[keep],
            self.energy[keep],
            self.lost_mev,
        )


def _point_arrays(showers: PointShowers) -> tuple[np.ndarray, np.ndarray]:
    """Flat arrays of the filled slots: shower index and (x, y, layer coordinate, E)."""
    mask = showers.mask
    shower = np.nonzero(mask)[0]
    return shower, showers.points[mask].astype(np.float64)


def _sum_channels(
    n_showers: int, shower: np.ndarray, channel: np.ndarray, energy: np.ndarray, n_channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum energies sharing (shower, channel); returns unique shower, channel, summed energy."""
    key = shower.astype(np.int64) * n_channels + channel
    uniq, inverse = np.unique(key, return_inverse=True)
    summed = np.bincount(inverse, weights=energy, minlength=len(uniq))
    return uniq // n_channels, uniq % n_channels, summed


def _layer_index(layer_coord: np.ndarray, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    layer = np.floor(layer_coord).astype(np.int64)
    return layer, (layer >= 0) & (layer < n_layers)


def project_points(showers: PointShowers, detector: Detector) -> Hits:
    """Sum point energies per readout channel of ``detector`` (cells or polar voxels)."""
    if isinstance(detector.readout, PolarGrid):
        voxels, lost = _voxelise_with_loss(showers, detector)
        return hits_from_voxels(voxels, detector, lost_mev=lost)
    grid: CellGrid = detector.readout
    n = len(showers)
    shower, pts = _point_arrays(showers)
    channel, inside = _cell_channels(pts, detector)
    lost = np.bincount(shower[~inside], weights=pts[~inside, 3], minlength=n).astype(np.float64)
    per_layer = grid.n_cells**2
    s, ch, e = _sum_channels(n, shower[inside], channel[inside], pts[inside, 3], detector.n_channels)
    cell = ch % per_layer
    return Hits(
        n,
        s,
        ch // per_layer,
        ch,
        grid.cell_centre(cell // grid.n_cells),
        grid.cell_centre(cell % grid.n_cells),
        e,
        lost,
    )


def _polar_channels(pts: np.ndarray, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    grid: PolarGrid = detector.readout
    layer, inside = _layer_index(pts[:, 2], detector.n_layers)
    ir = np.searchsorted(np.asarray(grid.radial_edges_mm), np.hypot(pts[:, 0], pts[:, 1]), "right") - 1
    inside &= ir < grid.n_radial
    alpha = np.arctan2(pts[:, 1], pts[:, 0])
    ia = np.minimum(
        np.floor((alpha + math.pi) / (2 * math.pi / grid.n_alpha)).astype(np.int64),
        grid.n_alpha - 1,
    )
    return layer * grid.voxels_per_layer + ia * grid.n_radial + ir, inside


def _cell_channels(pts: np.ndarray, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    grid: CellGrid = detector.readout
    layer, inside = _layer_index(pts[:, 2], detector.n_layers)
    ix, iy = grid.cell_index(pts[:, 0]), grid.cell_index(pts[:, 1])
    inside &= (ix >= 0) & (ix < grid.n_cells) & (iy >= 0) & (iy < grid.n_cells)
    return (layer * grid.n_cells + ix) * grid.n_cells + iy, inside


def _voxelise_with_loss(showers: PointShowers, detector: Detector) -> tuple[VoxelShowers, np.ndarray]:
    n = len(showers)
    shower, pts = _point_arrays(showers)
    channels = _polar_channels if isinstance(detector.readout, PolarGrid) else _cell_channels
    channel, inside = channels(pts, detector)
    flat = np.bincount(
        shower[inside] * detector.n_channels + channel[inside],
        weights=pts[inside, 3],
        minlength=n * detector.n_channels,
    )
    lost = np.bincount(shower[~inside], weights=pts[~inside, 3], minlength=n).astype(np.float64)
    voxels = VoxelShowers(showers.energy, flat.reshape(n, detector.n_channels).astype(np.float32))
    return voxels, lost


def voxelise_with_loss(showers: PointShowers, detector: Detector) -> tuple[VoxelShowers, np.ndarray]:
    """Dense voxels ``(n, n_channels)`` of ``showers`` on ``detector``'s readout, and the energy
    (MeV, per shower) of the points outside it.

    For a cell grid the voxels are an image: flat index ``(layer * n_cells + ix) * n_cells + iy``,
    so ``voxels.reshape(n, n_layers, n_cells, n_cells)`` is indexed ``[shower, layer, x, y]``.
    """
    return _voxelise_with_loss(showers, detector)


def voxelise(showers: PointShowers, detector: Detector) -> VoxelShowers:
    """Dense voxels ``(n, n_channels)`` of ``showers`` on ``detector``'s readout (polar voxels or
    a cell image, :func:`voxelise_with_loss`)."""
    return _voxelise_with_loss(showers, detector)[0]


def channel_centres(detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """Transverse centres (mm) ``x``, ``y`` of the channels of one layer, in flat order."""
    ro = detector.readout
    if isinstance(ro, PolarGrid):
        return ro.voxel_centres()
    centre = ro.cell_centre(np.arange(ro.n_cells))
    return np.repeat(centre, ro.n_cells), np.tile(centre, ro.n_cells)


def hits_from_voxels(voxels: VoxelShowers, detector: Detector, lost_mev: np.ndarray | None = None) -> Hits:
    """Sparse hits of the non-zero voxels of a dense voxel batch (polar voxels or cell images)."""
    if voxels.voxels.shape[1] != detector.n_channels:
        raise ValueError(
            f"{voxels.voxels.shape[1]} voxels per shower but detector '{detector.name}' "
            f"has {detector.n_channels}"
        )
    per_layer = detector.n_cells_per_layer
    cx, cy = channel_centres(detector)
    shower, channel = np.nonzero(voxels.voxels)
    cell = channel % per_layer
    lost = np.zeros(len(voxels)) if lost_mev is None else lost_mev
    return Hits(
        len(voxels),
        shower,
        channel // per_layer,
        channel,
        cx[cell],
        cy[cell],
        voxels.voxels[shower, channel].astype(np.float64),
        lost,
    )


def to_hits(showers: PointShowers | VoxelShowers, detector: Detector) -> Hits:
    """Readout hits of any shower batch (points are projected, voxels made sparse)."""
    if isinstance(showers, VoxelShowers):
        return hits_from_voxels(showers, detector)
    return project_points(showers, detector)


def apply_threshold(hits: Hits, threshold_mev: float) -> Hits:
    """Keep the hits with at least ``threshold_mev``."""
    return hits.select(hits.energy >= threshold_mev)
