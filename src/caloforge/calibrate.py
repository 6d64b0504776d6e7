"""Post-sampling calibrations of CaloClouds II (SPEC 6.1), vectorised over a padded batch.

After the PointWise Net has produced ``N`` points per shower (``points`` ``(B, P, 4)``: x mm,
y mm, depth value, E; ``mask`` ``(B, P)`` marks real points):

1. :func:`assign_layers` — the diffusion depth values only *rank* the points; they are
   dealt to the layers in order of depth with the Shower Flow's per-layer counts and
   placed at the layer centre ``l + 0.5``;
2. :func:`rescale_layer_energies` — each layer's energies are scaled so the layer sums to
   the Shower Flow's layer energy;
3. the energy-weighted centre of gravity in x and y is set to the Shower Flow's, either by
   :func:`shift_cog` (the paper's: the whole cloud moves, core included) or by :func:`tilt_cog`
   (the points stay; energy moves across each layer, mostly in the halo).

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

import contextlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.detector import Detector
from caloforge.io import PointShowers
from caloforge.projection import apply_threshold, to_hits

__all__ = [
    "NPointsCalibration",
    "RadialCalibration",
    "assign_layers",
    "calibrate_energies",
    "calibrate_points",
    "count_hits",
    "fit_n_points_calibration",
    "fit_radial_calibration",
    "rescale_layer_energies",
    "ring_fractions",
    "shift_cog",
    "tilt_cog",
]

#: The ways :func:`calibrate_points` sets the centre of gravity.
COG_CORRECTIONS = ("shift", "tilt")


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


def _with_energy(points: Tensor, energy: Tensor) -> Tensor:
    """``points`` with the energy column replaced (a concatenation: cheaper than an indexed
    copy in an exported graph)."""
    return torch.cat([points[..., :3], energy.unsqueeze(-1)], dim=-1)


def rescale_layer_energies(points: Tensor, mask: Tensor, layer_energy: Tensor) -> Tensor:
    """Scale energies so each layer sums to ``layer_energy`` ``(B, L)`` (layers without points stay empty)."""
    _, _, depth, energy = points.unbind(-1)
    layer = depth.floor().long().clamp(0, layer_energy.shape[1] - 1)
    e = energy * mask
    current = torch.zeros_like(layer_energy, dtype=e.dtype).scatter_add_(1, layer, e)
    factor = torch.where(current > 0, layer_energy.to(e.dtype) / current.clamp_min(1e-30), 0.0)
    return _with_energy(points, torch.where(mask, e * factor.gather(1, layer), energy))


def shift_cog(points: Tensor, mask: Tensor, cog_xy: Tensor) -> Tensor:
    """Shift x, y so the energy-weighted centre of gravity of the real points is ``cog_xy`` ``(B, 2)``."""
    w = points[..., 3] * mask
    total = w.sum(dim=1, keepdim=True).clamp_min(1e-30)
    current = (points[..., :2] * w.unsqueeze(-1)).sum(dim=1) / total
    xy = torch.where(mask.unsqueeze(-1), points[..., :2] + (cog_xy - current).unsqueeze(1), points[..., :2])
    return torch.cat([xy, points[..., 2:]], dim=-1)


_TILT_FLOOR = 1e-3


def tilt_cog(points: Tensor, mask: Tensor, cog_xy: Tensor, n_layers: int) -> Tensor:
    """Set the energy-weighted centre of gravity to ``cog_xy`` ``(B, 2)`` by tilting the energies.

    Each point's energy is multiplied by ``1 + w . (p - m_l)``, with ``p`` its (x, y), ``m_l``
    its layer's energy-weighted mean and ``w`` one 2-vector per shower solving
    ``C w = cog_xy - current`` (``C``: the energy-weighted within-layer covariance of x, y).
    Every layer keeps its energy and no point moves; the points near the layer's mean, the
    core, change least, so the centre of gravity moves as in Geant4, by uneven side
    development, and the readout cells see all of it (a sub-cell shift of the whole cloud
    mostly stays in the same cells). Factors are clipped at 0.001 (far tails of extreme
    showers; a point keeps a positive energy) and the layers then rescaled to their energies,
    which leaves the centre of gravity of such a shower a little short.

    >>> pts = torch.tensor([[[-10.0, 0.0, 0.5, 1.0], [10.0, 0.0, 0.5, 1.0], [0.0, 20.0, 0.5, 2.0]]])
    >>> out = tilt_cog(pts, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[2.5, 10.0]]), 1)
    >>> e = out[0, :, 3]  # x: the centre of gravity goes from 0 to 2.5 mm, no point moves
    >>> round(e.sum().item(), 4), round((e * out[0, :, 0]).sum().item() / 4, 1)
    (4.0, 2.5)
    >>> out[..., :3].equal(pts[..., :3])
    True
    """
    x, y, _, energy = points.unbind(-1)
    e = energy * mask
    layer = points[..., 2].floor().long().clamp(0, n_layers - 1)
    zeros = torch.zeros_like(e[:, :1]).expand(-1, n_layers)  # (B, L), traceable

    def per_layer(values: Tensor) -> Tensor:
        return zeros.scatter_add(1, layer, values)

    e_l = per_layer(e)
    safe = e_l.clamp_min(1e-30)
    dx = (x - (per_layer(e * x) / safe).gather(1, layer)) * mask
    dy = (y - (per_layer(e * y) / safe).gather(1, layer)) * mask
    total = e.sum(dim=1).clamp_min(1e-30)
    shift_x = cog_xy[:, 0].to(e.dtype) - (e * x).sum(dim=1) / total
    shift_y = cog_xy[:, 1].to(e.dtype) - (e * y).sum(dim=1) / total
    # The 2 x 2 covariance, solved in closed form (exportable; 0.25 mm^2, nothing beside a real
    # shower's spread, keeps a shower on one line or point solvable).
    cxx = (e * dx * dx).sum(dim=1) / total + 0.25
    cyy = (e * dy * dy).sum(dim=1) / total + 0.25
    cxy = (e * dx * dy).sum(dim=1) / total
    det = cxx * cyy - cxy * cxy
    wx = (cyy * shift_x - cxy * shift_y) / det
    wy = (cxx * shift_y - cxy * shift_x) / det
    tilted = e * (1 + dx * wx.unsqueeze(1) + dy * wy.unsqueeze(1)).clamp_min(_TILT_FLOOR)
    # Clipped factors add energy: give every layer its energy back.
    new = per_layer(tilted)
    keep = torch.where(new > 0, e_l / new.clamp_min(1e-30), 0.0)
    return _with_energy(points, torch.where(mask, tilted * keep.gather(1, layer), energy))


@dataclass(frozen=True)
class RadialCalibration:
    """Energy weights by distance from the shower axis, applied within each layer.

    A point at radius ``r`` gets its energy multiplied by ``exp(g(r))``, ``g`` linear between
    the ring centres ``(k + 1/2) pitch_mm`` with values ``log_weights[k]`` and constant beyond
    them; then each layer is scaled back to its energy, so energy only moves between radii.
    Fitted (:func:`fit_radial_calibration`) so that the model's mean share of the visible energy
    in each one-cell-wide ring is Geant4's: it corrects a point model whose core is a little
    too wide without moving any point.

    >>> import math
    >>> cal = RadialCalibration(5.0, (math.log(2.0), 0.0))
    >>> pts = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 9.0, 0.5, 1.0]]])
    >>> cal.apply(pts, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[3.0]]))[0, :, 3].tolist()
    [2.0, 1.0]
    """

    pitch_mm: float
    log_weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.pitch_mm > 0 or len(self.log_weights) < 2:
            raise ValueError("a radial calibration needs a positive ring pitch and at least two rings")

    @classmethod
    def identity(cls, pitch_mm: float, rings: int) -> RadialCalibration:
        """Weights 1 everywhere."""
        return cls(float(pitch_mm), (0.0,) * rings)

    def weights(self, points: Tensor) -> Tensor:
        """``(...)`` energy factors for points ``(..., >= 2)`` (x, y first), traceable."""
        g = torch.tensor(self.log_weights, dtype=points.dtype, device=points.device)
        last = len(self.log_weights) - 1
        u = (points[..., :2].pow(2).sum(-1).sqrt() / self.pitch_mm - 0.5).clamp(0.0, float(last))
        i = u.floor().clamp(max=last - 1)
        t = u - i
        i = i.long()
        return (g[i] * (1 - t) + g[i + 1] * t).exp()

    def apply(self, points: Tensor, mask: Tensor, layer_energy: Tensor) -> Tensor:
        """Weighted energies, each layer rescaled to ``layer_energy`` ``(B, L)``."""
        e = torch.where(mask, points[..., 3] * self.weights(points), points[..., 3])
        return rescale_layer_energies(_with_energy(points, e), mask, layer_energy)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint."""
        return {"pitch_mm": self.pitch_mm, "log_weights": list(self.log_weights)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadialCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["pitch_mm"]), tuple(float(v) for v in data["log_weights"]))


