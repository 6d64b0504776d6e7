"""CaloDREAM's variables: layer-energy shares ``u``, voxel fractions, the log-energy target and
the decoders back to voxel energies (SPEC 6.4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from caloforge.models._placement import rand
from caloforge.models.nn.quantile_map import QuantileMap
from caloforge.models.voxel_features import (  # noqa: F401 - re-exported: CaloDREAM's names
    EMPTY_CUT,
    EMPTY_SLAB,
    layer_energies,
    log_energy_features,
    voxels_from_log_energy,
)

EPS = 1e-6
#: What the full-space shape network learns (``CaloDreamConfig.shape_target``): ``logit-fraction``
#: (the paper's: logit of the voxel's share of its layer) or ``log-energy`` (log of the voxel
#: energy over the readout threshold, empty voxels spread over a slab below it: see
#: :func:`log_energy_features`).
SHAPE_TARGETS = ("logit-fraction", "log-energy")


# --------------------------------------------------------------------------- variables


def u_from_layer_energies(e_layer: Tensor, e_inc: Tensor) -> Tensor:
    """The ``L`` normalised variables ``u`` of layer energies ``(n, L)`` and incident energies ``(n,)``.

    Same units for both energies. A share of nothing (all energy already deposited) is 0.

    >>> e = torch.tensor([[2.0, 1.0, 1.0]])
    >>> u_from_layer_energies(e, torch.tensor([8.0])).tolist()
    [[0.5, 0.5, 0.5]]
    """
    e_layer = e_layer.double()
    remaining = e_layer.flip(-1).cumsum(-1).flip(-1)  # Σ_{j ≥ i} E_j
    total = remaining[:, 0]
    shares = torch.where(remaining[:, :-1] > 0, e_layer[:, :-1] / remaining[:, :-1].clamp_min(1e-30), 0.0)
    return torch.cat([(total / e_inc.double()).unsqueeze(-1), shares], dim=-1).float()


def layer_energies_from_u(u: Tensor, e_inc: Tensor) -> Tensor:
    """Inverse of :func:`u_from_layer_energies` (shares are clipped to [0, 1] first).

    >>> layer_energies_from_u(torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([8.0])).tolist()
    [[2.0, 1.0, 1.0]]
    """
    u = u.double()
    remaining = u[:, 0].clamp_min(0.0) * e_inc.double()
    out = []
    for i in range(1, u.shape[1]):
        e = u[:, i].clamp(0.0, 1.0) * remaining
        out.append(e)
        remaining = remaining - e
    out.append(remaining)
    return torch.stack(out, dim=-1).float()


def _logit(p: Tensor) -> Tensor:
    p = EPS + (1 - 2 * EPS) * p
    return torch.log(p) - torch.log1p(-p)


def _expit(x: Tensor) -> Tensor:
    return ((torch.sigmoid(x) - EPS) / (1 - 2 * EPS)).clamp(0.0, 1.0)


def fractions(voxels: Tensor, n_layers: int) -> Tensor:
    """Voxel energies divided by their layer's energy (0 in an empty layer), same shape."""
    v = voxels.reshape(len(voxels), n_layers, -1)
    e = v.sum(-1, keepdim=True)
    return torch.where(e > 0, v / e.clamp_min(1e-30), 0.0).reshape(voxels.shape)


def dequantize_fractions(frac: Tensor, e_layer: Tensor, threshold: float, gen: torch.Generator) -> Tensor:
    """Empty voxels of non-empty layers get a fraction ``U(0, 1) · threshold / E_layer``.

    These voxels lie below the threshold by construction, so :func:`voxels_from_fractions`
    (which applies it) maps them back to zero.
    """
    n, n_layers = e_layer.shape
    f = frac.reshape(n, n_layers, -1)
    scale = (threshold / e_layer.clamp_min(1e-30)).unsqueeze(-1)
    noise = rand(f.shape, gen, f.device) * scale
    f = torch.where((f == 0) & (e_layer >= threshold).unsqueeze(-1), noise, f)
    return f.reshape(frac.shape)


