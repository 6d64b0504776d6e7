"""L2LFlows preprocessing: layer energies and normalised cell images, dequantised.

Layer ``i`` of a shower has energy ``E_i`` (MeV, the sum of its hit cells, each at least the
threshold ``t``, or 0). Its flow variable is ``g_i = log(E_i' + t)`` with ``E_i' = E_i`` for a hit
layer and ``E_i' ~ U(0, t)`` for an empty one: empty layers land in ``[log t, log 2t)``, every hit
layer above it, so ``E_i = exp(g_i) - t`` below ``t`` means an empty layer. A cell ``x`` (MeV)
becomes ``y = log((x' + t) / max(E_i, t))`` with ``x' = x`` for a hit cell and ``x' ~ U(0, t)``
for an empty one: the layer image divided by its energy, in log space, the empty cells
dequantised below the threshold. Decoding inverts both, zeroes what falls below the threshold
and rescales each layer's hit cells to its energy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from caloforge.models._placement import rand


def layer_energies(images: Tensor) -> Tensor:
    """``(n, L)`` layer energies of images ``(n, L, H, W)``."""
    return images.flatten(2).sum(-1)


def energy_features(energies: Tensor, threshold: float, gen: torch.Generator | None = None) -> Tensor:
    """``g = log(E' + t)`` of layer energies ``(n, L)`` (MeV), empty layers dequantised in ``[0, t)``
    (at ``t / 2`` without ``gen``)."""
    empty = energies <= 0
    u = rand(energies.shape, gen, energies.device) if gen is not None else torch.full_like(energies, 0.5)
    return torch.log(torch.where(empty, u * threshold, energies) + threshold)


def energies_from_features(g: Tensor, threshold: float) -> Tensor:
    """Layer energies (MeV) of ``g``; those below the threshold are 0 (an empty layer)."""
    e = torch.exp(g) - threshold
    return torch.where(e >= threshold, e, 0.0)


def cell_features(
    images: Tensor, energies: Tensor, threshold: float, gen: torch.Generator | None = None
) -> Tensor:
    """``y`` ``(n, L, H, W)`` of images (MeV) with layer energies ``(n, L)``, empty cells
    dequantised in ``[0, t)`` (at ``t / 2`` without ``gen``)."""
    empty = images <= 0
    u = rand(images.shape, gen, images.device) if gen is not None else torch.full_like(images, 0.5)
    norm = energies.clamp_min(threshold)[..., None, None]
    return torch.log((torch.where(empty, u * threshold, images) + threshold) / norm)


def cells_from_features(y: Tensor, energies: Tensor, threshold: float) -> Tensor:
    """Images (MeV) ``(n, L, H, W)`` of ``y`` and layer energies ``(n, L)``: cells below the
    threshold zeroed, each layer's hit cells rescaled to its energy (a hit layer with no cell
    left gets its energy in its brightest cell), then thresholded again."""
    norm = energies.clamp_min(threshold)[..., None, None]
    x = torch.exp(y) * norm - threshold
    x = torch.where(x >= threshold, x, 0.0)
    total = x.flatten(2).sum(-1)
    flat = x.flatten(2)
    none_left = (total <= 0) & (energies > 0)
    if none_left.any():
        top = y.flatten(2).argmax(-1, keepdim=True)
        flat = torch.where(none_left[..., None], torch.zeros_like(flat).scatter(-1, top, 1.0), flat)
        total = flat.sum(-1)
    scale = torch.where(total > 0, energies / total.clamp_min(1e-30), 0.0)
    x = (flat * scale[..., None]).reshape(y.shape)
    return torch.where(x >= threshold, x, 0.0)


__all__ = [
    "cell_features",
    "cells_from_features",
    "energies_from_features",
    "energy_features",
    "layer_energies",
]
