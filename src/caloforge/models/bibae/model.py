"""The BIB-AE networks: 3-d convolutional encoder and decoder over the ``(1, L, N, N)`` cell
image, the two WGAN-GP critics, the per-cell post-processor, and the model that ties them to a
detector.

Cells are handled in a scaled space, ``log1p(MeV / log_scale_mev)`` (0 for an empty cell, about
0.7 at the 0.1 MeV threshold, 6-7 for the hottest cells of a 90 GeV photon); the incident energy
enters every network as ``E / energy_scale_gev``, as an extra constant input channel of the
convolutions and as an extra input of the dense layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.detector import CellGrid, Detector
from caloforge.models._placement import rand, randn
from caloforge.models.bibae.config import BIBAEConfig
from caloforge.models.checkpoint import detector_state

CHECKPOINT_FORMAT = "caloforge-bibae"
CHECKPOINT_VERSION = 1

__all__ = [
    "BIBAE",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Critic",
    "Decoder",
    "Encoder",
    "PostProcessor",
    "gradient_penalty",
    "image_shape",
    "mmd",
]


def image_shape(detector: Detector) -> tuple[int, int, int]:
    """``(layers, cells, cells)`` of a cell-grid detector (``ValueError`` for another readout)."""
    if not isinstance(detector.readout, CellGrid):
        raise ValueError(
            f"BIB-AE needs a cell-grid readout; detector '{detector.name}' has {detector.readout.kind} voxels"
        )
    n = detector.readout.n_cells
    return detector.n_layers, n, n


def _energy_channel(e: Tensor, shape: Sequence[int]) -> Tensor:
    """``(B, 1, *shape)``: the scaled energy ``e`` (B,) broadcast over the image."""
    return e.reshape(-1, 1, 1, 1, 1).expand(-1, 1, *shape)


def _down_stack(in_ch: int, widths: Sequence[int]) -> nn.Sequential:
    """Three stride-2 3-d convolutions (30 → 15 → 8 → 4 along each axis); the first, at full
    resolution, on non-overlapping 2×2×2 blocks (a 4×4×4 kernel there costs 8 times more)."""
    c0, c1, c2 = widths
    act = nn.LeakyReLU(0.2)
    return nn.Sequential(
        nn.Conv3d(in_ch, c0, 2, 2), act, nn.Conv3d(c0, c1, 3, 2, 1), act, nn.Conv3d(c1, c2, 4, 2, 1), act
    )


def _flat_size(stack: nn.Module, in_ch: int, shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(stack(torch.zeros(1, in_ch, *shape)).numel())


class Encoder(nn.Module):
    """Image ``(B, 1, L, N, N)`` and scaled energy ``(B,)`` → latent mean and log-variance."""

    def __init__(self, shape: Sequence[int], widths: Sequence[int], hidden: int, latent: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.conv = _down_stack(2, widths)
        flat = _flat_size(self.conv, 2, shape)
        self.head = nn.Sequential(
            nn.Linear(flat + 1, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent)
        )

    def forward(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(torch.cat([x, _energy_channel(e, self.shape)], 1)).flatten(1)
        mu, logvar = self.head(torch.cat([h, e[:, None]], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Decoder(nn.Module):
    """Latent ``(B, latent)`` and scaled energy ``(B,)`` → non-negative image ``(B, 1, L, N, N)``:
    dense layers to a ``ceil(shape / 8)`` grid, three stride-2 transposed 3-d convolutions (the
    last to one channel), cropped to the image, a ReLU. (No convolution at full resolution
    beyond the last transposed one: on a CPU that would cost more than the rest together.)"""

    def __init__(self, shape: Sequence[int], widths: Sequence[int], hidden: int, latent: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.latent = latent
        c0, c1, c2 = widths
        self.grid = tuple(math.ceil(s / 8) for s in shape)
        act = nn.LeakyReLU(0.2)
        self.dense = nn.Sequential(
            nn.Linear(latent + 1, hidden), act, nn.Linear(hidden, c2 * math.prod(self.grid)), act
        )
        last = nn.ConvTranspose3d(c0, 1, 4, 2, 1)
        nn.init.constant_(last.bias, 1.0)  # live ReLUs, cells above the threshold
        self.up = nn.Sequential(
            nn.ConvTranspose3d(c2, c1, 4, 2, 1), act, nn.ConvTranspose3d(c1, c0, 4, 2, 1), act, last
        )

    def forward(self, z: Tensor, e: Tensor) -> Tensor:
        h = self.dense(torch.cat([z, e[:, None]], 1)).reshape(len(z), -1, *self.grid)
        length, n, m = self.shape
        return torch.relu(self.up(h)[:, :, :length, :n, :m])


class Critic(nn.Module):
    """WGAN critic of ``images`` (images stacked as channels) and the scaled energy: a score per
    shower. ``n_images=1``: the shower critic; 2: the pair critic of (input, candidate)."""

    def __init__(self, shape: Sequence[int], widths: Sequence[int], hidden: int, n_images: int = 1) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.conv = _down_stack(n_images + 1, widths)
        flat = _flat_size(self.conv, n_images + 1, shape)
        self.head = nn.Sequential(nn.Linear(flat + 1, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, images: Tensor, e: Tensor) -> Tensor:
        h = self.conv(torch.cat([images, _energy_channel(e, self.shape)], 1)).flatten(1)
        return self.head(torch.cat([h, e[:, None]], 1)).squeeze(1)


class PostProcessor(nn.Module):
    """Per-cell correction: a stack of energy-conditioned 1×1×1 convolutions mapping an image
    ``(B, 1, L, N, N)`` (scaled, non-negative) and scaled energy ``(B,)`` to a corrected,
    non-negative image of the same shape, ``relu(x + delta(x, e))``.

    A 1×1×1 convolution is a linear map of each cell's channels: they run as ``nn.Linear`` on
    channel-last cells (the same function, many times faster than ``Conv3d`` on a CPU). The
    last layer starts at zero: a new post-processor is the identity."""

    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        mods: list[nn.Module] = [nn.Linear(2, hidden), act]
        for _ in range(layers - 1):
            mods += [nn.Linear(hidden, hidden), act]
        last = nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        cells = x.reshape(len(x), -1, 1)
        inputs = torch.cat([cells, e.reshape(-1, 1, 1).expand_as(cells)], 2)
        return torch.relu(x + self.net(inputs).reshape(x.shape))


def mmd(a: Tensor, b: Tensor, bandwidths: Sequence[float] = (0.05, 0.2, 1.0, 5.0)) -> Tensor:
    """Biased squared MMD between samples ``a`` (n, d) and ``b`` (m, d), Gaussian kernels on the
    per-dimension mean squared distance at each of ``bandwidths`` (summed)."""
    x = torch.cat([a, b])
    d2 = torch.cdist(x, x).square() / a.shape[1]
    k = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    n = len(a)
    assert isinstance(k, Tensor)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def gradient_penalty(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    e: Tensor,
    gen: torch.Generator | None = None,
    alpha: Tensor | None = None,
) -> Tensor:
    """WGAN-GP: mean ``(|grad critic| - 1)^2`` at random points between ``real`` and ``fake``
    (``alpha`` ``(B, 1, 1, 1, 1)``, else drawn with ``gen``)."""
    if alpha is None:
        alpha = rand((len(real), 1, 1, 1, 1), gen, real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mix, e).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


class BIBAE(nn.Module):
    """Encoder, decoder and post-processor of one detector's images (the critics belong to
    training, not to the model)."""

    def __init__(self, config: BIBAEConfig, detector: Detector, energy_range: tuple[float, float]) -> None:
        super().__init__()
        self.config, self.detector = config, detector
        self.shape = image_shape(detector)
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        c = config
        self.encoder = Encoder(self.shape, c.channels, c.hidden, c.latent)
        self.decoder = Decoder(self.shape, c.channels, c.hidden, c.latent + c.noise_dims)
        self.post = PostProcessor(c.post_hidden, c.post_layers)
        self.complete = False

    # ---- scales
    def energy_condition(self, e_inc_gev: Tensor) -> Tensor:
        """``(B,)``: the incident energy over ``energy_scale_gev``."""
        return e_inc_gev.float() / self.config.energy_scale_gev

    def to_scaled(self, voxels: Tensor) -> Tensor:
        """Flat cells ``(B, L·N·N)`` (MeV) → scaled images ``(B, 1, L, N, N)``."""
        return torch.log1p(voxels.clamp_min(0) / self.config.log_scale_mev).reshape(-1, 1, *self.shape)

    def from_scaled(self, x: Tensor) -> Tensor:
        """Scaled images → flat cells (MeV), cells below the detector threshold set to 0."""
        mev = torch.expm1(x.clamp_min(0)).reshape(len(x), -1) * self.config.log_scale_mev
        return torch.where(mev >= self.detector.threshold_mev, mev, torch.zeros_like(mev))

    # ---- the networks
    def encode(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """Latent mean and log-variance of scaled images ``x`` with scaled energies ``e``."""
        return self.encoder(x, e)

    def decode(
        self, z: Tensor, e: Tensor, gen: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Scaled images (before the post-processor) of latents ``z``; the decoder's
        ``noise_dims`` extra inputs are ``noise``, else fresh N(0, 1) draws from ``gen`` (the
        information the bottleneck does not carry: cell-level fluctuations, as the BIB-AE's
        noise inputs)."""
        if noise is None:
            noise = randn((len(z), self.config.noise_dims), gen, z.device)
        return self.decoder(torch.cat([z, noise], 1), e)

    @torch.no_grad()
    def sample(self, e_inc_gev: Tensor, gen: torch.Generator, latent_scale: float = 1.0) -> Tensor:
        """Cell showers (MeV, thresholded) ``(B, L·N·N)`` for the incident energies (GeV)."""
        e = self.energy_condition(e_inc_gev)
        z = randn((len(e), self.config.latent), gen, e.device) * latent_scale
        return self.from_scaled(self.post(self.decode(z, e, gen), e))

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of each part."""
        return {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("encoder", "decoder", "post")
        }

    # ---- checkpoint form
    def inference_state(self) -> dict[str, Any]:
        """Everything :func:`~caloforge.models.bibae.checkpoint.load_model` needs."""
        return detector_state(self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