def ring_fractions(showers: PointShowers, detector: Detector) -> tuple[np.ndarray, np.ndarray]:
    """Per shower, the share of the visible energy (cells above threshold) in each
    one-cell-wide ring around the axis ``(n, rings)``, and the ring pitch's edges (mm)."""
    from caloforge.observables import compute_observables, radial_profile_edges

    obs = compute_observables(showers, detector)
    return obs.radial_profile / np.maximum(obs.e_vis, 1e-30)[:, None], radial_profile_edges(detector)


def fit_radial_calibration(
    sample: Callable[[Tensor, torch.Generator], PointShowers],
    set_radial: Callable[[RadialCalibration], None],
    detector: Detector,
    energies: Tensor,
    reference_fractions: np.ndarray,
    iterations: int = 2,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[..., None] | None = None,
) -> RadialCalibration:
    """Fit a :class:`RadialCalibration` so that model showers at ``energies`` have, on average,
    the ring shares ``reference_fractions`` ``(rings,)`` (Geant4 showers at the same energies,
    :func:`ring_fractions`). Each of ``iterations`` runs (same noise) multiplies the weights by
    the ratio of the shares, in rings that hold at least 1e-5 of the energy in both; the outer
    rings keep the last such ring's weight. ``sample(energies, generator)`` makes model showers
    with the calibration last given to ``set_radial``; the result is left set."""
    edges = None
    log_w = None
    current: RadialCalibration | None = None
    for it in range(iterations):
        gen = torch.Generator().manual_seed(seed + 5)
        parts = []
        for start in range(0, len(energies), batch_size):
            fractions, edges = ring_fractions(sample(energies[start : start + batch_size], gen), detector)
            parts.append(fractions)
            if progress is not None:
                progress(
                    "radial",
                    it * len(energies) + min(start + batch_size, len(energies)),
                    iterations * len(energies),
                )
        model = np.concatenate(parts).mean(axis=0)
        assert edges is not None
        rings = len(edges) - 1
        if log_w is None:
            log_w = np.zeros(rings)
        ok = (model > 1e-5) & (reference_fractions[:rings] > 1e-5)
        step = np.zeros(rings)
        step[ok] = np.clip(np.log(reference_fractions[:rings][ok] / model[ok]), -0.5, 0.5)
        log_w = log_w + step
        last = int(np.flatnonzero(ok).max()) if ok.any() else 0
        log_w[last + 1 :] = log_w[last]
        current = RadialCalibration(float(edges[1] - edges[0]), tuple(float(v) for v in log_w))
        set_radial(current)
    assert current is not None
    return current


