"""Coupling blocks for normalizing flows over layered calorimeter features.

A :class:`CouplingFlow` is a stack of :class:`Coupling` blocks over a tensor ``(n, L, F)``
(``L`` calorimeter layers, ``F`` features per layer). Each block leaves unchanged the
features its boolean ``mask`` (over the ``F`` features, the same in every layer) marks and
transforms the others elementwise, with parameters that a conditioner computes from the
unchanged ones and a condition vector: a monotonic rational-quadratic spline (Durkan et al.
2019; zuko's :class:`~zuko.transforms.MonotonicRQSTransform`, re-implemented in :func:`rqs`
for speed and tested against it; the identity outside ``[-bound, bound]``) or an affine map.
Blocks come in pairs, a random half-mask and its complement (:func:`paired_masks`), so every
feature is transformed. The conditioner
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

__all__ = [
    "CONDITIONERS",
    "COUPLINGS",
    "Coupling",
    "CouplingFlow",
    "DenseConditioner",
    "LayerConvConditioner",
    "gaussian_log_prob",
    "paired_masks",
    "rqs",
]

#: Elementwise transforms of a block: ``rqs`` (rational-quadratic spline) or ``affine``.
COUPLINGS = ("rqs", "affine")
#: Conditioner networks: ``conv`` (:class:`LayerConvConditioner`) or ``dense`` (:class:`DenseConditioner`).
CONDITIONERS = ("conv", "dense")
#: Affine blocks' log-scales are bounded softly to ``±AFFINE_CLAMP``.
AFFINE_CLAMP = 2.0


def _softmax(v: Tensor) -> Tensor:
    # torch.softmax over a last axis of a few bins is several times slower on CPUs
    e = torch.exp(v - v.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def rqs(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float,
    inverse: bool = False,
    slope: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline (Durkan et al. 2019) of ``x`` and its log-derivative.

    The parametrisation of zuko's :class:`~zuko.transforms.MonotonicRQSTransform` (unconstrained
    ``widths`` and ``heights`` ``(*, K)``, inner knot ``derivatives`` ``(*, K - 1)``, minimum slope
    ``slope``, the identity outside ``[-bound, bound]``), computed here with gathers of the two
    knots each value needs: 1.3-1.65x faster on CPUs (tested equal to zuko's). ``inverse``:
    the inverse map (the log-derivative is then that of the forward map at the result).
    """
    c = math.log(slope)
    widths = widths / (1 + torch.abs(2 * widths / c))
    heights = heights / (1 + torch.abs(2 * heights / c))
    derivatives = derivatives / (1 + torch.abs(derivatives / c))
    n_bins = widths.shape[-1]
    xk = F.pad(torch.cumsum(_softmax(widths), -1), (1, 0)) * (2 * bound) - bound
    yk = F.pad(torch.cumsum(_softmax(heights), -1), (1, 0)) * (2 * bound) - bound
    dk = F.pad(torch.exp(derivatives), (1, 1), value=1.0)
    knots = yk if inverse else xk
    inside = (x > -bound) & (x < bound)
    k = torch.searchsorted(knots.detach().contiguous(), x.detach().unsqueeze(-1).contiguous(), right=True)
    k = (k - 1).clamp(0, n_bins - 1)
    both = torch.cat([k, k + 1], dim=-1)
    x0, x1 = xk.gather(-1, both).unbind(-1)
    y0, y1 = yk.gather(-1, both).unbind(-1)
    d0, d1 = dk.gather(-1, both).unbind(-1)
    s = (y1 - y0) / (x1 - x0)
    if inverse:
        dy = x - y0
        a = (y1 - y0) * (s - d0) + dy * (d0 + d1 - 2 * s)
        b = (y1 - y0) * d0 - dy * (d0 + d1 - 2 * s)
        z = (2 * -s * dy / (-b - (b * b + 4 * a * s * dy).clamp_min(0.0).sqrt())).clamp(0.0, 1.0)
        out = x0 + z * (x1 - x0)
    else:
        z = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    zz = z * (1 - z)
    den = s + (d0 + d1 - 2 * s) * zz
    if not inverse:
        out = y0 + (y1 - y0) * (s * z * z + d0 * zz) / den
    jac = s * s * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z * z) / (den * den)
    return torch.where(inside, out, x), torch.where(inside, torch.log(jac), 0.0)


class LayerConvConditioner(nn.Module):
    """``(n, L, F_in)`` features and an ``(n, C)`` condition → ``(n, L, F_out, P)`` parameters.

    ``depth`` convolutions of width ``kernel`` along the layers (``hidden`` channels, SiLU,
    a learned offset per layer after the first), then a linear map of each layer's channels
    to its ``F_out · P`` parameters, initialised at zero (a linear layer rather than a 1 × 1
    convolution: its backward pass is one matrix product, 10× faster on CPUs here).
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
        self.out = nn.Linear(hidden, self.f_out * n_params)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        n, n_layers, _ = x.shape
        h = torch.cat([x.transpose(1, 2), c.unsqueeze(-1).expand(-1, -1, n_layers)], dim=1)
        h = F.silu(self.first(h) + self.position)
        for conv in self.rest:
            h = F.silu(conv(h))
        return self.out(h.transpose(1, 2)).reshape(n, n_layers, self.f_out, self.n_params)


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

    def _map(self, x: Tensor, c: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """The moved features mapped (or mapped back), with the forward map's log-derivatives."""
        p = self.conditioner(x.index_select(-1, self.kept), c)
        u = x.index_select(-1, self.moved)
        if self.kind == "rqs":  # split, not slices: no zero-filled gradient per slice
            widths, heights, derivatives = p.split([self.bins, self.bins, self.bins - 1], dim=-1)
            return rqs(u, widths, heights, derivatives, self.bound, inverse)
        shift, raw = p.unbind(-1)
        log_scale = AFFINE_CLAMP * torch.tanh(raw / AFFINE_CLAMP)
        v = (u - shift) * torch.exp(-log_scale) if inverse else u * torch.exp(log_scale) + shift
        return v, log_scale

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log |det ∂y/∂x|)`` per sample."""
        v, ladj = self._map(x, c, inverse=False)
        return x.index_copy(-1, self.moved, v), ladj.flatten(1).sum(-1)

    def inverse(self, y: Tensor, c: Tensor) -> Tensor:
        """``x`` with ``forward(x) = y``."""
        u, _ = self._map(y, c, inverse=True)
        return y.index_copy(-1, self.moved, u)


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
