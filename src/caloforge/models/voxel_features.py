"""Voxel-shower variables that voxel model families share: layer energies and the
log-energy representation (``log(E / threshold)`` of hit voxels, empty voxels spread over a
slab below the threshold) with its decoder back to voxel energies that keeps given layer
energies (SPEC 6.4, 6.8)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from caloforge.detector import CellGrid, Detector, PolarGrid
from caloforge.io import open_showers
from caloforge.models._placement import rand
from caloforge.models.rows import DiskRows, shower_rows

#: What to tell the owner of a file an image model cannot train on.
CONVERT_HINT = "convert it with `caloforge convert --detector ild-ecal-30`"

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
        empty = torch.full(voxels.shape, (lo + hi) / 2, device=voxels.device)
    else:
        empty = lo + (hi - lo) * rand(voxels.shape, gen, voxels.device)
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
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(x.shape[-1], device=x.device).expand_as(order)
    )
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


@dataclass
class VoxelData:
    """A voxel or cell-image file in memory: detector, incident energies (GeV), voxels (MeV,
    flattened) and the energy range the file says it was simulated over."""

    detector: Detector
    energy: Tensor
    voxels: Tensor | DiskRows  # rows[idx] either way
    energy_range: tuple[float, float]


def load_voxel_file(
    path: str | Path,
    readout: str,
    model: str,
    max_showers: int | None = None,
    min_showers: int = 20,
    in_memory: bool | None = None,
) -> VoxelData:
    """The first ``max_showers`` showers of a voxel file whose readout is ``readout``
    (``"polar"``: CaloChallenge-like voxels, ``"cells"``: cell images), read in chunks: into
    memory, or for a file too large for it (``in_memory`` None) into rows read from disk a
    batch at a time (:func:`~caloforge.models.rows.shower_rows`); a file of another kind or
    readout, an empty file or one with fewer than ``min_showers`` showers is refused in one
    line naming ``model`` (the reader refuses non-finite values itself)."""
    path = Path(path)
    with open_showers(path) as f:
        det = f.detector
        polar = isinstance(det.readout, PolarGrid)
        if readout == "polar" and (f.kind != "voxels" or not polar):
            what = (
                f"{f.kind}"
                if f.kind != "voxels"
                else f"voxels of detector '{det.name}' without a polar readout"
            )
            raise ValueError(f"'{path}' holds {what}: {model} trains on voxel files (simulate --voxel-out)")
        if readout == "cells" and (f.kind != "voxels" or not isinstance(det.readout, CellGrid)):
            what = (
                f"{f.kind} showers"
                if f.kind != "voxels"
                else f"{det.readout.kind} voxels of detector '{det.name}'"
            )
            raise ValueError(
                f"'{path}' holds {what}, not cell images; {model} trains on images: {CONVERT_HINT}"
            )
        attrs = dict(f.attrs)
        n = len(f) if max_showers is None else min(len(f), max_showers)
        energy = np.asarray(f.read_energy()[:n], np.float32)
    if n == 0:
        raise ValueError(f"'{path}' holds no showers")
    if n < min_showers:
        raise ValueError(f"'{path}' holds {n} showers: at least {min_showers} are needed")

    def chunks() -> Iterator[np.ndarray]:
        with open_showers(path) as f:
            for chunk in f.iter_chunks(1000, stop=n):
                yield chunk.voxels

    voxels = shower_rows(path, "voxels", n, det.n_channels, chunks, in_memory)
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    return VoxelData(det, torch.from_numpy(energy), voxels, (lo, hi))  # type: ignore[arg-type]
