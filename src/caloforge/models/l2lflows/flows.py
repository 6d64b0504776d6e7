"""The L2LFlows networks: per-layer coupling flows with 2-d convolutional conditioners, and the
layer-energy flow.

:class:`LayerFlows` holds one coupling flow per calorimeter layer. Their weights are stacked
and applied with grouped convolutions, so all layers run in one pass during training (teacher
forcing: every layer conditioned on the true previous layers) while sampling runs one layer
(``layers=slice(i, i + 1)``) at a time. Each :class:`CheckerboardCoupling` block keeps the cells
of one checkerboard colour (or one row of each 2 × 2 cell block; the masks alternate between
blocks) and transforms the others with an affine map or a rational-quadratic spline whose
parameters a small stack of 3 × 3 convolutions on the 2 × 2-squeezed image
(:class:`ConvConditioner`) computes from the kept cells, the previous layers' images and two
scalars (incident and layer energy), given as a learned bias per layer. Conditioners start at
zero output: a new flow is the identity. :class:`EnergyFlow` wraps a zuko neural spline flow
(autoregressive) over the layer energies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor, nn

from caloforge.models.nn.coupling import AFFINE_CLAMP, gaussian_log_prob, rqs

__all__ = [
    "CheckerboardCoupling",
    "ConvConditioner",
    "EnergyFlow",
    "GroupedConv2d",
    "LayerFlows",
    "gaussian_log_prob",
    "squeeze",
    "unsqueeze",
]


class GroupedConv2d(nn.Module):
    """``G`` independent 3 × 3 convolutions (one per layer) over ``(n, g, C_in, H, W)``, applied to
    the groups ``layers`` (a slice of the ``G``) as one grouped convolution; with ``G = 1`` one
    convolution shared by all layers (the layers folded into the batch: ~2× faster on CPUs)."""

    def __init__(self, groups: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.weight = nn.Parameter(torch.empty(groups, c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(groups, c_out))
        bound = 1 / math.sqrt(c_in * 9)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, layers: slice) -> Tensor:
        n, g, _, h, w = x.shape
        if self.weight.shape[0] == 1:
            out = F.conv2d(x.reshape(n * g, self.c_in, h, w), self.weight[0], self.bias[0], padding=1)
        else:
            weight = self.weight[layers].reshape(g * self.c_out, self.c_in, 3, 3)
            bias = self.bias[layers].reshape(-1)
            out = F.conv2d(x.reshape(n, g * self.c_in, h, w), weight, bias, padding=1, groups=g)
        return out.reshape(n, g, self.c_out, h, w)


class ConvConditioner(nn.Module):
    """``(n, g, C_in, H, W)`` images and ``(n, g, S)`` scalars → ``(n, g, P, H, W)`` parameters.

    A 3 × 3 convolution plus a learned per-layer map of the scalars and a per-layer position
    bias, ``depth - 1`` more 3 × 3 convolutions (SiLU after each), and a zero-initialised 3 × 3
    convolution to the parameters. Convolution weights are per layer, or shared (``shared``).
    """

    def __init__(
        self,
        n_layers: int,
        size: tuple[int, int],
        channels: tuple[int, int],
        n_scalars: int,
        hidden: int,
        depth: int,
        shared: bool,
    ) -> None:
        super().__init__()
        c_in, n_params = channels
        groups = 1 if shared else n_layers
        self.first = GroupedConv2d(groups, c_in, hidden)
        self.scalars = nn.Parameter(torch.zeros(n_layers, hidden, n_scalars))
        self.position = nn.Parameter(torch.zeros(n_layers, hidden, *size))
        self.rest = nn.ModuleList(GroupedConv2d(groups, hidden, hidden) for _ in range(depth - 1))
        self.out = GroupedConv2d(groups, hidden, n_params)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor, s: Tensor, layers: slice) -> Tensor:
        bias = torch.einsum("ngs,ghs->ngh", s, self.scalars[layers])
        h = F.silu(self.first(x, layers) + bias[..., None, None] + self.position[layers])
        for conv in self.rest:
            h = F.silu(conv(h, layers))
        return self.out(h, layers)


#: The sub-pixel splits of a squeezed 2 × 2 cell block the coupling blocks cycle through (kept,
#: moved): the two checkerboard colours, then the two row halves.
SPLITS = (((0, 3), (1, 2)), ((1, 2), (0, 3)), ((0, 1), (2, 3)), ((2, 3), (0, 1)))


def squeeze(x: Tensor) -> Tensor:
    """``(n, g, H, W)`` → ``(n, g, 4, H/2, W/2)``: each 2 × 2 block of cells as 4 channels."""
    n, g, h, w = x.shape
    return F.pixel_unshuffle(x.reshape(n * g, 1, h, w), 2).reshape(n, g, 4, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`."""
    n, g, _, h, w = x.shape
    return F.pixel_shuffle(x.reshape(n * g, 4, h, w), 2).reshape(n, g, 2 * h, 2 * w)


