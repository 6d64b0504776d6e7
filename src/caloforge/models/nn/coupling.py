"""Coupling blocks for normalizing flows over layered calorimeter features.

A :class:`CouplingFlow` is a stack of :class:`Coupling` blocks over a tensor ``(n, L, F)``
(``L`` calorimeter layers, ``F`` features per layer). Each block leaves unchanged the
features its boolean ``mask`` (over the ``F`` features, the same in every layer) marks and
transforms the others elementwise, with parameters that a conditioner computes from the
unchanged ones and a condition vector: a monotonic rational-quadratic spline (Durkan et al.
2019; zuko's :class:`~zuko.transforms.MonotonicRQSTransform`, the identity outside
``[-bound, bound]``) or an affine map. Blocks come in pairs, a random half-mask and its
complement (:func:`paired_masks`), so every feature is transformed. The conditioner
(:class:`LayerConvConditioner`) is a stack of 1-d convolutions along the layers, shared by
all layers (a learned per-layer offset tells them apart); a dense MLP
(:class:`DenseConditioner`) sees all layers at once but costs ``L · F`` outputs per hidden
unit. Conditioners start at zero output, so a new flow is the identity.

>>> flow = CouplingFlow((3, 4), n_cond=1, n_blocks=2, hidden=8, kernel=3, depth=1)
>>> x, c = torch.randn(5, 3, 4), torch.randn(5, 1)
>>> z, ladj = flow(x, c)
>>> bool(torch.allclose(z, x)), ladj.shape
(True, torch.Size([5]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

__all__ = [
    "CONDITIONERS",
    "COUPLINGS",
    "Coupling",
    "CouplingFlow",
    "DenseConditioner",
    "LayerConvConditioner",
    "gaussian_log_prob",
    "paired_masks",
]

#: Elementwise transforms of a block: ``rqs`` (rational-quadratic spline) or ``affine``.
COUPLINGS = ("rqs", "affine")
#: Conditioner networks: ``conv`` (:class:`LayerConvConditioner`) or ``dense`` (:class:`DenseConditioner`).
CONDITIONERS = ("conv", "dense")
#: Affine blocks' log-scales are bounded softly to ``±AFFINE_CLAMP``.
AFFINE_CLAMP = 2.0


class LayerConvConditioner(nn.Module):
    """``(n, L, F_in)`` features and an ``(n, C)`` condition → ``(n, L, F_out, P)`` parameters.

    ``depth`` convolutions of width ``kernel`` along the layers (``hidden`` channels, SiLU,
    a learned offset per layer after the first), then a 1 × 1 convolution to ``F_out · P``
    channels, initialised at zero.
    """

    def __init__(
        self,
        n_layers: int,
        features: tuple[int, int],
        n_params: int,
        n_cond: int,
        hidden: int,
        kernel: int,
        depth: int,
    ) -> None:
        super().__init__()
        f_in, self.f_out = features
        self.n_params = n_params
        pad = kernel // 2
        self.first = nn.Conv1d(f_in + n_cond, hidden, kernel, padding=pad)
        self.position = nn.Parameter(torch.zeros(hidden, n_layers))
        self.rest = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel, padding=pad) for _ in range(depth - 1))
        self.out = nn.Conv1d(hidden, self.f_out * n_params, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        n, n_layers, _ = x.shape
        h = torch.cat([x.transpose(1, 2), c.unsqueeze(-1).expand(-1, -1, n_layers)], dim=1)
        h = F.silu(self.first(h) + self.position)
        for conv in self.rest:
            h = F.silu(conv(h))
        return self.out(h).reshape(n, self.f_out, self.n_params, n_layers).permute(0, 3, 1, 2)


class DenseConditioner(nn.Module):
    """The contract of :class:`LayerConvConditioner` with an MLP over all ``L · F_in`` features."""

    def __init__(
        self, n_layers: int, features: tuple[int, int], n_params: int, n_cond: int, hidden: int, depth: int
    ) -> None:
        super().__init__()
        f_in, f_out = features
        self.out_shape = (n_layers, f_out, n_params)
        layers: list[nn.Module] = [nn.Linear(n_layers * f_in + n_cond, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, n_layers * f_out * n_params)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.net(torch.cat([x.flatten(1), c], dim=1))
        return self.out(h).reshape(len(x), *self.out_shape)


class Coupling(nn.Module):
    """One coupling block over ``(n, L, F)``: the features (last axis) where ``mask`` is True,
    in every layer, condition the transform of the others."""

    def __init__(
        self, mask: Tensor, conditioner: nn.Module, kind: str = "rqs", bins: int = 8, bound: float = 5.0
    ) -> None:
        super().__init__()
        if kind not in COUPLINGS:
            raise ValueError(f"unknown coupling '{kind}': use one of {', '.join(COUPLINGS)}")
        mask = mask.bool()
        self.register_buffer("kept", torch.nonzero(mask).flatten())
        self.register_buffer("moved", torch.nonzero(~mask).flatten())
        self.conditioner, self.kind, self.bins, self.bound = conditioner, kind, bins, bound

    @staticmethod
    def n_params(kind: str, bins: int) -> int:
        """Parameters per transformed feature: ``3 · bins − 1`` for a spline, 2 for an affine map."""
        return 3 * bins - 1 if kind == "rqs" else 2

    def _transform(self, x: Tensor, c: Tensor) -> MonotonicRQSTransform | tuple[Tensor, Tensor]:
        """The elementwise map of the moved features, from the kept ones."""
        p = self.conditioner(x.index_select(-1, self.kept), c)
        if self.kind == "rqs":
            k = self.bins
            return MonotonicRQSTransform(p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], bound=self.bound)
        shift, raw = p[..., 0], p[..., 1]
        return shift, AFFINE_CLAMP * torch.tanh(raw / AFFINE_CLAMP)

    def _put(self, x: Tensor, moved: Tensor) -> Tensor:
        return x.index_copy(-1, self.moved, moved)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log |det ∂y/∂x|)`` per sample."""
        t = self._transform(x, c)
        u = x.index_select(-1, self.moved)
        if isinstance(t, tuple):
            shift, log_scale = t
            v, ladj = u * torch.exp(log_scale) + shift, log_scale
        else:
            v, ladj = t.call_and_ladj(u)
        return self._put(x, v), ladj.flatten(1).sum(-1)

    def inverse(self, y: Tensor, c: Tensor) -> Tensor:
        """``x`` with ``forward(x) = y``."""
        t = self._transform(y, c)
        v = y.index_select(-1, self.moved)
        if isinstance(t, tuple):
            shift, log_scale = t
            u = (v - shift) * torch.exp(-log_scale)
        else:
            u = t.inv(v)
        return self._put(y, u)


