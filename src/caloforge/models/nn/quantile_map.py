"""Monotone per-group quantile maps that vary smoothly with the incident energy.

A generative model's marginal distributions can be corrected after the fact by mapping each
of its values through ``F_ref⁻¹(F_model(x))``, with both distribution functions estimated on
the *training* sample (the model's own output for the training conditions against the
reference simulation). :class:`QuantileMap` stores the two quantile tables per *group* (for
CaloDREAM: one per layer and radial ring) and per incident-energy bin, and interpolates the
tables linearly in log energy between bin centres, so that the map has no jumps at bin edges.
Within a table the map is piecewise linear; beyond its ends it shifts values by the end
points' difference (slope 1). Missing values (NaN) stay missing.

With ``rates`` (fitted with ``drop=True``) the map also knows how often a value is present
(for CaloDREAM: how often a voxel is hit) in each sample. Where the model makes values more
often than the reference, its smallest ones — those whose exceedance rate over all slots is
above the reference's presence rate — become missing, and the rest are matched by exceedance
rate: the value a model value exceeds with rate ``(1 − q) r_model`` maps to the reference
value exceeded with the same rate. Where the model makes fewer, its values map to the upper
part of the reference distribution. Equal rates give the plain map.

>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> model = torch.randn(20_000, 1, 1, generator=gen)          # N(0, 1) from a "model"
>>> ref = 2 * torch.randn(20_000, 1, 1, generator=gen) + 1    # N(1, 4) in the reference
>>> log_e = torch.zeros(20_000)
>>> qmap = QuantileMap.fit(model, log_e, ref, log_e, (-1.0, 1.0), n_bins=1)
>>> qmap(torch.tensor([[[-1.0, 0.0, 1.0]]]), torch.zeros(1)).round(decimals=1).tolist()
[[[-1.0, 1.0, 3.0]]]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["QuantileMap"]


@dataclass
class QuantileMap:
    """Quantile tables ``source`` → ``target`` of shape ``(bins, groups, quantiles)``.

    ``log_e_centres`` ``(bins,)`` are the bin centres in log incident energy. A group and bin
    with too few values on either side at fitting time maps to itself (equal tables).
    """

    log_e_centres: Tensor
    source: Tensor
    target: Tensor
    #: presence rates ``(2, bins, groups)`` of the source and the target, or None
    rates: Tensor | None = None

    def __post_init__(self) -> None:
        if self.source.shape != self.target.shape or self.source.dim() != 3:
            raise ValueError("quantile tables must both be (bins, groups, quantiles)")
        if len(self.log_e_centres) != self.source.shape[0]:
            raise ValueError("one log-energy centre per bin is needed")
        if self.rates is not None and self.rates.shape != (2, *self.source.shape[:2]):
            raise ValueError("presence rates must be (2, bins, groups)")
        tables = [self.source, self.target] + ([self.rates] if self.rates is not None else [])
        if not all(torch.isfinite(t).all() for t in tables):
            raise ValueError("quantile tables and rates must be finite")

    @property
    def n_groups(self) -> int:
        """Number of groups (the second axis of the values mapped)."""
        return int(self.source.shape[1])

    @classmethod
    def fit(
        cls,
        source: Tensor,
        source_log_e: Tensor,
        target: Tensor,
        target_log_e: Tensor,
        log_e_range: tuple[float, float],
        n_bins: int = 8,
        n_quantiles: int = 51,
        min_count: int = 100,
        drop: bool = False,
    ) -> QuantileMap:
        """Tables from values ``(n, groups, m)`` (NaN = missing) and their showers' log energies.

        The log-energy range is cut into ``n_bins`` equal bins; each bin's tables hold
        ``n_quantiles`` evenly spaced quantiles of the group's values in that bin. With
        ``drop`` the presence rates (present values over slots) are fitted too.
        """
        if source.shape[1] != target.shape[1]:
            raise ValueError(f"{source.shape[1]} groups in the source but {target.shape[1]} in the target")
        if n_bins < 1 or n_quantiles < 2:
            raise ValueError("a quantile map needs at least one bin and two quantiles")
        lo, hi = log_e_range
        edges = np.linspace(lo, hi, n_bins + 1)
        levels = np.linspace(0.0, 1.0, n_quantiles)
        identity = np.linspace(-50.0, 50.0, n_quantiles)  # any increasing table: src == dst
        groups = source.shape[1]
        src_tab = np.zeros((n_bins, groups, n_quantiles))
        dst_tab = np.zeros((n_bins, groups, n_quantiles))
        rates = np.ones((2, n_bins, groups))
        sides_np = []
        for values, log_e in ((source, source_log_e), (target, target_log_e)):
            b = np.clip(np.searchsorted(edges, log_e.double().numpy(), side="right") - 1, 0, n_bins - 1)
            v = values.double().numpy()
            sides_np.append((v.reshape(len(v), groups, -1).transpose(1, 0, 2), b))
        for k in range(n_bins):
            sides = []
            for v_all, b in sides_np:
                v = v_all[:, b == k].reshape(groups, -1)
                count = np.isfinite(v).sum(1)
                with warnings.catch_warnings():  # groups without values: replaced below
                    warnings.simplefilter("ignore", RuntimeWarning)
                    q = (
                        np.nanquantile(v, levels, axis=1).T
                        if v.shape[1]
                        else np.full((groups, n_quantiles), np.nan)
                    )
                sides.append((q, count, max(v.shape[1], 1)))
            (q_src, n_src, slots_src), (q_dst, n_dst, slots_dst) = sides
            ok = (n_src >= min_count) & (n_dst >= min_count)
            # too few values on either side (or none): the group maps to itself, rates equal
            src_tab[k] = np.where(ok[:, None], q_src, identity)
            dst_tab[k] = np.where(ok[:, None], q_dst, identity)
            rates[0, k] = np.where(ok, n_src / slots_src, 1.0)
            rates[1, k] = np.where(ok, n_dst / slots_dst, 1.0)
        centres = (edges[:-1] + edges[1:]) / 2
        return cls(
            torch.from_numpy(centres),
            torch.from_numpy(src_tab),
            torch.from_numpy(dst_tab),
            torch.from_numpy(rates) if drop else None,
        )

    def _at(self, table: Tensor, log_e: Tensor) -> Tensor:
        """``table`` ``(bins, ...)`` at each shower's log energy (linear between centres), on the
        device of ``log_e``."""
        c = self.log_e_centres.double().to(log_e.device)
        x = log_e.double().clamp(c[0], c[-1])
        k = torch.searchsorted(c, x, right=True).clamp(1, max(len(c) - 1, 1)) - 1
        k1 = (k + 1).clamp_max(len(c) - 1)
        w = torch.where(k1 > k, (x - c[k]) / (c[k1] - c[k]).clamp_min(1e-12), torch.zeros_like(x))
        w = w.view(-1, *([1] * (table.dim() - 1)))
        table = table.double().to(log_e.device)
        return (1 - w) * table[k] + w * table[k1]

    @staticmethod
    def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
        """Piecewise-linear ``fp(xp)`` at ``x`` along the last axis (``xp`` increasing), clamped."""
        i = torch.searchsorted(xp.contiguous(), x.contiguous()).clamp(1, xp.shape[-1] - 1)
        x0, x1 = xp.gather(-1, i - 1), xp.gather(-1, i)
        y0, y1 = fp.gather(-1, i - 1), fp.gather(-1, i)
        span = x1 - x0
        slope = torch.where(span > 0, (y1 - y0) / span.clamp_min(1e-12), torch.zeros_like(span))
        y = y0 + (torch.minimum(torch.maximum(x, xp[..., :1]), xp[..., -1:]) - x0) * slope
        return torch.where(x.isnan(), x, y)

    def __call__(self, values: Tensor, log_e: Tensor) -> Tensor:
        """Map ``values`` ``(n, groups, m)`` of showers with log energies ``log_e`` ``(n,)``;
        dropped values come back as NaN. The tables stay where they are (the host) and are
        copied to the device of ``values`` and ``log_e``."""
        if values.dim() != 3 or values.shape[1] != self.n_groups:
            raise ValueError(f"values must be (n, {self.n_groups}, m), got {tuple(values.shape)}")
        src, dst = self._at(self.source, log_e), self._at(self.target, log_e)
        x = values.double()
        # beyond a table's ends: the end point's image plus the distance to it (slope 1)
        overshoot = x - torch.minimum(torch.maximum(x, src[..., :1]), src[..., -1:])
        if self.rates is None:
            return (self._interp(x, src, dst) + overshoot).to(values.dtype)
        levels = torch.linspace(0.0, 1.0, src.shape[-1], dtype=src.dtype, device=src.device).expand_as(src)
        q = self._interp(x, src, levels)
        r_src = self._at(self.rates[0], log_e).unsqueeze(-1)
        r_dst = self._at(self.rates[1], log_e).unsqueeze(-1)
        q_dst = 1.0 - (1.0 - q) * r_src / r_dst.clamp_min(1e-12)
        y = self._interp(q_dst.clamp(0.0, 1.0), levels, dst) + overshoot
        return torch.where(q_dst < 0, math.nan, y).to(values.dtype)

    def to_dict(self) -> dict[str, Tensor | None]:
        """The tables (single precision), for a checkpoint."""
        return {
            "log_e_centres": self.log_e_centres.double(),
            "source": self.source.float(),
            "target": self.target.float(),
            "rates": self.rates.float() if self.rates is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Tensor | None]) -> QuantileMap:
        """Inverse of :meth:`to_dict`."""
        rates = data.get("rates")
        return cls(data["log_e_centres"], data["source"], data["target"], rates)  # type: ignore[arg-type]
