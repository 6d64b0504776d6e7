"""Post-sampling calibrations of CaloClouds II (SPEC 6.1), vectorised over a padded batch.

After the PointWise Net has produced ``N`` points per shower (``points`` ``(B, P, 4)``: x mm,
y mm, depth value, E; ``mask`` ``(B, P)`` marks real points):

1. :func:`assign_layers` — the diffusion depth values only *rank* the points; they are
   dealt to the layers in order of depth with the Shower Flow's per-layer counts and
   placed at the layer centre ``l + 0.5``;
2. :func:`rescale_layer_energies` — each layer's energies are scaled so the layer sums to
   the Shower Flow's layer energy;
3. :func:`shift_cog` — x and y are shifted so the energy-weighted centre of gravity is the
   Shower Flow's.

Before sampling, :class:`NPointsCalibration` maps the Shower Flow's number of points
(clustered Geant4 points) to the number of points the diffusion model must generate to give
as many cell hits as Geant4 (its points land in the same cells more or less often than
Geant4's do).

>>> import torch
>>> pts = torch.tensor([[[0.0, 0.0, 0.9, 1.0], [2.0, 0.0, 0.1, 1.0], [4.0, 0.0, 0.5, 1.0]]])
>>> mask = torch.ones(1, 3, dtype=torch.bool)
>>> out = calibrate_points(pts, mask, torch.tensor([[1, 2]]), torch.tensor([[3.0, 5.0]]),
...                        torch.tensor([[1.0, 0.0]]))
>>> out[0, :, 2].tolist(), out[0, :, 3].tolist()
([1.5, 0.5, 1.5], [2.5, 3.0, 2.5])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.detector import Detector
from caloforge.io import PointShowers
from caloforge.projection import apply_threshold, to_hits

__all__ = [
    "NPointsCalibration",
    "assign_layers",
    "calibrate_points",
    "count_hits",
    "fit_n_points_calibration",
    "rescale_layer_energies",
    "shift_cog",
]


def _argsort_rows(values: Tensor) -> Tensor:
    """``torch.argsort(values, dim=1, stable=True)`` for float32 rows, ~3x faster on the CPU.

    Each float becomes an int32 of the same order, joined with its column index into one
    int64 key, and numpy's (SIMD) sort of the keys gives the stable order. Traced, off the CPU
    or for other types: torch's sort.
    """
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()  # torch >= 2.3
    if torch.jit.is_tracing() or compiling or values.device.type != "cpu" or values.dtype != torch.float32:
        return torch.argsort(values, dim=1, stable=True)
    array = values.detach().numpy() + np.float32(0.0)  # + 0.0 turns -0.0 into +0.0
    bits = np.where(np.isnan(array), np.float32(np.nan), array).view(np.int32)  # NaNs last, as torch
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    key = (ordered.astype(np.int64) << 32) | np.arange(values.shape[1], dtype=np.int64)
    key.sort(axis=1)
    return torch.from_numpy(key & 0xFFFFFFFF)


def assign_layers(points: Tensor, mask: Tensor, layer_counts: Tensor) -> Tensor:
    """Deal points to layers in order of their depth value, ``layer_counts[b, l]`` to layer ``l``.

    ``layer_counts`` ``(B, L)`` must sum to the number of real points of each shower.
    Returns a copy with the depth column set to ``l + 0.5`` (padding untouched).
    """
    n_real = mask.sum(dim=1)
    if not torch.equal(layer_counts.sum(dim=1).to(n_real.dtype), n_real):
        raise ValueError("per-layer counts must sum to each shower's number of points")
    depth = points[..., 2].masked_fill(~mask, float("inf"))
    order = _argsort_rows(depth)
    # Sorted position j goes to layer #{l : bounds[l] <= j}: count the bounds at each position.
    n_slots, n_layers = depth.shape[1], layer_counts.shape[1]
    bounds = layer_counts.cumsum(dim=1).clamp(max=n_slots)
    at = torch.zeros(depth.shape[0], n_slots + 1, dtype=torch.long, device=depth.device)
    at.scatter_add_(1, bounds, torch.ones_like(bounds))
    by_position = at[:, :n_slots].cumsum(dim=1).clamp(max=n_layers - 1)
    layer = torch.empty_like(order).scatter_(1, order, by_position)
    out = points.clone()
    out[..., 2] = torch.where(mask, layer.to(points.dtype) + 0.5, points[..., 2])
    return out


def _layer_index(points: Tensor, n_layers: int) -> Tensor:
    return points[..., 2].floor().long().clamp(0, n_layers - 1)


def rescale_layer_energies(points: Tensor, mask: Tensor, layer_energy: Tensor) -> Tensor:
    """Scale energies so each layer sums to ``layer_energy`` ``(B, L)`` (layers without points stay empty)."""
    layer = _layer_index(points, layer_energy.shape[1])
    e = points[..., 3] * mask
    current = torch.zeros_like(layer_energy, dtype=e.dtype).scatter_add_(1, layer, e)
    factor = torch.where(current > 0, layer_energy.to(e.dtype) / current.clamp_min(1e-30), 0.0)
    out = points.clone()
    out[..., 3] = torch.where(mask, e * factor.gather(1, layer), points[..., 3])
    return out


def shift_cog(points: Tensor, mask: Tensor, cog_xy: Tensor) -> Tensor:
    """Shift x, y so the energy-weighted centre of gravity of the real points is ``cog_xy`` ``(B, 2)``."""
    w = points[..., 3] * mask
    total = w.sum(dim=1, keepdim=True).clamp_min(1e-30)
    current = (points[..., :2] * w.unsqueeze(-1)).sum(dim=1) / total
    out = points.clone()
    out[..., :2] = torch.where(
        mask.unsqueeze(-1), points[..., :2] + (cog_xy - current).unsqueeze(1), points[..., :2]
    )
    return out


def calibrate_points(
    points: Tensor, mask: Tensor, layer_counts: Tensor, layer_energy: Tensor, cog_xy: Tensor
) -> Tensor:
    """All three point calibrations in order: layers, layer energies, centre of gravity."""
    points = assign_layers(points, mask, layer_counts)
    points = rescale_layer_energies(points, mask, layer_energy)
    return shift_cog(points, mask, cog_xy)


def count_hits(showers: PointShowers, detector: Detector) -> np.ndarray:
    """Cells above the detector's threshold per shower (the N_hits observable)."""
    hits = apply_threshold(to_hits(showers, detector), detector.threshold_mev)
    return np.bincount(hits.shower, minlength=len(showers))