def calibrate_points(
    points: Tensor,
    mask: Tensor,
    layer_counts: Tensor,
    layer_energy: Tensor,
    cog_xy: Tensor,
    cog: str = "shift",
    radial: RadialCalibration | None = None,
) -> Tensor:
    """All the point calibrations in order: layers (:func:`assign_layers`), then
    :func:`calibrate_energies`."""
    points = assign_layers(points, mask, layer_counts)
    return calibrate_energies(points, mask, layer_energy, cog_xy, cog, radial)


def calibrate_energies(
    points: Tensor,
    mask: Tensor,
    layer_energy: Tensor,
    cog_xy: Tensor,
    cog: str = "shift",
    radial: RadialCalibration | None = None,
) -> Tensor:
    """The calibrations after the layer assignment (traceable): layer energies — with the radial
    weights if ``radial`` (:meth:`RadialCalibration.apply` rescales the layers itself) — then
    the centre of gravity (``cog``: ``shift``, :func:`shift_cog`, or ``tilt``, :func:`tilt_cog`)."""
    if cog not in COG_CORRECTIONS:
        raise ValueError(f"unknown centre-of-gravity correction '{cog}': use {', '.join(COG_CORRECTIONS)}")
    if radial is None:
        points = rescale_layer_energies(points, mask, layer_energy)
    else:
        points = radial.apply(points, mask, layer_energy)
    if cog == "tilt":
        return tilt_cog(points, mask, cog_xy, layer_energy.shape[1])
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


