"""A 3-d vision transformer for flow-matching velocities on voxel grids (CaloDREAM's shape net).

The input ``(n, C, D1, D2, D3)`` (for voxel showers: one channel, layer × angle × radius;
for the latent variant: the VAE's latent channels) is cut into non-overlapping patches of
``patch`` voxels, each patch becomes a token with a learnable position embedding, and
transformer blocks modulated by the condition (time, incident energy, layer energies;
adaptive layer norm with zero-initialised gates, as in DiT) map the tokens back to one
velocity per input value.

:func:`patchify` and :func:`unpatchify` are exact inverses:

>>> import torch
>>> x = torch.randn(2, 1, 6, 4, 3)
>>> p = patchify(x, (3, 2, 3)); p.shape
torch.Size([2, 4, 18])
>>> torch.equal(unpatchify(p, (1, 6, 4, 3), (3, 2, 3)), x)
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from caloforge.models.nn.transfusion import time_embedding

__all__ = ["ViT3d", "patchify", "unpatchify"]


def _grid(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, int, int]:
    bad = [f"{s} by {p}" for s, p in zip(shape, patch, strict=True) if s % p]
    if bad:
        raise ValueError(f"patch {tuple(patch)} does not tile the grid {tuple(shape)} ({', '.join(bad)})")
    g = tuple(s // p for s, p in zip(shape, patch, strict=True))
    return g  # type: ignore[return-value]


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """``(n, C, D1, D2, D3)`` → ``(n, tokens, C·p1·p2·p3)``; tokens in (D1, D2, D3) order."""
    n, c, *shape = x.shape
    g1, g2, g3 = _grid(tuple(shape), patch)
    p1, p2, p3 = patch
    x = x.reshape(n, c, g1, p1, g2, p2, g3, p3).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(n, g1 * g2 * g3, c * p1 * p2 * p3)


def unpatchify(tokens: Tensor, shape: tuple[int, int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`patchify`; ``shape`` is ``(C, D1, D2, D3)``."""
    c, *grid = shape
    g1, g2, g3 = _grid(tuple(grid), patch)
    p1, p2, p3 = patch
    x = tokens.reshape(-1, g1, g2, g3, c, p1, p2, p3).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(-1, c, g1 * p1, g2 * p2, g3 * p3)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        s1, g1, a1, s2, g2, a2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), s1, g1)
        x = x + a1.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
        return x + a2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), s2, g2))


class ViT3d(nn.Module):
    """Velocity ``v(x_t, t, cond)`` on a ``(C, D1, D2, D3)`` grid.

    ``cond`` is a flat vector per sample (incident energy and layer energies, preprocessed
    by the caller); the time enters through a sinusoidal embedding.
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        patch: tuple[int, int, int],
        n_cond: int,
        dim: int = 96,
        depth: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.shape, self.patch = tuple(shape), tuple(patch)
        c = shape[0]
        grid = _grid(tuple(shape[1:]), self.patch)
        n_tokens, patch_dim = math.prod(grid), c * math.prod(self.patch)
        self.embed = nn.Linear(patch_dim, dim)
        self.position = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.time_dim = dim
        self.cond = nn.Sequential(nn.Linear(dim + n_cond, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(_Block(dim, n_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch_dim)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """``x`` ``(n, C, D1, D2, D3)``, ``t`` ``(n,)`` or scalar, ``cond`` ``(n, n_cond)``."""
        t = t.reshape(-1).expand(len(x))
        c = self.cond(torch.cat([time_embedding(t, self.time_dim), cond], dim=-1))
        h = self.embed(patchify(x, self.patch)) + self.position
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        h = self.out(_modulate(self.norm(h), shift, scale))
        return unpatchify(h, self.shape, self.patch)  # type: ignore[arg-type]