class CheckerboardCoupling(nn.Module):
    """One coupling block over squeezed layer images ``(n, g, 4, H/2, W/2)``: two of each 2 × 2
    block's cells (split ``split`` of :data:`SPLITS`: a checkerboard colour or a row half), with
    the context images and the scalars, condition the transform of the other two."""

    def __init__(
        self,
        n_layers: int,
        size: tuple[int, int],
        split: int,
        n_context: int,
        n_scalars: int,
        hidden: int,
        depth: int,
        kind: str = "affine",
        bins: int = 6,
        bound: float = 6.0,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("affine", "rqs"):
            raise ValueError(f"unknown coupling '{kind}': use affine or rqs")
        kept, moved = SPLITS[split % len(SPLITS)]
        self.register_buffer("kept", torch.tensor(kept))
        self.register_buffer("moved", torch.tensor(moved))
        self.kind, self.bins, self.bound = kind, bins, bound
        self.n_params = 3 * bins - 1 if kind == "rqs" else 2
        channels = (2 + 4 * n_context, 2 * self.n_params)
        self.conditioner = ConvConditioner(n_layers, size, channels, n_scalars, hidden, depth, shared)

    def _map(self, x: Tensor, ctx: Tensor, s: Tensor, layers: slice, inverse: bool) -> tuple[Tensor, Tensor]:
        inp = torch.cat([x.index_select(2, self.kept), ctx], dim=2)
        p = self.conditioner(inp, s, layers)  # (n, g, 2 P, h, w)
        u = x.index_select(2, self.moved)
        n, g, _, h, w = p.shape
        if self.kind == "rqs":
            p = p.reshape(n, g, 2, self.n_params, h, w).movedim(3, -1)
            widths, heights, derivatives = p.split([self.bins, self.bins, self.bins - 1], dim=-1)
            return rqs(u, widths, heights, derivatives, self.bound, inverse)
        shift, raw = p.reshape(n, g, 2, 2, h, w).unbind(3)
        log_scale = AFFINE_CLAMP * torch.tanh(raw / AFFINE_CLAMP)
        v = (u - shift) * torch.exp(-log_scale) if inverse else u * torch.exp(log_scale) + shift
        return v, log_scale

    def forward(self, x: Tensor, ctx: Tensor, s: Tensor, layers: slice) -> tuple[Tensor, Tensor]:
        """``(y, log |det ∂y/∂x|)`` per sample and layer ``(n, g)``."""
        v, ladj = self._map(x, ctx, s, layers, inverse=False)
        return x.index_copy(2, self.moved, v), ladj.flatten(2).sum(-1)

    def inverse(self, y: Tensor, ctx: Tensor, s: Tensor, layers: slice) -> Tensor:
        """``x`` with ``forward(x) = y``."""
        u, _ = self._map(y, ctx, s, layers, inverse=True)
        return y.index_copy(2, self.moved, u)


class LayerFlows(nn.Module):
    """``n_layers`` conditional coupling flows over ``(H, W)`` layer images (even sizes), one per
    layer.

    ``forward(x, ctx, s, layers)``: images ``x`` ``(n, g, H, W)`` of the layers ``layers`` (a
    slice, ``g`` layers), their context images ``(n, g, n_context, H, W)`` and scalars
    ``(n, g, n_scalars)`` → latent ``z`` ``(n, g, H, W)`` and ``log |det|`` per sample and layer
    ``(n, g)``. The blocks work on 2 × 2-squeezed images (:func:`squeeze`): their splits are
    checkerboard and row masks of the cells. ``shared``: one set of convolution weights for all
    layers (the per-layer scalar maps and position biases stay per layer).
    """

    def __init__(
        self,
        n_layers: int,
        size: tuple[int, int],
        n_context: int,
        n_scalars: int,
        n_blocks: int,
        hidden: int,
        depth: int,
        kind: str = "affine",
        bins: int = 6,
        bound: float = 6.0,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if size[0] % 2 or size[1] % 2:
            raise ValueError(f"layer flows need even image sizes, got {size[0]} × {size[1]}")
        self.n_layers, self.size, self.n_context = n_layers, (int(size[0]), int(size[1])), n_context
        half = (self.size[0] // 2, self.size[1] // 2)
        self.blocks = nn.ModuleList(
            CheckerboardCoupling(
                n_layers, half, i, n_context, n_scalars, hidden, depth, kind, bins, bound, shared
            )
            for i in range(n_blocks)
        )

    def _context(self, ctx: Tensor) -> Tensor:
        n, g, k, h, w = ctx.shape
        return squeeze(ctx.reshape(n, g * k, h, w)).reshape(n, g, 4 * k, h // 2, w // 2)

    def forward(
        self, x: Tensor, ctx: Tensor, s: Tensor, layers: slice = slice(None)
    ) -> tuple[Tensor, Tensor]:
        """``(z, log |det ∂z/∂x|)`` per sample and layer."""
        x, ctx = squeeze(x), self._context(ctx)
        ladj = x.new_zeros(x.shape[:2])
        for block in self.blocks:
            x, step = block(x, ctx, s, layers)
            ladj = ladj + step
        return unsqueeze(x), ladj

    def inverse(self, z: Tensor, ctx: Tensor, s: Tensor, layers: slice = slice(None)) -> Tensor:
        """The images whose latent point is ``z``."""
        z, ctx = squeeze(z), self._context(ctx)
        for block in reversed(self.blocks):
            z = block.inverse(z, ctx, s, layers)
        return unsqueeze(z)

    def context(self, x: Tensor) -> Tensor:
        """Teacher-forcing context ``(n, L, n_context, H, W)`` of all layers ``x`` ``(n, L, H, W)``:
        layer ``i`` sees layers ``i - n_context .. i - 1`` (zeros before layer 0)."""
        n, n_layers, h, w = x.shape
        k = self.n_context
        if k == 0:
            return x.new_zeros(n, n_layers, 0, h, w)
        padded = torch.cat([x.new_zeros(n, k, h, w), x], dim=1)
        return torch.stack([padded[:, j : j + n_layers] for j in range(k)], dim=2)


class EnergyFlow(nn.Module):
    """A zuko neural spline flow (masked autoregressive, spline bound 5) over ``features`` values
    given ``context`` values: ``forward`` data → latent with ``log |det|``, ``inverse`` back."""

    def __init__(self, features: int, context: int, transforms: int, hidden: int, bins: int) -> None:
        super().__init__()
        self.flow = zuko.flows.NSF(
            features, context, bins=bins, transforms=transforms, hidden_features=(hidden, hidden)
        )

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log |det ∂z/∂x|)`` per sample."""
        return self.flow(c).transform.call_and_ladj(x)

    def inverse(self, z: Tensor, c: Tensor) -> Tensor:
        """The data whose latent point is ``z`` (one pass per feature)."""
        return self.flow(c).transform.inv(z)