def _poly_fit(u: np.ndarray, y: np.ndarray, degree: int = 3) -> np.ndarray:
    """Least-squares polynomial coefficients (highest power first); lower degree for few points."""
    degree = max(0, min(degree, len(np.unique(u)) - 1))
    coeffs = np.polyfit(u, y, degree)
    return np.concatenate([np.zeros(3 - degree), coeffs])


@dataclass
class NPointsCalibration:
    """``N_cal = round(N * r(N / n_scale))`` with a cubic ``r``, clipped to ``[1, n_cap]``.

    ``r`` is evaluated with its argument clamped to the fitted range ``u_range`` (a cubic
    must not be extrapolated). The identity calibration has ``r = 1``.

    >>> cal = NPointsCalibration.identity(n_scale=6000)
    >>> cal(torch.tensor([10, 5000])).tolist()
    [10, 5000]
    """

    n_scale: float
    n_cap: int
    ratio_coeffs: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 1.0])
    u_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def identity(cls, n_scale: float, n_cap: int | None = None) -> NPointsCalibration:
        """No change (up to the cap, by default twice ``n_scale``)."""
        return cls(float(n_scale), int(n_cap if n_cap is not None else 2 * n_scale))

    @classmethod
    def fit(
        cls,
        n_data: np.ndarray,
        hits_data: np.ndarray,
        n_gen: np.ndarray,
        hits_gen: np.ndarray,
        n_scale: float,
        n_cap: int | None = None,
        iterations: int = 30,
    ) -> NPointsCalibration:
        """Fit from Geant4 ``(N, hits)`` pairs and model ``(N, hits)`` pairs (model showers
        generated with the uncalibrated ``N``).

        Cubic fits of the hits-per-point ratios ``g_data(N)`` and ``g_gen(N)`` (SPEC 6.1's
        ``p_data``, ``p_gen``) give the hits each source makes from ``N`` points; for every
        ``N`` in the Geant4 range we solve ``N' g_gen(N') = N g_data(N)`` for ``N'`` (a damped
        fixed-point iteration; the ratios vary slowly) and fit the cubic ``r = N' / N``.
        """
        cal = cls.identity(n_scale, n_cap)
        n_data, n_gen = np.asarray(n_data, float), np.asarray(n_gen, float)
        keep_d, keep_g = n_data > 0, n_gen > 0
        if keep_d.sum() < 2 or keep_g.sum() < 2:
            return cal
        u_d, u_g = n_data[keep_d] / n_scale, n_gen[keep_g] / n_scale
        g_data = _poly_fit(u_d, np.asarray(hits_data, float)[keep_d] / n_data[keep_d])
        g_gen = _poly_fit(u_g, np.asarray(hits_gen, float)[keep_g] / n_gen[keep_g])
        lo, hi = float(u_d.min()), float(u_d.max())
        glo, ghi = float(u_g.min()), float(u_g.max())
        u = np.linspace(lo, hi, 200)
        target = u * np.polyval(g_data, u)
        u_cal = u.copy()
        for _ in range(iterations):
            ratio_gen = np.clip(np.polyval(g_gen, np.clip(u_cal, glo, ghi)), 1e-3, None)
            u_cal = 0.5 * u_cal + 0.5 * target / ratio_gen
        r = u_cal / np.maximum(u, 1e-12)
        if not np.all(np.isfinite(r)) or np.any(r <= 0):
            return cal
        cal.ratio_coeffs = [float(c) for c in _poly_fit(u, r)]
        cal.u_range = (lo, hi)
        return cal

    def refine(
        self,
        previous: NPointsCalibration,
        n_data: np.ndarray,
        hits_data: np.ndarray,
        n_previous: np.ndarray,
        hits_previous: np.ndarray,
        n_self: np.ndarray,
        hits_self: np.ndarray,
    ) -> NPointsCalibration:
        """One secant step towards "model hits = Geant4 hits" at every flow ``N``.

        ``hits_previous`` and ``hits_self`` are the cell hits of model showers generated with
        ``previous`` and with this calibration (flow counts ``n_previous``, ``n_self``; best the
        same showers). :meth:`fit` assumes the model's hits per point depend on the number of
        points drawn only as they do across showers; but drawing fewer points from one
        shower's density fills fewer shared cells, so hits grow sub-linearly with the draws.
        The two runs measure that growth: the secant of ``log hits`` against ``log r``.
        """
        n_data = np.asarray(n_data, float)
        keep = n_data > 0
        u_data = n_data[keep] / self.n_scale
        lo, hi = float(u_data.min()), float(u_data.max())
        u = np.linspace(lo, hi, 200)

        def log_hits(n: np.ndarray, hits: np.ndarray) -> np.ndarray:
            n = np.asarray(n, float)
            ok = n > 0
            g = _poly_fit(n[ok] / self.n_scale, np.asarray(hits, float)[ok] / n[ok])
            return np.log(u * np.clip(np.polyval(g, u), 1e-6, None))

        target = log_hits(n_data, hits_data)
        y_prev, y_self = log_hits(n_previous, hits_previous), log_hits(n_self, hits_self)
        x_prev, x_self = np.log(previous.ratio_np(u)), np.log(self.ratio_np(u))
        dx = x_self - x_prev
        # Without a usable step between the runs, assume hits ~ draws^0.8.
        slope = np.where(np.abs(dx) > 1e-3, (y_self - y_prev) / np.where(dx == 0, 1, dx), 0.8)
        x_new = x_self + (target - y_self) / np.clip(slope, 0.2, 1.5)
        r = np.exp(x_new)
        if not np.all(np.isfinite(r)):
            return self
        return NPointsCalibration(self.n_scale, self.n_cap, [float(c) for c in _poly_fit(u, r)], (lo, hi))

    def ratio_np(self, u: np.ndarray) -> np.ndarray:
        """``r(u)`` for ``u = N / n_scale`` (clamped to the fitted range), in numpy."""
        return np.polyval(self.ratio_coeffs, np.clip(u, *self.u_range))

    def ratio(self, n: Tensor) -> Tensor:
        """``r(N / n_scale)`` for point counts ``n``."""
        u = (n.double() / self.n_scale).clamp(*self.u_range)
        r = torch.zeros_like(u)
        for c in self.ratio_coeffs:
            r = r * u + c
        return r

    def __call__(self, n: Tensor) -> Tensor:
        """Calibrated counts (int64)."""
        return (n.double() * self.ratio(n)).round().clamp(1, self.n_cap).to(torch.int64)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint."""
        return {
            "n_scale": self.n_scale,
            "n_cap": self.n_cap,
            "ratio_coeffs": list(self.ratio_coeffs),
            "u_range": list(self.u_range),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NPointsCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            float(data["n_scale"]),
            int(data["n_cap"]),
            [float(c) for c in data["ratio_coeffs"]],
            (float(data["u_range"][0]), float(data["u_range"][1])),
        )


def fit_n_points_calibration(
    sample: Callable[[Tensor, torch.Generator], tuple[PointShowers, Tensor]],
    set_calibration: Callable[[NPointsCalibration], None],
    detector: Detector,
    max_points: int,
    energies: Tensor,
    n_points: np.ndarray,
    hits: np.ndarray,
    refinements: int = 1,
    seed: int = 0,
    progress: Callable[..., None] | None = None,
    batch_size: int = 32,
) -> NPointsCalibration:
    """Fit the number-of-points calibration (SPEC 6.1) of a point-cloud model with its own sampler.

    ``sample(energies, generator) -> (showers, flow N)`` makes model showers with the
    calibration last given to ``set_calibration``. Model showers at ``energies`` are generated
    so that their cell hits match the Geant4 showers' (``n_points`` clustered points and
    ``hits`` cells above threshold each, any number of showers). A first run with the identity
    gives the cubic fit of :meth:`NPointsCalibration.fit`; each of the ``refinements`` further
    runs (same showers, same noise) corrects it with a secant step
    (:meth:`NPointsCalibration.refine`). The result is left set.
    """
    passes = 1 + refinements

    def run(calibration: NPointsCalibration, index: int) -> tuple[np.ndarray, np.ndarray]:
        set_calibration(calibration)
        gen = torch.Generator().manual_seed(seed + 4)
        n_flow, hits_model = [], []
        for start in range(0, len(energies), batch_size):
            showers, n = sample(energies[start : start + batch_size], gen)
            n_flow.append(n.numpy())
            hits_model.append(count_hits(showers, detector))
            if progress is not None:
                done = index * len(energies) + min(start + batch_size, len(energies))
                progress("calibrate", done, passes * len(energies))
        return np.concatenate(n_flow), np.concatenate(hits_model)

    previous = NPointsCalibration.identity(max_points)
    previous_run = run(previous, 0)
    current = NPointsCalibration.fit(n_points, hits, *previous_run, n_scale=max_points)
    for index in range(1, passes):
        current_run = run(current, index)
        previous, current = current, current.refine(previous, n_points, hits, *previous_run, *current_run)
        previous_run = current_run
    set_calibration(current)
    return current