def calibrate_model(
    model: str | Path,
    data: str | Path,
    out: str | Path | None,
    *,
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable[..., None] | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> str:
    """``caloforge calibrate``: refit the calibration of ``model`` (in place, or into ``out``)
    against the Geant4 file ``data`` with its family's calibrator, after checking the request in
    full (a shipped model needs ``out``; the options are the family's declared ones; ``out``
    is neither an input nor, without ``overwrite``, an existing file). Returns the line to print.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is where the calibrator runs the
    model's networks (:func:`calibration_device`)."""
    from caloforge.models._training import run_lock
    from caloforge.models.checkpoint import RUN_CHECKPOINT
    from caloforge.models.registry import family_of, shipped_models
    from caloforge.safety import check_outputs, output_lock, refuse_existing

    if (str(model) == "default" or str(model) in shipped_models()) and out is None:
        raise ValueError("the shipped model is read-only: give --out FILE for the recalibrated copy")
    family, path, _ = family_of(model)
    family.require("calibrate")
    given = family.check_options("calibrate", options or {})
    calibrator = family.part("calibrator")
    on = calibration_device(calibrator, family.description, device)
    placed = {"device": on} if _takes_device(calibrator) else {}
    if out is not None:
        check_outputs({"--out": out}, {"--data": data, "--model": path})
        refuse_existing(out, overwrite)
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(out or path))
        if out is None and Path(path).name == RUN_CHECKPOINT:  # in place, in a run directory:
            stack.enter_context(run_lock(Path(path).parent))  # not while it trains
        return calibrator(path, data, out, seed=seed, progress=progress, **placed, **given)


def _takes_device(calibrator: Callable[..., str]) -> bool:
    """Whether a family's calibrator names a ``device`` keyword (a plug-in's older one may not;
    ``**options`` does not count: they are its declared calibration options)."""
    return "device" in inspect.signature(calibrator).parameters


def calibration_device(calibrator: Callable[..., str], description: str, spec: str) -> str:
    """The device ``--device spec`` names for a family's ``calibrator``
    (:func:`caloforge.devices.resolve_device`): ``auto`` is the first CUDA device torch sees
    where the calibrator takes a ``device`` (every built-in one does), else the CPU; a CUDA
    device it cannot use is a one-line ``ValueError``."""
    from caloforge.devices import resolve_device

    return resolve_device(spec, cpu_only=None if _takes_device(calibrator) else f"{description} calibration")