def paired_masks(n_blocks: int, n_features: int, seed: int = 0) -> list[Tensor]:
    """``n_blocks`` boolean masks over ``n_features``: for each pair a random half and its
    complement (an odd last block gets a fresh random half).

    >>> a, b = paired_masks(2, 6)
    >>> bool((a ^ b).all()), int(a.sum())
    (True, 3)
    """
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for i in range(n_blocks):
        if i % 2 == 0:
            half = torch.zeros(n_features, dtype=torch.bool)
            half[torch.randperm(n_features, generator=gen)[: n_features // 2]] = True
            masks.append(half)
        else:
            masks.append(~masks[-1])
    return masks


class CouplingFlow(nn.Module):
    """A stack of :class:`Coupling` blocks over ``(n, L, F)`` with an ``(n, n_cond)`` condition.

    ``forward`` maps data to the latent space (with the summed log-determinant), ``inverse``
    back. ``conditioner`` is ``conv`` (``hidden`` channels, ``depth`` convolutions of width
    ``kernel``) or ``dense`` (``depth`` hidden layers of ``hidden`` units).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        n_cond: int,
        n_blocks: int,
        hidden: int,
        kernel: int = 3,
        depth: int = 2,
        kind: str = "rqs",
        bins: int = 8,
        bound: float = 5.0,
        conditioner: str = "conv",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if conditioner not in CONDITIONERS:
            raise ValueError(f"unknown conditioner '{conditioner}': use one of {', '.join(CONDITIONERS)}")
        self.shape = (int(shape[0]), int(shape[1]))
        n_layers, n_features = self.shape
        n_params = Coupling.n_params(kind, bins)
        blocks = []
        for mask in paired_masks(n_blocks, n_features, seed):
            split = (int(mask.sum()), n_features - int(mask.sum()))
            if conditioner == "conv":
                net: nn.Module = LayerConvConditioner(
                    n_layers, split, n_params, n_cond, hidden, kernel, depth
                )
            else:
                net = DenseConditioner(n_layers, split, n_params, n_cond, hidden, depth)
            blocks.append(Coupling(mask, net, kind, bins, bound))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log |det ∂z/∂x|)``."""
        ladj = x.new_zeros(len(x))
        for block in self.blocks:
            x, step = block(x, c)
            ladj = ladj + step
        return x, ladj

    def inverse(self, z: Tensor, c: Tensor) -> Tensor:
        """The data ``x`` whose latent point is ``z``."""
        for block in reversed(self.blocks):
            z = block.inverse(z, c)
        return z

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        """Log-density of ``x`` given ``c`` under a standard normal base, per sample."""
        z, ladj = self(x, c)
        return gaussian_log_prob(z) + ladj


def gaussian_log_prob(z: Tensor) -> Tensor:
    """Standard-normal log-density of each sample of ``z`` (all but the first dimension summed)."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(-1)
