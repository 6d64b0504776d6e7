"""Synthetic shower and jet files of any size, for timing and memory checks of trainings
(``bench/gpu_check.py``, ``bench/training_memory.py``) where only the shapes matter.

The contents are shower-like (a Gamma longitudinal profile, an exponential transverse fall-off,
Gamma fluctuations per cell; jets of three prongs) but are *not* physics: nothing trained on
them is a model of anything. Vectorised, so that a paper-size file takes seconds to make.

>>> import tempfile, pathlib
>>> from caloforge.io import open_showers
>>> path = pathlib.Path(tempfile.mkdtemp()) / "v.h5"
>>> write_synthetic(path, "voxels", 8)
>>> with open_showers(path) as f:
...     len(f), f.detector.name
(8, 'calochallenge-ds2')
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["KINDS", "write_synthetic"]

Kind = Literal["points", "voxels", "voxels-ds3", "images", "jets"]
#: The kinds of file :func:`write_synthetic` makes, and the detector of each.
KINDS: dict[str, str | None] = {
    "points": "ild-ecal",
    "voxels": "calochallenge-ds2",
    "voxels-ds3": "calochallenge-ds3",
    "images": "ild-ecal-30",
    "jets": None,
}


def _profile(energy_gev: np.ndarray, n_layers: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``(n, L)`` layer energies (MeV): a Gamma-like profile peaking deeper for higher energies."""
    layer = np.arange(n_layers) + 1.0
    peak = 4 + 1.5 * np.log(energy_gev) + rng.normal(0, 0.7, len(energy_gev))
    prof = layer**2 * np.exp(-layer / np.maximum(peak[:, None] / 2, 1.0))
    return (
        prof * (energy_gev * 1000 * scale * rng.uniform(0.95, 1.05, len(energy_gev)) / prof.sum(1))[:, None]
    )


def _cells(
    energy_gev: np.ndarray,
    shape: tuple[int, int, int],
    radial: np.ndarray,
    rng: np.random.Generator,
    threshold: float,
) -> np.ndarray:
    """``(n, L·A·B)`` cell energies (MeV) of showers with the transverse weights ``radial``."""
    n_layers = shape[0]
    prof = _profile(energy_gev, n_layers, rng, 0.015)
    width = rng.uniform(0.7, 1.3, (len(energy_gev), 1, 1, 1))
    weights = np.exp(-radial[None, None] / width) * rng.gamma(2.0, 1.0, (len(energy_gev), *shape))
    weights /= weights.sum(axis=(2, 3), keepdims=True)
    out = (prof[:, :, None, None] * weights).reshape(len(energy_gev), -1).astype(np.float32)
    out[out < threshold] = 0.0
    return out


def write_synthetic(path: str | Path, kind: Kind, n: int, seed: int = 0, n_particles: int = 30) -> None:
    """Write ``n`` synthetic showers (or jets) of ``kind`` to ``path``: ``points`` (ILD ECAL
    photons, 10–90 GeV), ``voxels`` / ``voxels-ds3`` (CaloChallenge dataset-2 / dataset-3
    electrons, 1–1000 GeV), ``images``
    (``ild-ecal-30`` photons, 10–90 GeV) or ``jets`` (top jets of ``n_particles``), in blocks."""
    from caloforge.detector import get_detector
    from caloforge.io import PointShowers, VoxelShowers, write_showers

    rng = np.random.default_rng(seed)
    if kind == "jets":
        from caloforge.jets.io import write_jets

        write_jets(path, _jets(n, n_particles, rng), generator="synthetic")
        return
    det = get_detector(KINDS[kind])  # type: ignore[arg-type]
    if kind in ("voxels", "voxels-ds3"):
        energy = np.exp(rng.uniform(np.log(1.0), np.log(1000.0), n))
        ro = det.readout
        grid = (det.n_layers, ro.n_alpha, ro.n_radial)  # type: ignore[union-attr]
        rings = np.broadcast_to(np.arange(grid[2]) * 9.0 / grid[2], grid[1:])
        voxels = _blocks(energy, lambda e: _cells(e, grid, rings, rng, det.threshold_mev))
        data: object = VoxelShowers(energy, voxels)
        attrs = {"energy_min_gev": 1.0, "energy_max_gev": 1000.0}
    elif kind == "images":
        energy = rng.uniform(10.0, 90.0, n)
        r = np.hypot(*np.meshgrid(np.arange(30) - 15, np.arange(30) - 15, indexing="ij"))
        data = VoxelShowers(
            energy, _blocks(energy, lambda e: _cells(e, (30, 30, 30), r, rng, det.threshold_mev))
        )
        attrs = {"energy_min_gev": 10.0, "energy_max_gev": 90.0}
    else:
        energy = rng.uniform(10.0, 90.0, n)
        data = PointShowers(energy, _points(energy, det.n_layers, rng))
        attrs = {"energy_min_gev": 10.0, "energy_max_gev": 90.0}
    write_showers(path, data, det, generator="synthetic", attrs=attrs)  # type: ignore[arg-type]


