"""CaloINN's variables: per layer its log energy and the log energies of its voxels.

Every layer ``l`` of a voxel shower becomes ``1 + V`` numbers (``V`` voxels per layer):
``log(E_l / threshold)`` of the layer energy, then ``log(E / threshold)`` of each voxel —
hits at or above 0, empty voxels (and empty layers) uniform on a slab below the threshold
(:func:`~caloforge.models.voxel_features.log_energy_features`). The slab gives the empty
voxels a bounded density, which a normalizing flow's likelihood needs (a spike at one value
has none). Decoding cuts at :data:`~caloforge.models.voxel_features.EMPTY_CUT` and brings
each layer's hits to the layer energy with the power map of
:func:`~caloforge.models.voxel_features.voxels_from_log_energy` (every hit stays above the
threshold, the hit count and order are kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

from caloforge.models.voxel_features import (
    EMPTY_CUT,
    layer_energies,
    log_energy_features,
    voxels_from_log_energy,
)

__all__ = ["layer_features", "voxels_from_layer_features"]


def layer_features(
    voxels: Tensor, n_layers: int, threshold: float, gen: torch.Generator | None = None
) -> Tensor:
    """``(n, L, 1 + V)`` features of voxel showers ``(n, L · V)`` (MeV); ``gen`` draws the
    empty voxels' places on the slab (without it they sit at its centre).

    >>> v = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    >>> layer_features(v, 2, 1.0)[0].tolist()  # doctest: +ELLIPSIS
    [[0.693..., -3.0, 0.693...], [-3.0, -3.0, -3.0]]
    """
    n = len(voxels)
    e_layer = layer_energies(voxels, n_layers)
    y_layer = log_energy_features(e_layer, threshold, gen)
    y_vox = log_energy_features(voxels, threshold, gen).reshape(n, n_layers, -1)
    return torch.cat([y_layer.unsqueeze(-1), y_vox], dim=-1)


def voxels_from_layer_features(x: Tensor, threshold: float) -> Tensor:
    """Voxel energies ``(n, L · V)`` (MeV) of features ``(n, L, 1 + V)``: the inverse of
    :func:`layer_features` on the hits (empty voxels and layers decode to zero).

    >>> v = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    >>> voxels_from_layer_features(layer_features(v, 2, 1.0), 1.0).tolist()
    [[0.0, 2.0, 0.0, 0.0]]
    """
    y_layer = x[..., 0].double()
    e_layer = torch.where(y_layer >= EMPTY_CUT, threshold * torch.exp(y_layer.clamp_min(0.0)), 0.0)
    return voxels_from_log_energy(x[..., 1:].reshape(len(x), -1), e_layer, threshold).float()
