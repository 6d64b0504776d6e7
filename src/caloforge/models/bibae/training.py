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

from caloforge.models._distributed import gather_shares, shard
from caloforge.models._placement import rand, randn
from caloforge.models._training import (
    EMATrainer,
    RunOptions,
    Term,
    TrainResult,
    combine_terms,
    distributed_step,
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

    Data-parallel: every rank draws the global batch and all its noise; the per-shower terms
    are weighted by the rank's share, and the latent and hit-energy MMDs, which compare whole
    batches, are computed on the gathered batch on every rank (:func:`gather_shares`) with
    weight ``1 / size``. Float32 only: the critics' gradient penalties differentiate twice,
    which bfloat16 does not carry."""

    live_key = "model"

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

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        idx = self.train_idx[torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)]
        x, e = self._batch(idx)  # the global batch; each step takes this rank's share
        if self.step < cfg.ae_steps:
            out = self._ae_step(x, e)
        else:
            if self.step == cfg.ae_steps:
                self._freeze_autoencoder()
            out = self._post_step(x, e)
        if len(self.val_idx) and (self.step + 1) % cfg.val_every == 0:
            out.append(("val", self.validation_loss()))
        return out

    def _noise_of(self, n: int) -> tuple[Any, Any]:
        """Drawers of the global batch's noise (``n`` showers; normal, uniform), in the order
        they are called, each returning this rank's share on the device."""
        mine, device = shard(n), self.place.device

        def normal(*shape: int) -> Tensor:
            return randn((n, *shape), self.gen, device)[mine]

        def uniform(*shape: int) -> Tensor:
            return rand((n, *shape), self.gen, device)[mine]

        return normal, uniform

    def _update(
        self, terms: list[Term], showers: int, module: nn.Module, opt: torch.optim.Optimizer
    ) -> tuple[dict[str, float], float | None]:
        """One update of ``module`` with the loss of ``terms`` (this rank's share of them):
        the logged terms and the global loss (None: skipped, and counted)."""
        loss, logged = combine_terms(terms, showers)
        value = distributed_step(loss, module, opt, self.config.grad_clip)
        if value is None:
            self.skipped += 1
        return dict(logged), value

    def _ae_step(self, x: Tensor, e: Tensor) -> list[tuple[str, float | None]]:
        cfg, m, crit = self.config, self.model, self.critics
        normal, uniform = self._noise_of(len(x))
        eps, dec_recon = normal(cfg.latent), normal(cfg.noise_dims)
        prior, dec_prior = normal(cfg.latent), normal(cfg.noise_dims)
        alpha_shower, alpha_pair = uniform(1, 1, 1, 1), uniform(1, 1, 1, 1)
        mmd_prior = randn((len(x), cfg.latent), self.gen, x.device)  # the global batch's, on every rank
        mine = shard(len(x))
        x, e = x[mine], e[mine]
        m.train()
        mu, logvar = m.encode(x, e)
        z = mu + (0.5 * logvar).exp() * eps
        recon = m.decode(z, e, noise=dec_recon)
        fake = m.decode(prior, e, noise=dec_prior)
        # the critics: Wasserstein estimates plus gradient penalties
        crit.requires_grad_(True)
        fake_d, recon_d = fake.detach(), recon.detach()
        real_pair, recon_pair = torch.cat([x, x], 1), torch.cat([x, recon_d], 1)
        c_loss = (
            (crit["shower"](fake_d, e) - crit["shower"](x, e)).mean()
            + (crit["pair"](recon_pair, e) - crit["pair"](real_pair, e)).mean()
            + cfg.gp_lambda
            * (
                gradient_penalty(crit["shower"], x, fake_d, e, alpha=alpha_shower)
                + gradient_penalty(crit["pair"], real_pair, recon_pair, e, alpha=alpha_pair)
            )
        )
        _, c_value = self._update([Term("critic", c_loss)], len(x), crit, self.opt_critic)
        # the autoencoder; the latent MMD compares whole batches: every rank takes the global one
        crit.requires_grad_(False)
        terms = [
            Term("kl", _kl(mu, logvar), weight=cfg.beta_kl),
            Term("mmd", mmd(gather_shares(z), mmd_prior), units=1, weight=cfg.w_mmd),
            Term("fake", crit["shower"](fake, e).mean(), weight=-cfg.w_critic),
            Term("pair", crit["pair"](torch.cat([x, recon], 1), e).mean(), weight=-cfg.w_recon_critic),
            Term("pixel", (recon - x).square().mean(), weight=cfg.w_pixel),
        ]
        logged, value = self._update(terms, len(x), self.ae, self.opt_ae)
        if value is not None:
            self.ema.update(m)
        crit.requires_grad_(True)
        return [("critic", c_value), ("ae", value), *((k, logged[k]) for k in ("kl", "mmd", "pixel"))]

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
        normal, _ = self._noise_of(len(x))
        eps, dec_recon = normal(cfg.latent), normal(cfg.noise_dims)
        prior, dec_prior = normal(cfg.latent), normal(cfg.noise_dims)
        real_hits = self._hit_vectors(x)  # the global batch's, on every rank
        mine = shard(len(x))
        x, e = x[mine], e[mine]
        m.eval()
        with torch.no_grad():
            mu, logvar = m.encode(x, e)
            recon = m.decode(mu + (0.5 * logvar).exp() * eps, e, noise=dec_recon)
            prior_images = m.decode(prior, e, noise=dec_prior)
        m.post.train()
        fixed = m.post(recon, e)
        # each reconstruction's visible energy (MeV, above threshold) against its input's
        visible = m.from_scaled(fixed).sum(1)
        target = m.from_scaled(x).sum(1)
        fake_hits = gather_shares(self._hit_vectors(m.post(prior_images, e)))
        energy = ((visible - target) / target.clamp_min(1.0)).square().mean()
        terms = [
            Term("hit_mmd", mmd(fake_hits, real_hits), units=1, weight=cfg.w_hit_mmd),
            Term("post_pixel", (fixed - x).square().mean(), weight=cfg.w_post_pixel),
            Term("post_energy", energy, weight=cfg.w_post_energy),
        ]
        logged, value = self._update(terms, len(x), m.post, self.opt_post)
        if value is not None:
            self.ema.update(m)
        return [("post", value), *((k, logged[k]) for k in ("hit_mmd", "post_pixel", "post_energy"))]

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