def voxels_from_fractions(frac: Tensor, e_layer: Tensor, threshold: float) -> Tensor:
    """Voxel energies ``fraction × layer energy``, thresholded, then rescaled to keep each layer's energy.

    The threshold acts before any renormalisation, so the sub-threshold fractions of
    :func:`dequantize_fractions` vanish however much of the layer they add up to. A layer
    with energy above the threshold but no voxel above it puts all of it in its largest voxel,
    so layer energies (from the energy network) are always kept.
    """
    n, n_layers = e_layer.shape
    v = frac.reshape(n, n_layers, -1).clamp_min(0.0) * e_layer.unsqueeze(-1)
    target = e_layer.unsqueeze(-1)
    # A layer whose voxels all fall under the threshold keeps its energy in its largest voxel.
    top = torch.zeros_like(v).scatter_(-1, v.argmax(-1, keepdim=True), 1.0)
    for _ in range(3):  # scaling down can push a voxel under the threshold again: repeat
        v = torch.where(v >= threshold, v, 0.0)
        v = torch.where((v.sum(-1, keepdim=True) > 0) | (target < threshold), v, top * target)
        kept = v.sum(-1, keepdim=True)
        v = torch.where(kept > 0, v * (target / kept.clamp_min(1e-30)), 0.0)
    return torch.where(v >= threshold, v, 0.0).reshape(n, -1)


def hit_log_fractions(y: Tensor, e_layer: Tensor, threshold: float, grid: tuple[int, int, int]) -> Tensor:
    """``log(E / E_layer)`` of the hits in :func:`log_energy_features` values ``y`` ``(n, n_voxels)``
    (NaN for empty voxels), grouped by layer and radial ring: ``(n, layers · rings, angles)``.

    Values between the empty cut and 0 are hits at the threshold, as in decoding; a layer
    with less than the threshold has no hits (decoding empties it).
    """
    n_layers, n_alpha, n_radial = grid
    y = y.double().reshape(-1, n_layers, n_alpha, n_radial).transpose(2, 3)
    log_layer = torch.log(e_layer.double().clamp_min(threshold) / threshold).view(-1, n_layers, 1, 1)
    filled = (e_layer >= threshold).view(-1, n_layers, 1, 1)
    v = torch.where((y >= EMPTY_CUT) & filled, y.clamp_min(0.0) - log_layer, math.nan)
    return v.reshape(-1, n_layers * n_radial, n_alpha)


def calibrated_voxels(
    y: Tensor,
    e_layer: Tensor,
    e_inc: Tensor,
    calibration: QuantileMap,
    grid: tuple[int, int, int],
    threshold: float,
) -> Tensor:
    """Voxel energies (MeV) from :func:`log_energy_features` values ``y`` with calibrated hits.

    Each hit's :func:`hit_log_fractions` value goes through ``calibration`` (per layer and
    ring, at the shower's incident energy ``e_inc`` in GeV); the hits then share their layer's
    energy ``e_layer`` in proportion to ``exp`` of the calibrated values
    (:func:`voxels_from_fractions`: thresholded and rescaled so that each layer keeps its
    energy). A layer without hits puts its energy in its largest voxel.
    """
    n_layers, n_alpha, n_radial = grid
    n = len(y)
    v = calibration(hit_log_fractions(y, e_layer, threshold, grid), torch.log(e_inc.double()))
    v = v.reshape(n, n_layers, n_radial, n_alpha).transpose(2, 3).reshape(n, n_layers, -1)
    frac = torch.nan_to_num(torch.softmax(torch.nan_to_num(v, nan=-math.inf), -1))  # no hits: 0
    top = torch.zeros_like(frac).scatter_(-1, y.reshape(n, n_layers, -1).argmax(-1, keepdim=True), 1.0)
    frac = torch.where(frac.sum(-1, keepdim=True) > 0, frac, top)
    return voxels_from_fractions(frac.reshape(n, -1).float(), e_layer, threshold)
