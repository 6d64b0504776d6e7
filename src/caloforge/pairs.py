"""Events of two showers (``caloforge simulate --pair-separation``): how the two clusters come out.

Each event's points are split at the plane half-way between the two primaries' entry points
(x = the gun's x offset; the pair lies along x): cluster A holds the points at smaller x, B the
others. Per event: the **separation** of the two clusters' energy-weighted centres in x (mm),
the **energy share** E_A / (E_A + E_B), and each cluster's visible energy (MeV). These are the
quantities DDML validates di-photon fast simulation with; :func:`pair_w1` compares their
distributions between two files with the W1 protocol of :mod:`caloforge.metrics` (standardised
by the reference, draws of equal size, Geant4-vs-Geant4 floor from :func:`pair_floor`).

>>> import numpy as np
>>> from caloforge.io import PointShowers
>>> pts = np.array([[[-10.0, 0, 3.5, 1.0], [-12.0, 0, 4.5, 1.0], [11.0, 0, 3.5, 2.0]]], np.float32)
>>> obs = pair_observables(PointShowers(np.array([20.0]), pts), offset_x_mm=0.0)
>>> float(obs["separation"][0]), float(obs["energy share"][0])
(22.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.io import PointShowers, open_showers
from caloforge.metrics import W1_UNIT, _draw_indices, w1_distance

__all__ = ["PAIR_OBSERVABLES", "pair_floor", "pair_observables", "pair_observables_from_file", "pair_w1"]

PAIR_OBSERVABLES = ("separation", "energy share", "E_A", "E_B")
PairObservables = Mapping[str, np.ndarray]


def pair_observables(showers: PointShowers, offset_x_mm: float = 0.0) -> dict[str, np.ndarray]:
    """Per event: separation (mm), energy share, E_A and E_B (MeV) of the two clusters."""
    pts = showers.points.astype(np.float64)
    e = pts[..., 3]
    left = pts[..., 0] < offset_x_mm
    e_a = np.where(left, e, 0.0).sum(axis=1)
    e_b = np.where(~left, e, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_a = np.where(left, e * pts[..., 0], 0.0).sum(axis=1) / e_a
        x_b = np.where(~left, e * pts[..., 0], 0.0).sum(axis=1) / e_b
        share = e_a / (e_a + e_b)
    return {"separation": x_b - x_a, "energy share": share, "E_A": e_a, "E_B": e_b}


def pair_observables_from_file(
    path: str | Path, max_showers: int | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """``(separation of the primaries in mm, per-event observables)`` of a pair-event file."""
    with open_showers(path) as f:
        separation = float(f.attrs.get("pair_separation_mm", 0.0))
        if separation <= 0:
            raise ValueError(f"'{path}' holds single showers, not pairs (simulate it with --pair-separation)")
        offset = float(f.attrs.get("gun_offset_x_mm", 0.0))
        stop = len(f) if max_showers is None else min(len(f), max_showers)
        parts = [pair_observables(chunk, offset) for chunk in f.iter_chunks(stop=stop)]
    obs = {k: np.concatenate([p[k] for p in parts]) for k in PAIR_OBSERVABLES}
    good = np.all([np.isfinite(v) for v in obs.values()], axis=0)
    return separation, {k: v[good] for k, v in obs.items()}


def _one_draw(
    a: PairObservables, ia: np.ndarray, b: PairObservables, ib: np.ndarray, scale: Mapping[str, float]
) -> dict[str, float]:
    return {k: w1_distance(a[k][ia] / scale[k], b[k][ib] / scale[k]) for k in PAIR_OBSERVABLES}


def _summary(draws: list[dict[str, float]], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in PAIR_OBSERVABLES:
        values = np.array([d[k] for d in draws]) / W1_UNIT
        out[k] = [float(values.mean()), float(values.std())]
    out["draw_size"] = size
    return out


def _scale(reference: PairObservables) -> dict[str, float]:
    return {k: float(np.std(reference[k])) or 1.0 for k in PAIR_OBSERVABLES}


def pair_w1(
    reference: PairObservables, candidate: PairObservables, size: int, n_draws: int = 10, seed: int = 0
) -> dict[str, Any]:
    """W1 (units of :data:`~caloforge.metrics.W1_UNIT`, standardised by the reference's std) of
    every pair observable: mean and std over ``n_draws`` draws of ``size`` events per side."""
    rng = np.random.default_rng(seed)
    n_ref, n_cand = len(reference["separation"]), len(candidate["separation"])
    ref_draws, _ = _draw_indices(n_ref, size, n_draws, rng)
    cand_draws, _ = _draw_indices(n_cand, size, n_draws, rng)
    scale = _scale(reference)
    draws = [_one_draw(reference, a, candidate, b, scale) for a, b in zip(ref_draws, cand_draws, strict=True)]
    return _summary(draws, size)


def pair_floor(reference: PairObservables, size: int, n_draws: int = 10, seed: int = 0) -> dict[str, Any]:
    """The reference-vs-reference floor of :func:`pair_w1`: two disjoint sets of ``size`` per draw."""
    rng = np.random.default_rng(seed)
    n = len(reference["separation"])
    if 2 * size > n:
        raise ValueError(f"a pair floor of {size} events per side needs {2 * size} reference events, not {n}")
    scale = _scale(reference)
    draws = []
    for _ in range(n_draws):
        perm = rng.permutation(n)
        draws.append(_one_draw(reference, perm[:size], reference, perm[size : 2 * size], scale))
    return _summary(draws, size)
