"""Per-shower observables on the readout (SPEC 4) and the high-level feature vector.

Points are projected onto the detector's cells (or voxels), the cell threshold is applied,
and then, per shower: number of hits, visible energy, energy-weighted centre of gravity
(m1 in x, y [mm] and z [layer index]), energy in layer groups (E_long) and in rings around
the shower axis (E_radial), plus per-layer and fine radial profiles and all cell energies.

>>> import numpy as np
>>> from caloforge.detector import get_detector
>>> from caloforge.io import PointShowers
>>> pts = np.array([[[10.2, -5.1, 12.5, 3.0]]], np.float32)   # one point, 3 MeV, layer 12
>>> obs = compute_observables(PointShowers([50.0], pts), get_detector("ild-ecal"))
>>> int(obs.n_hits[0]), obs.cog[0].round(3).tolist(), obs.e_long[0].nonzero()[0].tolist()
(1, [10.177, -5.088, 12.0], [2])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.detector import CellGrid, Detector, get_detector
from caloforge.io import PointShowers, VoxelShowers, open_showers
from caloforge.projection import Hits, apply_threshold, to_hits

__all__ = [
    "ShowerObservables",
    "compute_observables",
    "derive_edges",
    "feature_names",
    "layer_ring_edges",
    "observables_from_file",
    "quantile_edges",
    "radial_profile_edges",
]


def radial_profile_edges(detector: Detector) -> np.ndarray:
    """Ring edges (mm) of the radial profile: one cell wide for cells, the voxel rings for voxels.

    Hit radii are taken at cell centres, so rings narrower than a cell would leave some empty.
    """
    if isinstance(detector.readout, CellGrid):
        step = detector.readout.cell_size_mm
        extent = max(detector.readout.half_extent_mm * np.sqrt(2), detector.radial_edges_mm[-1])
        return np.arange(0.0, extent + step, step)
    return np.asarray(detector.readout.radial_edges_mm, np.float64)


#: Rings of the per-layer observables (``layer_ring_energy``, ``layer_ring_hits``): the first
#: rings of :func:`radial_profile_edges`, the last one taking everything beyond.
LAYER_RINGS = 16


def layer_ring_edges(detector: Detector) -> np.ndarray:
    """Ring edges (mm) of the per-layer observables: :func:`radial_profile_edges`, cut after
    :data:`LAYER_RINGS` rings whose last then reaches to infinity (a voxel readout keeps its rings).

    >>> from caloforge.detector import get_detector
    >>> e = layer_ring_edges(get_detector("ild-ecal")); len(e) - 1, round(float(e[1]), 4), float(e[-1])
    (16, 5.0883, inf)
    >>> len(layer_ring_edges(get_detector("calochallenge-ds3"))) - 1
    18
    """
    edges = radial_profile_edges(detector)
    if isinstance(detector.readout, CellGrid) and len(edges) > LAYER_RINGS + 1:
        return np.append(edges[:LAYER_RINGS], np.inf)
    return edges


@dataclass
class ShowerObservables:
    """Observables of ``N`` showers (energies in MeV unless stated).

    ``cell_energy`` holds every cell above threshold, shower after shower;
    ``cell_offsets[i]:cell_offsets[i + 1]`` are those of shower ``i``.
    """

    energy: np.ndarray  # (N,) incident energy, GeV
    n_hits: np.ndarray  # (N,)
    e_vis: np.ndarray  # (N,) MeV
    cog: np.ndarray  # (N, 3): x mm, y mm, z layer index
    e_long: np.ndarray  # (N, n_long)
    e_radial: np.ndarray  # (N, n_radial)
    e_layer: np.ndarray  # (N, n_layers) longitudinal profile
    hits_layer: np.ndarray  # (N, n_layers) hits per layer
    radial_profile: np.ndarray  # (N, n_rings) energy per ring of radial_profile_edges()
    layer_ring_energy: np.ndarray  # (N, n_layers, n) float32 energy per layer and ring of layer_ring_edges()
    layer_ring_hits: np.ndarray  # (N, n_layers, n) float32 hits per layer and ring of layer_ring_edges()
    lost_mev: np.ndarray  # (N,) energy outside the readout
    cell_energy: np.ndarray  # (M,) MeV
    cell_offsets: np.ndarray  # (N + 1,)

    def __len__(self) -> int:
        return len(self.energy)

    @property
    def e_ratio(self) -> np.ndarray:
        """Visible over incident energy (dimensionless)."""
        return self.e_vis / (self.energy * 1000.0)

    def high_level(self) -> np.ndarray:
        """``(N, n_long + n_radial + 5)`` features: E_long, E_radial, m1 x/y/z, N_hits, E_vis.

        For ``ild-ecal`` that is the 25-feature vector of the CaloClouds II classifier.
        """
        return np.column_stack(
            [self.e_long, self.e_radial, self.cog, self.n_hits.astype(np.float64), self.e_vis]
        )

    def subset(self, index: np.ndarray) -> ShowerObservables:
        """The observables of the showers ``index`` (integer indices or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        starts, stops = self.cell_offsets[index], self.cell_offsets[index + 1]
        counts = stops - starts
        cells = np.repeat(stops - np.cumsum(counts), counts) + np.arange(counts.sum())
        per_shower = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if f.name not in ("cell_energy", "cell_offsets")
        }
        return ShowerObservables(
            **per_shower,
            cell_energy=self.cell_energy[cells],
            cell_offsets=np.concatenate([[0], np.cumsum(counts)]),
        )

    @classmethod
    def concatenate(cls, parts: Iterable[ShowerObservables]) -> ShowerObservables:
        """Join observables of consecutive batches."""
        parts = list(parts)
        if not parts:
            raise ValueError("no observables to concatenate")
        joined = {
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(cls)
            if f.name != "cell_offsets"
        }
        counts = np.concatenate([np.diff(p.cell_offsets) for p in parts])
        return cls(**joined, cell_offsets=np.concatenate([[0], np.cumsum(counts)]))

    def summary(self) -> dict[str, tuple[float, float]]:
        """Mean and standard deviation of the scalar observables, for printing."""
        columns = {
            "N_hits": self.n_hits,
            "E_vis [MeV]": self.e_vis,
            "E_vis/E_inc": self.e_ratio,
            "m1 x [mm]": self.cog[:, 0],
            "m1 y [mm]": self.cog[:, 1],
            "m1 z [layer]": self.cog[:, 2],
            "E_cell [MeV]": self.cell_energy,
            "lost E [MeV]": self.lost_mev,
        }
        return {
            name: (float(np.mean(v)), float(np.std(v))) if len(v) else (float("nan"), float("nan"))
            for name, v in columns.items()
        }


