"""EPiC layers (equivariant point cloud, arXiv:2301.08128; SPEC 6.7) and an EPiC encoder.

An EPiC layer keeps a small *global* vector next to the per-point features. The global vector
is updated from pooled point features (mean and a scaled sum) and itself; then every point is
updated from itself and the new global vector. The cost is linear in the number of points and
the layer is permutation-equivariant (the global vector permutation-invariant); padding slots
(``mask`` False) neither enter the pooling nor change.

>>> import torch
>>> layer = EPiCLayer(dim_local=8, dim_global=4, hidden=16)
>>> p, g, mask = torch.randn(2, 5, 8), torch.randn(2, 4), torch.ones(2, 5, dtype=torch.bool)
>>> [t.shape for t in layer(p, g, mask)]
[torch.Size([2, 5, 8]), torch.Size([2, 4])]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EPiCEncoder", "EPiCLayer", "masked_pool"]


def masked_pool(p: Tensor, mask: Tensor, sum_scale: float) -> Tensor:
    """``[mean_i p_i, sum_i p_i * sum_scale]`` over the real points of each cloud, ``(B, 2 d)``."""
    m = mask.unsqueeze(-1).to(p.dtype)
    total = (p * m).sum(dim=1)
    count = m.sum(dim=1).clamp_min(1)
    return torch.cat([total / count, total * sum_scale], dim=-1)


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, hidden), nn.LeakyReLU(0.01),
        nn.Linear(hidden, dim_out),
    )  # fmt: skip


class EPiCLayer(nn.Module):
    """One EPiC layer: ``g' = g + phi_g([mean p, s * sum p, g, c])``, then
    ``p_i' = p_i + phi_p([p_i, g', c])`` (residual updates; ``c`` an optional per-cloud
    conditioning vector of ``dim_cond``; ``s`` = ``sum_scale``)."""

    def __init__(
        self, dim_local: int, dim_global: int, hidden: int, dim_cond: int = 0, sum_scale: float = 1e-2
    ) -> None:
        super().__init__()
        self.sum_scale = float(sum_scale)
        self.dim_cond = int(dim_cond)
        self.phi_global = _mlp(2 * dim_local + dim_global + dim_cond, hidden, dim_global)
        self.phi_local = _mlp(dim_local + dim_global + dim_cond, hidden, dim_local)

    def forward(
        self, p: Tensor, g: Tensor, mask: Tensor, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``p`` ``(B, P, dim_local)``, ``g`` ``(B, dim_global)``, ``mask`` ``(B, P)`` bool,
        ``cond`` ``(B, dim_cond)``; the updated ``(p, g)``."""
        extra = [] if cond is None else [cond]
        g = g + self.phi_global(torch.cat([masked_pool(p, mask, self.sum_scale), g, *extra], dim=-1))
        ctx = torch.cat([g, *extra], dim=-1).unsqueeze(1).expand(-1, p.shape[1], -1)
        p = p + self.phi_local(torch.cat([p, ctx], dim=-1))
        return p * mask.unsqueeze(-1).to(p.dtype), g


class EPiCEncoder(nn.Module):
    """A point cloud to the mean and log-variance of a Gaussian latent (a VAE encoder):
    an input embedding, ``n_layers`` :class:`EPiCLayer` and a head on the pooled points and
    the global vector. Permutation-invariant; padding is ignored.

    >>> enc = EPiCEncoder(dim_in=4, latent_dim=3, dim_cond=2)
    >>> x, mask = torch.randn(2, 7, 4), torch.ones(2, 7, dtype=torch.bool)
    >>> [t.shape for t in enc(x, mask, torch.zeros(2, 2))]
    [torch.Size([2, 3]), torch.Size([2, 3])]
    """

    def __init__(
        self,
        dim_in: int = 4,
        latent_dim: int = 16,
        dim_local: int = 32,
        dim_global: int = 10,
        hidden: int = 64,
        n_layers: int = 3,
        dim_cond: int = 0,
        sum_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.sum_scale = float(sum_scale)
        self.embed = nn.Sequential(nn.Linear(dim_in, dim_local), nn.LeakyReLU(0.01))
        self.global0 = nn.Linear(2 * dim_local + dim_cond, dim_global)
        self.layers = nn.ModuleList(
            EPiCLayer(dim_local, dim_global, hidden, dim_cond, sum_scale) for _ in range(n_layers)
        )
        self.head = _mlp(2 * dim_local + dim_global + dim_cond, hidden, 2 * latent_dim)

    def forward(self, x: Tensor, mask: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, P, dim_in)``, ``mask`` ``(B, P)``, ``cond`` ``(B, dim_cond)``: ``(mu, logvar)``."""
        extra = [] if cond is None else [cond]
        p = self.embed(x) * mask.unsqueeze(-1).to(x.dtype)
        g = self.global0(torch.cat([masked_pool(p, mask, self.sum_scale), *extra], dim=-1))
        for layer in self.layers:
            p, g = layer(p, g, mask, cond)
        out = self.head(torch.cat([masked_pool(p, mask, self.sum_scale), g, *extra], dim=-1))
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)
