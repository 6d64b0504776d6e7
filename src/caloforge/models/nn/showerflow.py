"""The Shower Flow of CaloClouds II: a conditional normalising flow over per-shower summaries.

Per shower (SPEC 6.1) the flow learns the number of points, the visible energy, the
per-layer point and energy fractions and the centre of gravity. It learns them as ``2 L + 2``
unconstrained features (``L`` layers), standardised with training-set mean and std:

====================  =========================================================================
feature               transformation
====================  =========================================================================
point counts n_l      ``log(n_l + u_l)``, ``u_l ~ U(0, 1)``: dequantised, so empty layers are no
                      spike; back: ``n_l = floor(exp(.))``
energies e_l          ``log(e_l / E_inc + eps u_l)`` (MeV per GeV, ``eps = 3e-3``: a tenth of a
                      typical point): empty layers become a smooth tail below ``log eps``
CoG x, y              energy-weighted mean of the points, mm
====================  =========================================================================

``N = sum n_l``, ``E_vis = sum e_l``, the fractions and the CoG depth follow from the layers.
(Learning N, E_vis, fractions that sum to one and a CoG depth that is their weighted mean
as separate features, as the 65 features of the paper do, gives the flow exact constraints
between features: a degenerate density whose likelihood rewards sharpening the constraint
over getting the spreads right — in tests it under-dispersed E_vis and the CoG depth by
20 %.)

Logarithms because fractions and energies span orders of magnitude between the first,
peak and last layers. The flow is a stack of zuko masked transforms with monotonic
rational-quadratic splines, each with its own fixed random feature order: with ``passes=2``
(the default) they are coupling layers — half of the features, chosen at random, are
transformed given the other half, so sampling costs two network calls per transform — with
``passes=None`` fully autoregressive (more flexible, but ``2 L + 5`` calls per transform when
sampling). The context is ``log(E_inc / 50 GeV)``.

>>> import numpy as np, torch
>>> from caloforge.io import PointShowers
>>> pts = np.array([[[0.0, 1.0, 0.5, 2.0], [1.0, 0.0, 2.5, 1.0], [0, 0, 0, 0]]], np.float32)
>>> stats = shower_stats(PointShowers([10.0], pts), n_layers=3)
>>> stats.n_points.tolist(), stats.layer_counts.tolist(), [round(v, 3) for v in stats.cog[0].tolist()]
([2.0], [[1.0, 0.0, 1.0]], [0.333, 0.667, 0.667])
>>> flow = ShowerFlow(n_layers=3, hidden=(16,), transforms=1)
>>> flow.log_prob(flow.features_from_stats(stats, torch.tensor([10.0])), torch.tensor([10.0])).shape
torch.Size([1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from zuko.distributions import DiagNormal
from zuko.flows import Flow, MaskedAutoregressiveTransform
from zuko.lazy import UnconditionalDistribution
from zuko.transforms import MonotonicRQSTransform

from caloforge.io import PointShowers
from caloforge.models._placement import randn

__all__ = [
    "FlowSample",
    "ShowerFlow",
    "ShowerStats",
    "largest_remainder",
    "layer_energies",
    "shower_stats",
    "spline_flow",
]

#: Offset of the layer-energy logarithm, MeV per GeV of incident energy (about 0.1 of a point).
ENERGY_EPS = 3e-3


@dataclass
class ShowerStats:
    """Per-shower summaries: ``n_points`` ``(n,)``, ``layer_counts`` and ``layer_energy`` [MeV]
    ``(n, L)``, ``cog`` ``(n, 3)`` (x mm, y mm, layer index), all float32 tensors."""

    n_points: Tensor
    layer_counts: Tensor
    layer_energy: Tensor
    cog: Tensor

    def __len__(self) -> int:
        return len(self.n_points)

    @property
    def e_vis(self) -> Tensor:
        """Visible energy per shower, MeV."""
        return self.layer_energy.sum(dim=1)

    def __getitem__(self, index: Tensor | slice) -> ShowerStats:
        return ShowerStats(
            self.n_points[index], self.layer_counts[index], self.layer_energy[index], self.cog[index]
        )

    @classmethod
    def concatenate(cls, parts: list[ShowerStats]) -> ShowerStats:
        """Join the stats of consecutive batches."""
        return cls(
            *(
                torch.cat([getattr(p, f) for p in parts])
                for f in ("n_points", "layer_counts", "layer_energy", "cog")
            )
        )


def shower_stats(showers: PointShowers, n_layers: int) -> ShowerStats:
    """The per-shower summaries of a batch (vectorised; points outside ``[0, n_layers)`` are
    counted in the nearest layer)."""
    mask = showers.mask
    n = len(showers)
    shower = np.nonzero(mask)[0]
    pts = showers.points[mask].astype(np.float64)
    layer = np.clip(np.floor(pts[:, 2]).astype(np.int64), 0, n_layers - 1)
    key = shower * n_layers + layer
    counts = np.bincount(key, minlength=n * n_layers).reshape(n, n_layers)
    energy = np.bincount(key, weights=pts[:, 3], minlength=n * n_layers).reshape(n, n_layers)
    e_vis = energy.sum(axis=1)
    safe = np.where(e_vis > 0, e_vis, 1.0)
    cog = np.column_stack(
        [
            np.bincount(shower, weights=pts[:, 3] * v, minlength=n) / safe
            for v in (pts[:, 0], pts[:, 1], layer)
        ]
    )

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(a, np.float32))

    return ShowerStats(t(counts.sum(axis=1)), t(counts), t(energy), t(cog))


def largest_remainder(fractions: Tensor, totals: Tensor) -> Tensor:
    """Integer counts ``(n, L)`` proportional to ``fractions`` that sum exactly to ``totals`` ``(n,)``.

    Each row gets ``floor(f N)``, then the rows' largest remainders get one more.

    >>> largest_remainder(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([4])).tolist()
    [[2, 1, 1]]
    """
    f = fractions.double().clamp_min(0)
    f = f / f.sum(dim=1, keepdim=True).clamp_min(1e-300)
    exact = f * totals.double().unsqueeze(1)
    base = exact.floor()
    missing = (totals.double() - base.sum(dim=1)).long()
    # Rank of each remainder in a stable descending sort (ties: lower layer first), by comparisons:
    # the same as argsort(descending=True, stable=True), and traceable for ONNX export.
    rem = exact - base
    layer = torch.arange(f.shape[1], device=f.device)
    ahead = (rem.unsqueeze(1) > rem.unsqueeze(2)) | (
        (rem.unsqueeze(1) == rem.unsqueeze(2)) & (layer.view(1, 1, -1) < layer.view(1, -1, 1))
    )
    rank = ahead.sum(dim=2)
    return (base.long() + (rank < missing.unsqueeze(1)).long()).to(torch.int64)


@dataclass
class FlowSample:
    """What :meth:`ShowerFlow.sample` returns, per shower (energies in MeV).

    ``point_fractions`` and ``energy_weights`` (positive, unnormalised) are kept so that the
    per-layer counts and energies can be redone for a calibrated number of points.
    """

    n_points: Tensor  # (n,) int64, 1..max_points
    e_vis: Tensor  # (n,)
    point_fractions: Tensor  # (n, L), sum 1
    energy_weights: Tensor  # (n, L) > 0
    layer_counts: Tensor  # (n, L) int64, sum n_points
    layer_energy: Tensor  # (n, L), sum e_vis, 0 where no points
    cog: Tensor  # (n, 3): x mm, y mm, layer index


def layer_energies(energy_weights: Tensor, layer_counts: Tensor, e_vis: Tensor) -> Tensor:
    """Share ``e_vis`` over the layers that hold points, in proportion to ``energy_weights``."""
    w = energy_weights * (layer_counts > 0)
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-30) * e_vis.unsqueeze(1)


def spline_flow(
    features: int,
    context: int,
    transforms: int,
    hidden: tuple[int, ...],
    bins: int = 8,
    passes: int | None = 2,
    bound: float = 10.0,
    order_seed: int = 0,
) -> Flow:
    """A conditional spline flow: ``transforms`` masked spline transforms over a standard normal.

    Each transform gets a random feature order drawn from ``order_seed`` (reproducible, so
    a model rebuilt from its config has the same masks); ``passes=2`` makes coupling layers.
    The splines act on ``[-bound, bound]`` (identity outside): wider than zuko's default 5
    because standardised log-counts of the first and last layers have tails beyond 5 sigma.
    """
    g = torch.Generator().manual_seed(order_seed)
    layers = [
        MaskedAutoregressiveTransform(
            features=features,
            context=context,
            passes=passes,
            order=torch.randperm(features, generator=g),
            univariate=partial(MonotonicRQSTransform, bound=bound, slope=1e-3),
            shapes=[(bins,), (bins,), (bins - 1,)],
            hidden_features=tuple(hidden),
        )
        for _ in range(transforms)
    ]
    base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features), buffer=True)
    return Flow(layers, base)


class ShowerFlow(nn.Module):
    """Conditional spline flow over the ``2 n_layers + 2`` shower features (see :func:`spline_flow`).

    ``hidden`` are the MLP widths of each transform. Call :meth:`fit_standardisation` on
    training features before training.
    """

    def __init__(
        self,
        n_layers: int = 30,
        hidden: tuple[int, ...] = (128, 128),
        transforms: int = 6,
        bins: int = 8,
        passes: int | None = 2,
        bound: float = 10.0,
        max_points: int = 6000,
    ) -> None:
        super().__init__()
        self.n_layers = int(n_layers)
        self.max_points = int(max_points)
        self.n_features = 2 * self.n_layers + 2
        #: The constructor's arguments (JSON-able): ``ShowerFlow(**settings)`` rebuilds it.
        self.settings = {
            "n_layers": self.n_layers, "hidden": [int(h) for h in hidden], "transforms": int(transforms),
            "bins": int(bins), "passes": passes, "bound": float(bound), "max_points": self.max_points,
        }  # fmt: skip
        self.flow = spline_flow(self.n_features, 1, transforms, hidden, bins, passes, bound)
        self.register_buffer("feature_mean", torch.zeros(self.n_features))
        self.register_buffer("feature_std", torch.ones(self.n_features))

    @staticmethod
    def context(energy: Tensor) -> Tensor:
        """Conditioning ``(n, 1)`` from incident energies in GeV."""
        return torch.log(energy.to(torch.float32) / 50.0).unsqueeze(-1)

    def features_from_stats(
        self, stats: ShowerStats, energy: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Features ``(n, 2 L + 2)`` (see the module docstring) with fresh dequantisation noise."""
        n, n_layers = stats.layer_counts.shape
        # rand() can return exactly 0 (about once in 1e7 draws): log(0 + 0) would poison training.
        u = torch.rand(n, 2 * n_layers, generator=generator).clamp_min_(1e-6)
        per_gev = stats.layer_energy / energy.to(torch.float32).unsqueeze(1)
        return torch.cat(
            [
                torch.log(stats.layer_counts + u[:, :n_layers]),
                torch.log(per_gev + ENERGY_EPS * u[:, n_layers:]),
                stats.cog[:, :2],
            ],
            dim=1,
        )

    def features(self, showers: PointShowers, generator: torch.Generator | None = None) -> Tensor:
        """Features of a batch of showers (see :meth:`features_from_stats`)."""
        energy = torch.as_tensor(showers.energy, dtype=torch.float32)
        return self.features_from_stats(shower_stats(showers, self.n_layers), energy, generator)

    @torch.no_grad()
    def fit_standardisation(self, features: Tensor) -> None:
        """Set the feature mean and standard deviation from training features."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).nan_to_num(1.0).clamp_min(1e-3))

    def log_prob(self, features: Tensor, energy: Tensor) -> Tensor:
        """Log-density ``(n,)`` of features given incident energies in GeV (in feature space)."""
        z = (features - self.feature_mean) / self.feature_std
        return self.flow(self.context(energy)).log_prob(z) - self.feature_std.log().sum()

    @torch.no_grad()
    def features_from_noise(self, energy: Tensor, noise: Tensor) -> Tensor:
        """Raw features ``(n, 2 L + 2)`` for incident energies ``energy`` [GeV] from standard normal
        base noise ``noise`` ``(n, 2 L + 2)``: the flow's inverse pass (deterministic)."""
        dist = self.flow(self.context(energy))
        return dist.transform.inv(noise) * self.feature_std + self.feature_mean

    @torch.no_grad()
    def sample_features(self, energy: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw features ``(n, 2 L + 2)`` for incident energies ``energy`` [GeV], on their device
        (the base noise drawn on the host with ``generator``)."""
        eps = randn((len(energy), self.n_features), generator, energy.device)
        return self.features_from_noise(energy, eps)

    @torch.no_grad()
    def sample(self, energy: Tensor, generator: torch.Generator | None = None) -> FlowSample:
        """Decode sampled features into per-shower quantities (see :class:`FlowSample`)."""
        return self.decode(self.sample_features(energy, generator), energy)

    @torch.no_grad()
    def sample_from_noise(self, energy: Tensor, noise: Tensor) -> FlowSample:
        """:meth:`sample` with the base noise given (``(n, 2 L + 2)``, standard normal) instead of
        drawn: ``sample(e, g)`` equals ``sample_from_noise(e, torch.randn(n, F, generator=g))``."""
        return self.decode(self.features_from_noise(energy, noise), energy)

    def decode(self, features: Tensor, energy: Tensor) -> FlowSample:
        """Per-shower quantities (see :class:`FlowSample`) from raw features ``(n, 2 L + 2)``.

        Only fixed-shape tensor operations, so that it can be traced for export.
        """
        feat = features.double()
        n_layers = self.n_layers
        # exp() of a wild tail sample could overflow; clamp far beyond any real shower.
        counts = feat[:, :n_layers].clamp(max=math.log(self.max_points + 1)).exp().floor()
        # A shower always has a point somewhere: if every layer rounds to empty, use the largest.
        empty = counts.sum(dim=1, keepdim=True) == 0
        largest = torch.nn.functional.one_hot(feat[:, :n_layers].argmax(dim=1), n_layers).to(counts.dtype)
        counts = torch.where(empty, largest, counts)
        frac = counts / counts.sum(dim=1, keepdim=True)
        n_points = counts.sum(dim=1).clamp(max=self.max_points).to(torch.int64)
        counts = largest_remainder(frac, n_points)  # exact unless N was capped
        # Undo the mean of the dequantisation offset; keep every layer strictly positive.
        per_gev = (feat[:, n_layers : 2 * n_layers].clamp(max=10).exp() - ENERGY_EPS / 2).clamp_min(
            ENERGY_EPS / 20
        )
        weights = per_gev * energy.double().unsqueeze(1)
        layer_e = weights * (counts > 0)
        e_vis = layer_e.sum(dim=1)
        cog_z = (layer_e * torch.arange(n_layers, dtype=layer_e.dtype, device=layer_e.device)).sum(
            dim=1
        ) / e_vis
        return FlowSample(
            n_points=n_points,
            e_vis=e_vis.float(),
            point_fractions=frac.float(),
            energy_weights=weights.float(),
            layer_counts=counts,
            layer_energy=layer_e.float(),
            cog=torch.cat([feat[:, 2 * n_layers :], cog_z.unsqueeze(1)], dim=1).float(),
        )
