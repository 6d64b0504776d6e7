"""Voxel-shower variables that voxel model families share: layer energies and the
log-energy representation (``log(E / threshold)`` of hit voxels, empty voxels spread over a
slab below the threshold) with its decoder back to voxel energies that keeps given layer
energies (SPEC 6.4, 6.8)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Empty voxels of the ``log-energy`` target lie uniformly in this range of ``log(E / threshold)``;
#: generated values under :data:`EMPTY_CUT` are empty, the rest hits (which start at 0).
EMPTY_SLAB = (-4.0, -2.0)
EMPTY_CUT = -1.0


def layer_energies(voxels: Tensor, n_layers: int) -> Tensor:
    """Energy per layer ``(n, n_layers)`` of flattened voxel showers ``(n, n_layers · per_layer)``."""
    return voxels.reshape(len(voxels), n_layers, -1).sum(-1)


def log_energy_features(voxels: Tensor, threshold: float, gen: torch.Generator | None = None) -> Tensor:
    """``log(E / threshold)`` of hit voxels (at least 0); empty ones uniform in :data:`EMPTY_SLAB`.

    A spike of empty voxels is hard for a flow to learn and its edge sits right under the
    smallest hits; a slab of finite width, separated from the hits by a gap, leaves the
    network a margin: :func:`voxels_from_log_energy` cuts in the middle of the gap.
    Without ``gen`` empty voxels sit at the slab's centre.

    >>> [round(v, 4) for v in log_energy_features(torch.tensor([[0.0, 1.0, 2.718281828]]), 1.0)[0].tolist()]
    [-3.0, 0.0, 1.0]
    """
    hit = voxels >= threshold
    lo, hi = EMPTY_SLAB
    if gen is None:
        empty = torch.full(voxels.shape, (lo + hi) / 2)
    else:
        empty = lo + (hi - lo) * torch.rand(voxels.shape, generator=gen)
    return torch.where(hit, torch.log(voxels.clamp_min(threshold) / threshold), empty)


def voxels_from_log_energy(x: Tensor, e_layer: Tensor, threshold: float, iterations: int = 20) -> Tensor:
    """Voxel energies from :func:`log_energy_features` values, each layer holding ``e_layer``.

    Values under :data:`EMPTY_CUT` are empty, the rest are hits (values between the cut and 0
    count as 0: at the threshold). Each layer's hits are then brought to the layer energy
    given by the energy network with a **power** map ``E = threshold · (E_gen / threshold)^α``
    (``α ≥ 0`` per layer, by Newton's method): it keeps every hit at or above the threshold
    and the order of the hits, so the number of hits the network made survives, whereas scaling
    all energies by one factor would push the small hits under the threshold whenever the
    network's energies overshoot (α < 1 also narrows a spread the network made too wide). A
    layer with less energy than its hits need (threshold each) keeps its largest hits; one
    with energy but no hit puts it in its largest voxel; one under the threshold is empty.
    """
    n, n_layers = e_layer.shape
    x = x.reshape(n, n_layers, -1).double()
    units = (e_layer.double() / threshold).unsqueeze(-1)  # layer energy in thresholds
    y = x.clamp_min(0.0)
    hit = x >= EMPTY_CUT
    # at most floor(units) hits: keep the largest
    keep = torch.minimum(hit.sum(-1, keepdim=True), units.floor().long())
    order = torch.argsort(torch.where(hit, y, -1.0), dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1]).expand_as(order))
    hit = hit & (rank < keep)

    y_hits = torch.where(hit, y, -math.inf)  # exp(α · -inf) = 0: only hits count (α > 0)
    log_units = units.clamp_min(1.0).log()
    # α with log Σ exp(α y) = log(units): the left side is convex and increasing in α, so
    # Newton's method started where it is too large converges from above, in a few steps.
    alpha = torch.ones_like(units)
    spread = y_hits.amax(-1, keepdim=True) > 0  # else (no hits, or all at the threshold) α is moot
    for _ in range(30):  # start: double α until the sum reaches the layer energy
        short = (torch.logsumexp(alpha * y_hits, -1, keepdim=True) < log_units) & spread
        if not short.any():
            break
        alpha = torch.where(short, 2 * alpha, alpha)
    for _ in range(iterations):
        w = torch.softmax(alpha * y_hits, -1)  # NaN for a layer without hits: handled below
        slope = torch.nan_to_num((w * y).sum(-1, keepdim=True))
        excess = torch.nan_to_num(torch.logsumexp(alpha * y_hits, -1, keepdim=True) - log_units)
        step = torch.where((slope > 0) & (excess > 0), excess / slope.clamp_min(1e-300), 0.0)
        alpha = alpha - step
        if step.abs().max() < 1e-12:
            break
    v = torch.where(hit, torch.exp(alpha * y), 0.0)
    # From above the sum is at least the layer energy (or, when every hit sits at the threshold,
    # the hits alone): the exact scaling can only move a hit under the threshold by rounding.
    v = v * (units / v.sum(-1, keepdim=True).clamp_min(1e-300))
    v = torch.where(hit, v.clamp_min(1.0), 0.0)
    top = torch.zeros_like(v).scatter_(-1, x.argmax(-1, keepdim=True), 1.0) * units
    v = torch.where((keep == 0) & (units >= 1), top, v)
    return (threshold * torch.where(units >= 1, v, 0.0)).reshape(n, -1).to(e_layer.dtype)


def log_energy_condition(e_inc_gev: Tensor, energy_range: tuple[float, float]) -> Tensor:
    """``(n, 1)``: log incident energy mapped to [-1, 1] over the training ``energy_range``.

    >>> log_energy_condition(torch.tensor([1.0, 10.0, 100.0]), (1.0, 100.0)).flatten().tolist()
    [-1.0, 0.0, 1.0]
    """
    lo, hi = (math.log(e) for e in energy_range)
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
    return ((torch.log(e_inc_gev.double()) - mid) / half).float().unsqueeze(-1)
