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
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models._placement import randn

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

    def _memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys and values of ``memory`` for every decoder layer (fixed while sampling)."""
        out = []
        for layer in self.decoder.layers:
            ca = layer.multihead_attn
            d = memory.shape[-1]
            w, b = ca.in_proj_weight, ca.in_proj_bias
            k = self._heads(F.linear(memory, w[d : 2 * d], b[d : 2 * d]), ca.num_heads)
            v = self._heads(F.linear(memory, w[2 * d :], b[2 * d :]), ca.num_heads)
            out.append((k, v))
        return out

    def _check_incremental(self) -> None:
        """:meth:`_decode_step` re-implements PyTorch's post-norm ReLU decoder layers; refuse others."""
        for layer in self.decoder.layers:
            if layer.norm_first or layer.activation is not F.relu or (layer.training and layer.dropout.p > 0):
                raise NotImplementedError(
                    "incremental decoding supports post-norm ReLU decoder layers without active dropout"
                )

    def _decode_step(
        self, token: Tensor, memory_kv: list[tuple[Tensor, Tensor]], cache: list[list[Tensor]]
    ) -> Tensor:
        """Decoder output ``(n, d)`` at the next position for its input ``token`` ``(n, d)``.

        The same function as :attr:`decoder` on the whole causal sequence, computed for one new
        position: the keys and values of the earlier positions come from ``cache`` (one
        ``[keys, values]`` pair per layer, ``(n, heads, i, d_head)``, extended in place), those
        of the encoder output from ``memory_kv`` (:meth:`_memory_kv`), so a sequence of length
        L costs L token passes instead of L (L + 1) / 2. Written for the post-norm ReLU layers
        built in ``__init__`` (PyTorch's default ``norm_first=False``; see
        :meth:`_check_incremental`).
        """
        x = token.unsqueeze(1)
        for layer, kv, (k2, v2) in zip(self.decoder.layers, cache, memory_kv, strict=True):
            sa, ca = layer.self_attn, layer.multihead_attn
            q, k, v = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (self._heads(t, sa.num_heads) for t in (q, k, v))
            kv[0] = k if kv[0].numel() == 0 else torch.cat([kv[0], k], dim=2)
            kv[1] = v if kv[1].numel() == 0 else torch.cat([kv[1], v], dim=2)
            attn = F.scaled_dot_product_attention(q, kv[0], kv[1])
            x = layer.norm1(x + sa.out_proj(self._merge(attn)))
            d = x.shape[-1]
            q2 = self._heads(F.linear(x, ca.in_proj_weight[:d], ca.in_proj_bias[:d]), ca.num_heads)
            x = layer.norm2(x + ca.out_proj(self._merge(F.scaled_dot_product_attention(q2, k2, v2))))
            x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        return x[:, 0]

    @staticmethod
    def _heads(x: Tensor, heads: int) -> Tensor:
        n, length, d = x.shape
        return x.reshape(n, length, heads, d // heads).transpose(1, 2)

    @staticmethod
    def _merge(x: Tensor) -> Tensor:
        n, heads, length, d_head = x.shape
        return x.transpose(1, 2).reshape(n, length, heads * d_head)

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        solve: Callable[[Callable[[Tensor, Tensor], Tensor], Tensor], Tensor],
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Generate ``(n, n_dims)`` dimension by dimension; ``solve(v, x0)`` integrates t = 0 → 1.

        The decoder runs once per dimension on the new position only (cached keys and values).
        Runs on the device of ``cond``; the noise is drawn on the host with ``generator``.
        """
        self._check_incremental()
        n = len(cond)
        z = torch.zeros(n, self.n_dims, device=cond.device)
        noise = randn((n, self.n_dims), generator, cond.device)
        memory_kv = self._memory_kv(self.encoder(self.cond_embed(cond).unsqueeze(1)))
        cache: list[list[Tensor]] = [[z.new_empty(0), z.new_empty(0)] for _ in self.decoder.layers]
        for i in range(self.n_dims):
            previous = self.start[:, 0] if i == 0 else self.value_embed(z[:, i - 1 : i])
            h = self._decode_step(previous.expand(n, -1) + self.position[:, i], memory_kv, cache)

            def v(t: Tensor, x: Tensor, h: Tensor = h) -> Tensor:
                return self.velocity(x, t.reshape(1), h)

            z[:, i] = solve(v, noise[:, i])
        return z
