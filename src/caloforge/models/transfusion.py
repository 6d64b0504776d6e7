"""CaloDREAM's energy network: an autoregressive "transfusion" transformer for flow matching.

The 45 normalised layer-energy variables ``z_0 … z_{L-1}`` (SPEC 6.4) are generated one
after the other. For dimension ``i`` the transformer sees the incident energy (encoder) and
the already generated ``z_0 … z_{i-1}`` (a causally masked decoder with cross-attention);
its output ``h_i`` conditions a small network that gives the flow-matching velocity of the
single variable ``z_i``:  ``v_i = head(z_i(t), t, h_i)``.

Training is teacher-forced (all ``h_i`` from the data in one pass); sampling solves one
1-d ODE per dimension. The decoder's input at position ``i`` is ``z_{i-1}`` (a learned start
token at position 0), so output ``i`` never depends on ``z_i`` or later ones:

>>> import torch
>>> net = Transfusion(n_dims=5, d_model=16, n_heads=2).eval()
>>> z = torch.randn(3, 5); e = torch.randn(3, 1)
>>> h1 = net.context(z, e); z2 = z.clone(); z2[:, 2] += 1.0
>>> torch.allclose(h1[:, :3], net.context(z2, e)[:, :3])
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Transfusion", "time_embedding"]


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(…, dim)`` of times ``t`` in [0, 1] (shape ``(…)``)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * (-math.log(10_000.0) / half))
    angles = 1000.0 * t.unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Transfusion(nn.Module):
    """Encoder on the condition, causal decoder over dimensions, per-dimension velocity head."""

    def __init__(
        self,
        n_dims: int,
        n_cond: int = 1,
        d_model: int = 64,
        n_heads: int = 4,
        n_encoder_layers: int = 1,
        n_decoder_layers: int = 3,
        head_hidden: int = 128,
        time_dim: int = 16,
    ) -> None:
        super().__init__()
        self.n_dims, self.time_dim = n_dims, time_dim
        self.cond_embed = nn.Sequential(nn.Linear(n_cond, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        enc = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True)
        dec = nn.TransformerDecoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, n_encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, n_decoder_layers)
        self.value_embed = nn.Linear(1, d_model)
        self.start = nn.Parameter(torch.zeros(1, 1, d_model))
        self.position = nn.Parameter(torch.randn(1, n_dims, d_model) * 0.02)
        self.head = nn.Sequential(
            nn.Linear(1 + time_dim + d_model, head_hidden),
            nn.SiLU(),
            nn.Linear(head_hidden, head_hidden),
            nn.SiLU(),
            nn.Linear(head_hidden, 1),
        )
        self.register_buffer(
            "causal", nn.Transformer.generate_square_subsequent_mask(n_dims), persistent=False
        )

    def context(self, z: Tensor, cond: Tensor) -> Tensor:
        """``h`` ``(n, n_dims, d_model)``: row ``i`` depends on ``cond`` and ``z[:, :i]`` only."""
        memory = self.encoder(self.cond_embed(cond).unsqueeze(1))
        shifted = self.value_embed(z[:, :-1].unsqueeze(-1))
        tokens = torch.cat([self.start.expand(len(z), -1, -1), shifted], dim=1) + self.position
        return self.decoder(tokens, memory, tgt_mask=self.causal, tgt_is_causal=True)

    def velocity(self, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        """Velocity of each variable ``x`` ``(…)`` at times ``t`` given its context ``h`` ``(…, d)``."""
        t = t.expand_as(x)
        return self.head(torch.cat([x.unsqueeze(-1), time_embedding(t, self.time_dim), h], dim=-1)).squeeze(
            -1
        )

    def forward(self, x_t: Tensor, t: Tensor, z: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced velocities ``(n, n_dims)`` of ``x_t`` at times ``t`` (``(n, n_dims)``)."""
        return self.velocity(x_t, t, self.context(z, cond))

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        solve: Callable[[Callable[[Tensor, Tensor], Tensor], Tensor], Tensor],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Generate ``(n, n_dims)`` dimension by dimension; ``solve(v, x0)`` integrates t = 0 → 1."""
        n = len(cond)
        z = torch.zeros(n, self.n_dims, device=cond.device)
        noise = torch.randn(n, self.n_dims, generator=generator, device=cond.device)
        memory = self.encoder(self.cond_embed(cond).unsqueeze(1))
        for i in range(self.n_dims):
            shifted = self.value_embed(z[:, :i].unsqueeze(-1))
            tokens = torch.cat([self.start.expand(n, -1, -1), shifted], dim=1) + self.position[:, : i + 1]
            h = self.decoder(tokens, memory, tgt_mask=self.causal[: i + 1, : i + 1], tgt_is_causal=True)[
                :, -1
            ]

            def v(t: Tensor, x: Tensor, h: Tensor = h) -> Tensor:
                return self.velocity(x, t.reshape(1), h)

            z[:, i] = solve(v, noise[:, i])
        return z