def _blocks(energy: np.ndarray, make: Callable[[np.ndarray], np.ndarray], size: int = 2000) -> np.ndarray:
    """``make(energies)`` of blocks of ``size`` showers, stacked (bounded temporary memory)."""
    return np.concatenate([make(energy[lo : lo + size]) for lo in range(0, len(energy), size)])


def _points(energy: np.ndarray, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, P, 4)`` points (x, y mm, layer + 0.5, MeV), about 25 per GeV, padded at the back."""
    counts = np.maximum((energy * 25 * rng.uniform(0.9, 1.1, len(energy))).astype(int), 1)
    width = int(counts.max())
    slot = np.arange(width)
    pts = np.zeros((len(energy), width, 4), np.float32)
    real = slot[None] < counts[:, None]
    prof = _profile(energy, n_layers, rng, 1.0)
    cdf = np.cumsum(prof / prof.sum(1, keepdims=True), axis=1)
    layer = (rng.random((len(energy), width))[..., None] > cdf[:, None, :]).sum(-1)
    r = rng.exponential(12.0, (len(energy), width))
    phi = rng.uniform(0, 2 * np.pi, (len(energy), width))
    pts[..., 0] = r * np.cos(phi)
    pts[..., 1] = r * np.sin(phi)
    pts[..., 2] = np.minimum(layer, n_layers - 1) + 0.5
    pts[..., 3] = rng.exponential(0.2, (len(energy), width)) + 1e-3
    pts[~real] = 0.0
    return pts


def _jets(n: int, n_particles: int, rng: np.random.Generator) -> Any:
    """Top-like jets (a :class:`~caloforge.jets.io.Jets`): particles around three prongs."""
    from caloforge.jets.io import Jets

    k = rng.integers(max(2, n_particles // 2), n_particles + 1, n)
    prongs = rng.normal(0, 0.25, (n, 3, 2))
    which = rng.integers(0, 3, (n, n_particles))
    eta_phi = np.take_along_axis(prongs, which[..., None].repeat(2, -1), 1)
    eta_phi = eta_phi + rng.normal(0, 0.1, (n, n_particles, 2))
    real = np.arange(n_particles)[None] < k[:, None]
    pt = np.sort(rng.exponential(1.0, (n, n_particles)) * real, axis=1)[:, ::-1] + 1e-3 * real
    particles = np.zeros((n, n_particles, 4), np.float32)
    centre = (eta_phi * real[..., None]).sum(1, keepdims=True) / k[:, None, None]
    particles[..., :2] = (eta_phi - centre) * real[..., None]
    particles[..., 2] = pt / pt.sum(1, keepdims=True)
    particles[..., 3] = real
    jet = np.stack([rng.uniform(800, 1200, n), rng.uniform(-2, 2, n), rng.uniform(120, 220, n), k], 1)
    return Jets(particles, jet.astype(np.float32), "t")
