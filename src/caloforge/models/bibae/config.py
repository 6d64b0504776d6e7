"""BIB-AE run settings; presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caloforge.models._config import EMALoopConfig


@dataclass(frozen=True)
class BIBAEConfig(EMALoopConfig):
    """Settings of one BIB-AE training run.

    ``steps`` counts both stages: the first ``steps - post_steps`` train the autoencoder
    (encoder, decoder and the two critics), the last ``post_steps`` the post-processor with the
    autoencoder frozen at its EMA weights.

    Presets: ``cpu`` (2 CPU cores, about 15-20 minutes on 10k showers, ~0.4-0.9 s a step: what
    is cut versus the papers is the width (convolutions 8/16/32 instead of 64-256, critics as
    narrow, an 8-wide post-processor), the length (1200 autoencoder + 400 post-processor
    steps instead of hundreds of thousands of GAN iterations), one critic update per step, and
    a pixel term added for stability; the 24-dim latent is the photon paper's), ``paper``
    (paper-scale widths and steps, for a GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "BIB-AE"

    steps: int = 1600
    post_steps: int = 400
    batch_size: int = 32
    lr: float = 5e-4  # encoder, decoder and post-processor (Adam)
    lr_critic: float = 5e-4
    log_every: int = 50
    # networks: 3-d convolution widths of the encoder (the decoder mirrors them), the latent,
    # the dense width at the bottleneck, the critics' widths, the post-processor's 1x1x1 stack
    channels: tuple[int, ...] = (8, 16, 32)
    latent: int = 24
    # N(0, 1) inputs of the decoder beside the latent, drawn afresh for every decode (the public
    # 30^3 photon BIB-AE feeds its decoder 500 of them beside a 12-dim encoded latent)
    noise_dims: int = 32
    hidden: int = 128
    critic_channels: tuple[int, ...] = (8, 16, 32)
    post_hidden: int = 8
    post_layers: int = 3
    # losses of the autoencoder stage
    beta_kl: float = 0.05  # KL of the encoded Gaussians to N(0, 1)
    w_mmd: float = 1.0  # MMD between encoded latents and N(0, 1) draws
    w_critic: float = 0.5  # shower critic: decoded-from-N(0, 1) vs real
    w_recon_critic: float = 1.0  # pair critic: (input, reconstruction) vs (input, input)
    w_pixel: float = 1.0  # mean squared error of the reconstruction (not in the papers)
    gp_lambda: float = 10.0  # WGAN-GP gradient penalty of both critics
    # losses of the post-processor stage
    w_hit_mmd: float = 5.0  # MMD on the sorted hit-energy vectors
    w_post_pixel: float = 1.0
    # squared relative error of a post-processed reconstruction's visible energy: the hit MMD
    # alone doubled the energy of the first CPU run's showers (E_vis/E_inc 0.049 vs 0.028)
    w_post_energy: float = 20.0
    hit_mmd_cells: int = 800  # the leading cells of a shower the hit MMD compares
    # scales: cells live in log1p(MeV / log_scale_mev); the energy condition is E / energy_scale_gev
    log_scale_mev: float = 0.1
    energy_scale_gev: float = 100.0
    # sampling: width of the latent draws (1 = the prior)
    latent_scale: float = 1.0

    @property
    def ae_steps(self) -> int:
        """Steps of the autoencoder stage."""
        return self.steps - self.post_steps

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("latent", "hidden", "post_hidden", "post_layers", "hit_mmd_cells"),
            at_least_zero=("noise_dims",),
            positive=("lr_critic", "log_scale_mev", "energy_scale_gev", "latent_scale"),
            non_negative=("beta_kl", "w_mmd", "w_critic", "w_recon_critic", "w_pixel", "gp_lambda",
                          "w_hit_mmd", "w_post_pixel", "w_post_energy"),
            fractions={"val_fraction": (0, 0.5), "ema_decay": (0, 1)},
        )  # fmt: skip
        if not 0 <= self.post_steps < self.steps:
            raise ValueError(
                f"BIB-AE config: post_steps must be in [0, steps), got {self.post_steps} of {self.steps}"
            )
        if self.batch_size < 2:
            raise ValueError(f"BIB-AE config: batch_size must be at least 2 (MMD), got {self.batch_size}")
        for name in ("channels", "critic_channels"):
            widths = getattr(self, name)
            if len(widths) != 3 or any(int(w) != w or w < 1 for w in widths):
                raise ValueError(f"BIB-AE config: {name} must be 3 positive integers, got {widths}")


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, BIBAEConfig] = BIBAEConfig.read_presets(__package__)