def feature_names(detector: Detector) -> list[str]:
    """Names of the columns of :meth:`ShowerObservables.high_level`."""
    n_long, n_rad = len(detector.long_edges) - 1, len(detector.radial_edges_mm) - 1
    return (
        [f"E_long_{i + 1}" for i in range(n_long)]
        + [f"E_radial_{i + 1}" for i in range(n_rad)]
        + ["m1_x", "m1_y", "m1_z", "N_hits", "E_vis"]
    )


def _binned_sum(
    n: int, shower: np.ndarray, values: np.ndarray, edges: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per-shower weighted histogram ``(n, len(edges) - 1)``; values outside the edges are dropped."""
    n_bins = len(edges) - 1
    b = np.searchsorted(edges, values, side="right") - 1
    # The last bin is closed on the right (SPEC 4: "last closed").
    b = np.where(values == edges[-1], n_bins - 1, b)
    ok = (b >= 0) & (b < n_bins)
    flat = np.bincount(shower[ok] * n_bins + b[ok], weights=weights[ok], minlength=n * n_bins)
    return flat.reshape(n, n_bins)


def observables_from_hits(hits: Hits, energy: np.ndarray, detector: Detector) -> ShowerObservables:
    """Observables of thresholded hits (see :func:`compute_observables`)."""
    n = hits.n_showers
    s, e = hits.shower, hits.energy
    e_vis = np.bincount(s, weights=e, minlength=n)
    n_hits = np.bincount(s, minlength=n)
    safe = np.where(e_vis > 0, e_vis, 1.0)
    cog = np.column_stack(
        [np.bincount(s, weights=e * v, minlength=n) / safe for v in (hits.x, hits.y, hits.layer)]
    )
    radius = hits.radius
    n_layers = detector.n_layers
    e_layer = np.bincount(s * n_layers + hits.layer, weights=e, minlength=n * n_layers)
    hits_layer = np.bincount(s * n_layers + hits.layer, minlength=n * n_layers)
    rings = layer_ring_edges(detector)
    per_layer = s * n_layers + hits.layer

    def layer_rings(weights: np.ndarray) -> np.ndarray:
        return _binned_sum(n * n_layers, per_layer, radius, rings, weights).reshape(n, n_layers, -1)

    return ShowerObservables(
        energy=np.asarray(energy, np.float64),
        n_hits=n_hits,
        e_vis=e_vis,
        cog=cog,
        e_long=_binned_sum(n, s, hits.layer, np.asarray(detector.long_edges, float), e),
        e_radial=_binned_sum(n, s, radius, np.asarray(detector.radial_edges_mm), e),
        e_layer=e_layer.reshape(n, n_layers),
        hits_layer=hits_layer.reshape(n, n_layers),
        radial_profile=_binned_sum(n, s, radius, radial_profile_edges(detector), e),
        layer_ring_energy=layer_rings(e).astype(np.float32),
        layer_ring_hits=layer_rings(np.ones_like(e)).astype(np.float32),
        lost_mev=np.asarray(hits.lost_mev, np.float64),
        cell_energy=e.astype(np.float32),
        cell_offsets=np.concatenate([[0], np.cumsum(n_hits)]),
    )


def compute_observables(
    showers: PointShowers | VoxelShowers, detector: Detector, threshold_mev: float | None = None
) -> ShowerObservables:
    """Project ``showers`` onto ``detector``'s readout, apply the threshold, compute observables.

    ``threshold_mev`` defaults to the detector's. Showers without hits get ``m1 = 0``.
    """
    threshold = detector.threshold_mev if threshold_mev is None else threshold_mev
    hits = apply_threshold(to_hits(showers, detector), threshold)
    return observables_from_hits(hits, showers.energy, detector)


def observables_from_file(
    path: str | Path,
    detector: str | Path | Detector | None = None,
    chunk_size: int = 2000,
    max_showers: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine: Any = None,
) -> ShowerObservables:
    """Observables of every shower in a file, read in chunks of ``chunk_size`` showers.

    ``progress`` (if given) is called with the number of showers done after each chunk. With
    an ``engine`` (:mod:`caloforge.engines`), each chunk is read and computed by its workers
    (which must see the file) and the parts are merged here in order: the same result.
    """
    with open_showers(path, detector) as reader:
        det = reader.detector
        parts = []
        if engine is not None:
            n = min(len(reader), max_showers or len(reader))
            jobs = [(str(path), det, lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
            chunks: Any = engine.imap(_chunk_observables, jobs)
        else:
            chunks = (compute_observables(c, det) for c in reader.iter_chunks(chunk_size, stop=max_showers))
        for part in chunks:
            parts.append(part)
            if progress is not None:
                progress(len(part))
    if not parts:
        raise ValueError(f"'{path}' holds no showers")
    return ShowerObservables.concatenate(parts)


def _chunk_observables(job: tuple[str, Detector, int, int]) -> ShowerObservables:
    """Observables of showers ``lo:hi`` of a file (one piece of an engine run)."""
    path, det, lo, hi = job
    with open_showers(path, det) as reader:
        return compute_observables(reader.read(lo, hi), det)


def quantile_edges(
    values: np.ndarray, n_bins: int = 10, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Edges of ``n_bins`` bins holding equal numbers of ``values``; ``lo``/``hi`` fix the outer edges.

    >>> quantile_edges(np.arange(100.0), 4, lo=0, hi=100).tolist()
    [0.0, 24.75, 49.5, 74.25, 100.0]
    """
    edges = np.quantile(np.asarray(values, np.float64), np.linspace(0, 1, n_bins + 1))
    if lo is not None:
        edges[0] = lo
    if hi is not None:
        edges[-1] = hi
    return edges


def derive_edges(
    showers: PointShowers | VoxelShowers | Iterable[PointShowers | VoxelShowers],
    detector: str | Detector,
    n_bins: int = 10,
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """E_long and E_radial edges from a reference sample: deciles of the thresholded hits.

    That is how SPEC 4's ILD edges were made; use it for any other detector. Layer edges
    are rounded to whole layers (so there may be fewer than ``n_bins`` groups); the last
    radial edge is the readout's outer reach. Returns ``(long_edges, radial_edges_mm)``,
    ready for :class:`~caloforge.detector.Detector`.
    """
    det = get_detector(detector)
    batches = [showers] if isinstance(showers, (PointShowers, VoxelShowers)) else showers
    layers, radii = [], []
    for batch in batches:
        hits = apply_threshold(to_hits(batch, det), det.threshold_mev)
        layers.append(hits.layer)
        radii.append(hits.radius)
    layer = np.concatenate(layers).astype(np.float64)
    radius = np.concatenate(radii)
    if len(layer) == 0:
        raise ValueError("the reference sample has no hits above threshold")
    long_q = np.round(quantile_edges(layer + 0.5, n_bins, lo=0, hi=det.n_layers)).astype(int)
    long_edges = tuple(int(v) for v in np.unique(long_q))
    outer = max(float(radius.max()) + 1e-6, det.readout.half_extent_mm * np.sqrt(2))
    radial = quantile_edges(radius, n_bins, lo=0.0, hi=outer)
    radial_edges = tuple(float(v) for v in np.unique(np.round(radial, 3)))
    return long_edges, radial_edges
