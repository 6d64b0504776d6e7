"""CaloINN's variables: per layer one number for its energy, then the log energies of its voxels.

Every layer ``l`` of a voxel shower becomes ``1 + V`` numbers (``V`` voxels per layer). The
voxels are ``log(E / threshold)`` — hits at or above 0, empty voxels uniform on a slab below
the threshold (:func:`~caloforge.models.voxel_features.log_energy_features`); the slab gives
them a bounded density, which a normalizing flow's likelihood needs (a spike at one value has
none). The layer's first number is, with ``layer_variable``:

* ``shares`` (the default; CaloFlow's and CaloINN's ``u`` variables): in layers
  ``0 … L-2`` the logit of the share of the energy still to be deposited that the layer takes,
  ``E_l / Σ_{j ≥ l} E_j``; in the last slot ``log(E_dep / E_inc)``. The total is then one
  variable instead of a sum of 45 noisy ones. Shares of exactly 0 (an empty layer, or nothing
  left) and 1 (the last layer with energy) lie on slabs beyond the logits of any real share
  (:data:`SHARE_SLABS`).
* ``log-energy``: ``log(E_l / threshold)`` of the layer energy, empty layers on the slab.

Decoding brings each layer's hits to the decoded layer energy with the power map of
:func:`~caloforge.models.voxel_features.voxels_from_log_energy` (every hit stays above the
threshold, the hit count and order are kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

from caloforge.models._placement import rand
from caloforge.models.voxel_features import (
    EMPTY_CUT,
    layer_energies,
    log_energy_features,
    voxels_from_log_energy,
)

__all__ = [
    "LAYER_VARIABLES",
    "SHARE_CUT",
    "SHARE_SLABS",
    "layer_energies_from_shares",
    "layer_features",
    "share_features",
    "voxels_from_layer_features",
]

#: What a layer's first feature is (see the module docstring).
LAYER_VARIABLES = ("shares", "log-energy")
#: Shares of exactly 0 and 1 are drawn uniformly on these logit ranges; a real share of a
#: layer above the threshold has a logit within ±13 (at most ~3 TeV deposited, 15 keV cells).
SHARE_SLABS = ((-20.0, -18.0), (18.0, 20.0))
#: Decoded logits beyond ±SHARE_CUT are shares of 0 and 1.
SHARE_CUT = 16.0
_EPS = 1e-7


def _slab(
    shape: torch.Size, slab: tuple[float, float], gen: torch.Generator | None, device: torch.device
) -> Tensor:
    lo, hi = slab
    if gen is None:
        return torch.full(shape, (lo + hi) / 2, dtype=torch.float64, device=device)
    return lo + (hi - lo) * rand(shape, gen, device, torch.float64)


def share_features(e_layer: Tensor, e_inc_mev: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """``(n, L)``: logits of the shares of layers ``0 … L-2``, then ``log(E_dep / E_inc)``.

    >>> f = share_features(torch.tensor([[2.0, 1.0, 1.0]]), torch.tensor([8.0]))
    >>> [round(v, 4) for v in f[0].tolist()]
    [0.0, 0.0, -0.6931]
    """
    e = e_layer.double()
    remaining = e.flip(-1).cumsum(-1).flip(-1)  # Σ_{j ≥ l} E_j
    share = torch.where(remaining[:, :-1] > 0, e[:, :-1] / remaining[:, :-1].clamp_min(1e-30), 0.0)
    p = share.clamp(_EPS, 1 - _EPS)
    y = torch.log(p) - torch.log1p(-p)
    y = torch.where(share <= 0, _slab(y.shape, SHARE_SLABS[0], gen, y.device), y)
    y = torch.where(share >= 1, _slab(y.shape, SHARE_SLABS[1], gen, y.device), y)
    total = torch.log(remaining[:, :1].clamp_min(1e-30) / e_inc_mev.double().unsqueeze(-1))
    return torch.cat([y, total], dim=-1).float()


def layer_energies_from_shares(f: Tensor, e_inc_mev: Tensor) -> Tensor:
    """Layer energies ``(n, L)`` (units of ``e_inc_mev``) of :func:`share_features` values.

    >>> e = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    >>> layer_energies_from_shares(share_features(e, torch.tensor([8.0])), torch.tensor([8.0])).tolist()
    [[2.0, 0.0, 1.0, 1.0]]
    """
    f = f.double()
    y = f[:, :-1]
    share = torch.where(y < -SHARE_CUT, 0.0, torch.where(y > SHARE_CUT, 1.0, torch.sigmoid(y)))
    share = torch.where((share > _EPS) & (share < 1 - _EPS), share, share.round())  # undo the clamp
    remaining = torch.exp(f[:, -1]) * e_inc_mev.double()
    out = []
    for i in range(share.shape[1]):
        layer = share[:, i] * remaining
        out.append(layer)
        remaining = remaining - layer
    out.append(remaining)
    return torch.stack(out, dim=-1).float()


def layer_features(
    voxels: Tensor,
    n_layers: int,
    threshold: float,
    gen: torch.Generator | None = None,
    e_inc_mev: Tensor | None = None,
    layer_variable: str = "shares",
) -> Tensor:
    """``(n, L, 1 + V)`` features of voxel showers ``(n, L · V)`` (MeV); ``gen`` draws the
    slabs' values (without it they sit at the slabs' centres). ``shares`` needs ``e_inc_mev``.

    >>> v = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    >>> layer_features(v, 2, 1.0, layer_variable="log-energy")[0].tolist()  # doctest: +ELLIPSIS
    [[0.693..., -3.0, 0.693...], [-3.0, -3.0, -3.0]]
    """
    n = len(voxels)
    e_layer = layer_energies(voxels, n_layers)
    if layer_variable == "shares":
        if e_inc_mev is None:
            raise ValueError("the shares layer variable needs the incident energies")
        first = share_features(e_layer, e_inc_mev, gen)
    elif layer_variable == "log-energy":
        first = log_energy_features(e_layer, threshold, gen)
    else:
        raise ValueError(
            f"unknown layer variable '{layer_variable}': use one of {', '.join(LAYER_VARIABLES)}"
        )
    y_vox = log_energy_features(voxels, threshold, gen).reshape(n, n_layers, -1)
    return torch.cat([first.unsqueeze(-1), y_vox], dim=-1)


def voxels_from_layer_features(
    x: Tensor, threshold: float, e_inc_mev: Tensor | None = None, layer_variable: str = "shares"
) -> Tensor:
    """Voxel energies ``(n, L · V)`` (MeV) of features ``(n, L, 1 + V)``: the inverse of
    :func:`layer_features` on the hits (empty voxels and layers decode to zero).

    >>> v = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    >>> x = layer_features(v, 2, 1.0, e_inc_mev=torch.tensor([100.0]))
    >>> [round(e, 4) for e in voxels_from_layer_features(x, 1.0, torch.tensor([100.0]))[0].tolist()]
    [0.0, 2.0, 0.0, 0.0]
    """
    if layer_variable == "shares":
        if e_inc_mev is None:
            raise ValueError("the shares layer variable needs the incident energies")
        e_layer = layer_energies_from_shares(x[..., 0], e_inc_mev).double()
    else:
        y_layer = x[..., 0].double()
        e_layer = torch.where(y_layer >= EMPTY_CUT, threshold * torch.exp(y_layer.clamp_min(0.0)), 0.0)
    return voxels_from_log_energy(x[..., 1:].reshape(len(x), -1), e_layer, threshold).float()
