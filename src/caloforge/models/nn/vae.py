"""The variational autoencoder of CaloDREAM's latent variant (laViT).

It compresses the per-layer energy *fractions* of a voxel shower ``(n, 1, L, A, R)`` (each
layer sums to 1, or 0 when empty) into a latent grid ``(n, C, L/s1, A/s2, R/s3)`` with 3-d
convolutions; the decoder returns one logit per voxel and a softmax over each layer gives
fractions that sum to 1 again, so layer energies (from the energy network) are kept exactly.
The reconstruction loss is the per-layer cross entropy ``-Σ f log f̂`` (a distance between
the two distributions of energy in the layer), plus ``beta`` times the KL divergence.

>>> import torch
>>> vae = LayerVAE((45, 16, 9), latent_channels=4, stride=(3, 2, 3))
>>> f = torch.softmax(torch.randn(2, 1, 45, 144), -1).reshape(2, 1, 45, 16, 9)
>>> mu, logvar = vae.encode(f); tuple(mu.shape)
(2, 4, 15, 8, 3)
>>> out = vae.decode(mu); torch.allclose(out.sum((-1, -2)), torch.ones(2, 1, 45))
True

``full_resolution=False`` leaves out the convolutions at the voxels' own resolution (a patch
VAE, for the 40,500 voxels of dataset 3):

>>> ds3 = LayerVAE((45, 50, 18), stride=(3, 5, 3), full_resolution=False)
>>> ds3.latent_shape, tuple(ds3.decode(torch.zeros(1, *ds3.latent_shape)).shape)
((4, 15, 10, 6), (1, 1, 45, 50, 18))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from caloforge.models._placement import randn

__all__ = ["LayerVAE", "vae_loss", "vae_terms"]


class LayerVAE(nn.Module):
    """Convolutional VAE over layer-normalised voxel fractions."""

    def __init__(
        self,
        grid: tuple[int, int, int],
        latent_channels: int = 4,
        stride: tuple[int, int, int] = (3, 2, 3),
        channels: int = 32,
        full_resolution: bool = True,
    ) -> None:
        super().__init__()
        bad = [f"{g} by {s}" for g, s in zip(grid, stride, strict=True) if g % s]
        if bad:
            raise ValueError(
                f"VAE stride {tuple(stride)} does not tile the grid {tuple(grid)} ({', '.join(bad)})"
            )
        self.grid, self.stride, self.latent_channels = tuple(grid), tuple(stride), latent_channels
        self.latent_shape = (latent_channels, *(g // s for g, s in zip(grid, stride, strict=True)))
        self.full_resolution = full_resolution
        c, h = channels, max(channels // 4, 1)  # full resolution gets a quarter: it dominates the cost
        # Without full_resolution the 3 x 3 x 3 convolutions over the voxel grid (most of the cost
        # on dataset 3's 40,500 voxels) give way to the patch convolution alone.
        # (layers made in the order they run: the same initialisation for the same seed as before
        # the option existed)
        encoder: list[nn.Module] = [nn.Conv3d(1, h, 3, padding=1), nn.SiLU()] if full_resolution else []
        encoder += [
            nn.Conv3d(h if full_resolution else 1, c, stride, stride=stride),
            nn.SiLU(),
            nn.Conv3d(c, c, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(c, 2 * latent_channels, 1),
        ]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [
            nn.Conv3d(latent_channels, c, 3, padding=1),
            nn.SiLU(),
            nn.Conv3d(c, c, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose3d(c, h, stride, stride=stride),
            nn.SiLU(),
        ]
        if full_resolution:
            decoder += [nn.Conv3d(h, h, 3, padding=1), nn.SiLU()]
        self.decoder = nn.Sequential(*decoder, nn.Conv3d(h, 1, 1))

    def encode(self, fractions: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the latent for fractions ``(n, 1, L, A, R)``."""
        mu, logvar = self.encoder(fractions * fractions[0, 0, 0].numel()).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 6.0)

    def logits(self, z: Tensor) -> Tensor:
        """Per-voxel logits ``(n, 1, L, A, R)``."""
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Fractions ``(n, 1, L, A, R)``: a softmax over each layer's voxels."""
        logits = self.logits(z)
        n, _, layers = logits.shape[:3]
        return torch.softmax(logits.reshape(n, 1, layers, -1), dim=-1).reshape(logits.shape)

    def forward(
        self, fractions: Tensor, generator: torch.Generator | None = None, eps: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of a reconstruction from a sampled latent (noise ``eps``, else drawn with
        ``generator``), and the latent's mean and log-variance."""
        mu, logvar = self.encode(fractions)
        if eps is None:
            eps = randn(mu.shape, generator, mu.device)
        return self.logits(mu + eps * torch.exp(0.5 * logvar)), mu, logvar


def vae_terms(vae: LayerVAE, fractions: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(cross entropy per non-empty layer, KL per latent value, non-empty layers)`` of the
    reconstruction from the latent noise ``eps`` ``(n, *latent_shape)``."""
    logits, mu, logvar = vae(fractions, eps=eps)
    n, _, layers = logits.shape[:3]
    logp = torch.log_softmax(logits.reshape(n, layers, -1), dim=-1)
    f = fractions.reshape(n, layers, -1)
    filled = f.sum(-1) > 0
    ce = -(f * logp).sum(-1)[filled].mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return ce, kl, filled.sum()


def vae_loss(
    vae: LayerVAE, fractions: Tensor, beta: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(cross entropy per non-empty layer, KL per latent value)``; the loss is ``ce + beta * kl``."""
    eps = randn((len(fractions), *vae.latent_shape), generator, fractions.device)
    ce, kl, _ = vae_terms(vae, fractions, eps)
    return ce, kl
