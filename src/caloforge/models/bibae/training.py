"""BIB-AE training in two stages, checkpointed and resumable (:mod:`caloforge.models._training`).

Stage 1 (``config.ae_steps`` steps) trains encoder and decoder against two WGAN-GP critics,
one critic update and one autoencoder update per step:

* the **shower critic** scores real images against images decoded from ``z ~ N(0, 1)`` (with
  the real batch's energies);
* the **pair critic** scores ``(input, input)`` (real pairs) against ``(input, reconstruction)``
  (the papers' critic that replaces a pixel loss: a reconstruction is good when the pair cannot
  be told from the input doubled);
* the autoencoder loss is ``beta_kl · KL + w_mmd · MMD(encoded z, N(0, 1) draws)
  - w_critic · critic(decoded prior) - w_recon_critic · pair critic(input, recon)
  + w_pixel · MSE(recon, input)``; the small pixel term (not in the papers) steadies the short
  CPU runs (``w_pixel = 0`` in the paper preset).

At the switch the encoder and decoder take their EMA weights and freeze. Stage 2
(``config.post_steps``) trains only the post-processor, on the frozen decoder's outputs:
``w_hit_mmd · MMD(sorted leading cells of post(decode(z ~ N(0, 1))), of real images)`` (the
hit-energy spectrum, compared as sorted vectors of each shower's ``hit_mmd_cells`` hottest
cells) ``+ w_post_pixel · MSE(post(reconstruction), input)`` ``+ w_post_energy`` × the squared
relative error of each post-processed reconstruction's visible energy (without it the hit MMD
alone doubled the showers' energy in the first CPU run). EMA of the whole model throughout.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from caloforge.models._placement import randn
from caloforge.models._training import (
    EMATrainer,
    RunOptions,
    TrainResult,
    optimizer_step,
    train_run,
)
from caloforge.models.bibae.checkpoint import CHECKPOINTS
from caloforge.models.bibae.config import BIBAEConfig
from caloforge.models.bibae.model import BIBAE, Critic, gradient_penalty, mmd
from caloforge.models.nn.ema import EMA
from caloforge.models.voxel_features import VoxelData, load_voxel_file

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Images", "load_images", "train"]


#: A cell-image file in memory (the name BIB-AE's API has used).
Images = VoxelData


def load_images(path: str | Path, max_showers: int | None = None, min_showers: int = 20) -> VoxelData:
    """The showers of a cell-image file (its first ``max_showers``), refusing point files and
    polar-voxel files in one line."""
    return load_voxel_file(path, "cells", "BIB-AE", max_showers, min_showers)


def _kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL of N(mu, exp(logvar)) to N(0, 1), summed over the latent, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)).mean()


class _Trainer(EMATrainer):
    """Mutable state of one BIB-AE training run, and one step of it.

    One process only (``distributed = False``): the latent and hit-energy MMDs compare whole
    batches, so a rank's share of a batch does not give its share of the loss. Float32 only:
    the critics' gradient penalties differentiate twice, which bfloat16 does not carry."""

    live_key = "model"
    distributed = False

    def __init__(self, config: BIBAEConfig, data: Images) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = BIBAE(config, data.detector, data.energy_range)
            shape = self.model.shape
            self.critics = nn.ModuleDict(
                {
                    "shower": Critic(shape, config.critic_channels, config.hidden, 1),
                    "pair": Critic(shape, config.critic_channels, config.hidden, 2),
                }
            )
        self.start(config, data)
        self.ae = nn.ModuleList([self.model.encoder, self.model.decoder])
        self.ema = EMA(self.model, config.ema_decay)
        betas = (0.5, 0.9)
        self.opt_ae = torch.optim.Adam(self.ae.parameters(), lr=config.lr, betas=betas)
        self.opt_post = torch.optim.Adam(self.model.post.parameters(), lr=config.lr)
        self.opt_critic = torch.optim.Adam(self.critics.parameters(), lr=config.lr_critic, betas=betas)

    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        m, put = self.model, self.place.put
        return m.to_scaled(put(self.data.voxels[idx])), m.energy_condition(put(self.data.energy[idx]))

    def _noise(self, n: int) -> Tensor:
        return randn((n, self.config.latent), self.gen, self.place.device)

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        idx = self.train_idx[torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)]
        x, e = self._batch(idx)
        if self.step < cfg.ae_steps:
            out = self._ae_step(x, e)
        else:
            if self.step == cfg.ae_steps:
                self._freeze_autoencoder()
            out = self._post_step(x, e)
        if len(self.val_idx) and (self.step + 1) % cfg.val_every == 0:
            out.append(("val", self.validation_loss()))
        return out

    def _ae_step(self, x: Tensor, e: Tensor) -> list[tuple[str, float | None]]:
        cfg, m, crit = self.config, self.model, self.critics
        m.train()
        mu, logvar = m.encode(x, e)
        z = mu + (0.5 * logvar).exp() * randn(mu.shape, self.gen, mu.device)
        recon = m.decode(z, e, self.gen)
        fake = m.decode(self._noise(len(x)), e, self.gen)
        # the critics: Wasserstein estimates plus gradient penalties
        crit.requires_grad_(True)
        fake_d, recon_d = fake.detach(), recon.detach()
        real_pair, recon_pair = torch.cat([x, x], 1), torch.cat([x, recon_d], 1)
        c_loss = (
            (crit["shower"](fake_d, e) - crit["shower"](x, e)).mean()
            + (crit["pair"](recon_pair, e) - crit["pair"](real_pair, e)).mean()
            + cfg.gp_lambda
            * (
                gradient_penalty(crit["shower"], x, fake_d, e, self.gen)
                + gradient_penalty(crit["pair"], real_pair, recon_pair, e, self.gen)
            )
        )
        c_value: float | None = c_loss.item()
        if not optimizer_step(c_loss, crit, self.opt_critic, cfg.grad_clip):
            self.skipped += 1
            c_value = None
        # the autoencoder
        crit.requires_grad_(False)
        kl = _kl(mu, logvar)
        latent_mmd = mmd(z, self._noise(len(z)))
        pixel = (recon - x).square().mean()
        loss = (
            cfg.beta_kl * kl
            + cfg.w_mmd * latent_mmd
            - cfg.w_critic * crit["shower"](fake, e).mean()
            - cfg.w_recon_critic * crit["pair"](torch.cat([x, recon], 1), e).mean()
            + cfg.w_pixel * pixel
        )
        value: float | None = loss.item()
        if optimizer_step(loss, self.ae, self.opt_ae, cfg.grad_clip):
            self.ema.update(m)
        else:
            self.skipped += 1
            value = None
        crit.requires_grad_(True)
        return [
            ("critic", c_value),
            ("ae", value),
            ("kl", kl.item()),
            ("mmd", latent_mmd.item()),
            ("pixel", pixel.item()),
        ]

    def _freeze_autoencoder(self) -> None:
        """Give the live encoder and decoder their EMA weights (the post-processor learns on
        what generation will decode with)."""
        avg = self.ema.module
        self.model.encoder.load_state_dict(avg.encoder.state_dict())
        self.model.decoder.load_state_dict(avg.decoder.state_dict())

    def _hit_vectors(self, x: Tensor) -> Tensor:
        """Each shower's ``hit_mmd_cells`` hottest scaled cells, sorted."""
        flat = x.flatten(1)
        return flat.topk(min(self.config.hit_mmd_cells, flat.shape[1]), dim=1).values

    def _post_step(self, x: Tensor, e: Tensor) -> list[tuple[str, float | None]]:
        cfg, m = self.config, self.model
        m.eval()
        with torch.no_grad():
            mu, logvar = m.encode(x, e)
            recon = m.decode(mu + (0.5 * logvar).exp() * randn(mu.shape, self.gen, mu.device), e, self.gen)
            prior = m.decode(self._noise(len(x)), e, self.gen)
        m.post.train()
        hit = mmd(self._hit_vectors(m.post(prior, e)), self._hit_vectors(x))
        fixed = m.post(recon, e)
        pixel = (fixed - x).square().mean()
        # each reconstruction's visible energy (MeV, above threshold) against its input's
        visible = m.from_scaled(fixed).sum(1)
        target = m.from_scaled(x).sum(1)
        energy = ((visible - target) / target.clamp_min(1.0)).square().mean()
        loss = cfg.w_hit_mmd * hit + cfg.w_post_pixel * pixel + cfg.w_post_energy * energy
        value: float | None = loss.item()
        if optimizer_step(loss, m.post, self.opt_post, cfg.grad_clip):
            self.ema.update(m)
        else:
            self.skipped += 1
            value = None
        return [
            ("post", value),
            ("hit_mmd", hit.item()),
            ("post_pixel", pixel.item()),
            ("post_energy", energy.item()),
        ]

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean squared error (scaled cells) of the EMA model's post-processed reconstructions
        from the latent means, on up to 256 validation showers."""
        avg = self.ema.module
        idx = self.val_idx[:256]
        gen = torch.Generator().manual_seed(self.config.seed)  # the same noise at every validation
        total = 0.0
        for lo in range(0, len(idx), 64):
            x, e = self._batch(idx[lo : lo + 64])
            mu, _ = avg.encode(x, e)
            total += (avg.post(avg.decode(mu, e, gen), e) - x).square().mean().item() * len(x)
        return total / len(idx)

    def averaged(self) -> nn.Module:
        return self.model

    def device_modules(self) -> list[nn.Module]:
        return [*super().device_modules(), self.critics]

    def parts(self) -> dict[str, Any]:
        return {
            "critics": self.critics,
            "opt_ae": self.opt_ae,
            "opt_post": self.opt_post,
            "opt_critic": self.opt_critic,
        }


def train(
    config: BIBAEConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_showers: int | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train BIB-AE on the cell-image file ``data_path`` (its first ``max_showers``);
    checkpoint in ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses (stage 1: ``critic``, ``ae``,
    ``kl``, ``mmd``, ``pixel``; stage 2: ``post``, ``hit_mmd``, ``post_pixel``; both: ``val``,
    the EMA model's reconstruction error on the held-back showers).
    """
    load = partial(load_images, max_showers=max_showers)
    return train_run(config, data_path, out_dir, CHECKPOINTS.check_state, load, _Trainer, **run)
