"""EPiC networks for jets (SPEC 6.7) and the model that wraps them: preprocessing, losses, sampling.

Every variant uses one backbone, :class:`EPiCNet`: a per-particle embedding, a global vector
started from the pooled embedding and the conditioning vector, ``n_layers`` EPiC layers
(:class:`~caloforge.models.nn.epic.EPiCLayer`) and a per-particle linear head. It is

* EPiC-GAN's generator (input: per-particle noise; conditioning: the multiplicity and a
  per-jet noise vector), judged by :class:`EPiCDiscriminator` with the least-squares loss;
* EPiC-FM's velocity field (input: the noisy particles; conditioning: time features and
  the jet's pT, mass and multiplicity), trained by conditional flow matching;
* EPiC-JeDi's noise predictor (same inputs) on a variance-preserving cosine schedule.

Particles are modelled in standardised ``(eta_rel, phi_rel, log pt_rel)``; the multiplicity
sets the mask (the first ``n`` slots), and the generated particles are sorted by pT.

>>> from caloforge.models.epic.config import EPiCConfig
>>> net = EPiCNet(3, 3, 5, EPiCConfig.from_preset("smoke"))
>>> x, mask = torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool)
>>> net(x, mask, torch.zeros(2, 5)).shape
torch.Size([2, 4, 3])
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.models._placement import rand, randn
from caloforge.models.epic.conditions import ConditionFlow
from caloforge.models.epic.config import EPiCConfig
from caloforge.models.nn.epic import EPiCLayer, masked_pool
from caloforge.odesolvers import evaluations_per_step, solve_fixed

__all__ = [
    "CHECKPOINT_FORMATS",
    "CHECKPOINT_VERSION",
    "CONDITION_NAMES",
    "EPiCDiscriminator",
    "EPiCJetModel",
    "EPiCNet",
    "cosine_schedule",
    "time_features",
]

CHECKPOINT_FORMATS = {v: f"caloforge-epic-{v}" for v in ("gan", "fm", "jedi")}
CHECKPOINT_VERSION = 1
#: The jet features a conditional model takes (from a jet file's ``jet_features``).
CONDITION_NAMES = ("pt", "mass", "num_particles")
_SUM_SCALE = 1.0 / 30


def time_features(t: Tensor, dim: int, max_frequency: float = 20.0) -> Tensor:
    """Sinusoidal features of times ``t`` ``(B,)`` in [0, 1]: ``(B, dim)``, frequencies from 1
    to ``max_frequency`` cycles per unit time (geometric).

    >>> time_features(torch.tensor([0.0, 1.0]), 4).shape
    torch.Size([2, 4])
    """
    half = max(dim // 2, 1)
    freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, dtype=t.dtype, device=t.device))
    angles = t.unsqueeze(-1) * freqs * 2 * math.pi
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return out[:, :dim] if out.shape[1] >= dim else torch.cat([out, t.unsqueeze(-1)], dim=-1)


def cosine_schedule(t: Tensor) -> tuple[Tensor, Tensor]:
    """JeDi's variance-preserving schedule: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``."""
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


class EPiCNet(nn.Module):
    """Per-particle in, per-particle out, permutation-equivariant; padding stays zero."""

    def __init__(self, dim_in: int, dim_out: int, dim_cond: int, cfg: EPiCConfig) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim_in, cfg.dim_local), nn.LeakyReLU(0.01))
        self.global0 = nn.Sequential(
            nn.Linear(2 * cfg.dim_local + dim_cond, cfg.dim_global), nn.LeakyReLU(0.01)
        )
        self.layers = nn.ModuleList(
            EPiCLayer(cfg.dim_local, cfg.dim_global, cfg.hidden, dim_cond, _SUM_SCALE)
            for _ in range(cfg.n_layers)
        )
        self.head = nn.Linear(cfg.dim_local, dim_out)

    def forward(self, x: Tensor, mask: Tensor, cond: Tensor) -> Tensor:
        """``x`` ``(B, P, dim_in)``, ``mask`` ``(B, P)`` bool, ``cond`` ``(B, dim_cond)``."""
        m = mask.unsqueeze(-1).to(x.dtype)
        p = self.embed(x) * m
        g = self.global0(torch.cat([masked_pool(p, mask, _SUM_SCALE), cond], dim=-1))
        for layer in self.layers:
            p, g = layer(p, g, mask, cond)
        return self.head(p) * m


class EPiCDiscriminator(nn.Module):
    """EPiC-GAN's critic: embedding, ``disc_layers`` EPiC layers, pooled head → one score per jet."""

    def __init__(self, dim_in: int, dim_cond: int, cfg: EPiCConfig) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim_in, cfg.dim_local), nn.LeakyReLU(0.01))
        self.global0 = nn.Sequential(
            nn.Linear(2 * cfg.dim_local + dim_cond, cfg.dim_global), nn.LeakyReLU(0.01)
        )
        self.layers = nn.ModuleList(
            EPiCLayer(cfg.dim_local, cfg.dim_global, cfg.hidden, dim_cond, _SUM_SCALE)
            for _ in range(cfg.disc_layers)
        )
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.dim_local + cfg.dim_global + dim_cond, cfg.hidden), nn.LeakyReLU(0.01),
            nn.Linear(cfg.hidden, 1),
        )  # fmt: skip

    def forward(self, x: Tensor, mask: Tensor, cond: Tensor) -> Tensor:
        """Scores ``(B,)``."""
        p = self.embed(x) * mask.unsqueeze(-1).to(x.dtype)
        g = self.global0(torch.cat([masked_pool(p, mask, _SUM_SCALE), cond], dim=-1))
        for layer in self.layers:
            p, g = layer(p, g, mask, cond)
        return self.head(torch.cat([masked_pool(p, mask, _SUM_SCALE), g, cond], dim=-1)).squeeze(-1)


class EPiCJetModel(nn.Module):
    """One trained EPiC model: its network (and, for the GAN while training, the critic),
    the standardisation of particles and conditions, a table of training-jet features
    (``pt, eta, mass, num_particles``) and, with ``config.condition_flow``, the
    :class:`~caloforge.models.epic.conditions.ConditionFlow` that runs without a conditions file
    draw their jet features from (else from the table)."""

    def __init__(self, config: EPiCConfig, jet_type: str, condition_table: np.ndarray) -> None:
        super().__init__()
        self.config, self.jet_type = config, jet_type
        self.complete = False
        cfg = config
        n_cond = (3 if cfg.conditional else 1) + (cfg.latent_global if cfg.variant == "gan" else cfg.time_dim)
        dim_in = cfg.latent_local if cfg.variant == "gan" else 3
        self.net = EPiCNet(dim_in, 3, n_cond, cfg)
        self.disc = EPiCDiscriminator(3, 3 if cfg.conditional else 1, cfg) if cfg.variant == "gan" else None
        self.register_buffer("particle_mean", torch.zeros(3))
        self.register_buffer("particle_std", torch.ones(3))
        self.register_buffer("cond_mean", torch.zeros(3))
        self.register_buffer("cond_std", torch.ones(3))
        table = np.asarray(condition_table, np.float32).reshape(-1, 4)
        self.register_buffer("condition_table", torch.from_numpy(table.copy()))
        self.condition_flow: ConditionFlow | None = None
        if cfg.condition_flow:
            self.condition_flow = ConditionFlow(cfg.n_particles, cfg.flow_transforms, cfg.flow_hidden)

    # -- preprocessing ---------------------------------------------------------------------
    @staticmethod
    def raw_features(particles: Tensor) -> Tensor:
        """``(eta_rel, phi_rel, log pt_rel)`` of jet-file particles ``(B, P, 4)`` (padding → 0)."""
        mask = particles[..., 3] > 0.5
        logpt = torch.log(particles[..., 2].clamp_min(1e-8))
        x = torch.stack([particles[..., 0], particles[..., 1], logpt], dim=-1)
        return x * mask.unsqueeze(-1).to(x.dtype)

    @staticmethod
    def raw_conditions(jet: Tensor) -> Tensor:
        """``(log pt, log mass, num_particles)`` of jet features ``(B, 4)``."""
        return torch.stack(
            [jet[:, 0].clamp_min(1e-3).log(), jet[:, 2].clamp_min(1e-3).log(), jet[:, 3]], dim=-1
        )

    def fit_standardisation(self, particles: Tensor, jet: Tensor) -> None:
        """Means and widths of the particle features (over real particles) and the conditions."""
        mask = particles[..., 3] > 0.5
        x = self.raw_features(particles)[mask].double()
        self.particle_mean.copy_(x.mean(0).float())
        self.particle_std.copy_(x.std(0).clamp_min(1e-3).float())
        c = self.raw_conditions(jet).double()
        self.cond_mean.copy_(c.mean(0).float())
        self.cond_std.copy_(c.std(0).clamp_min(1e-3).float())

    def features(self, particles: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised particle features and the mask of jet-file particles."""
        mask = particles[..., 3] > 0.5
        x = (self.raw_features(particles) - self.particle_mean) / self.particle_std
        return x * mask.unsqueeze(-1).to(x.dtype), mask

    def conditions(self, jet: Tensor) -> Tensor:
        """The network's jet conditioning: standardised (log pt, log mass, n), or n alone."""
        c = (self.raw_conditions(jet) - self.cond_mean) / self.cond_std
        return c if self.config.conditional else c[:, 2:]

    @staticmethod
    def mask_for(multiplicity: Tensor, n_particles: int) -> Tensor:
        """``(B, P)`` mask whose first ``multiplicity`` slots are set."""
        slots = torch.arange(n_particles, device=multiplicity.device)
        return slots.unsqueeze(0) < multiplicity.unsqueeze(1)

    def to_particles(self, x: Tensor, mask: Tensor) -> Tensor:
        """Jet-file particles ``(B, P, 4)`` from standardised features: pT from the log, the
        particles of each jet sorted by pT, padding last and zero."""
        raw = x * self.particle_std + self.particle_mean
        pt = torch.exp(raw[..., 2].clamp(max=0.0)) * mask
        order = torch.argsort(torch.where(mask, pt, torch.full_like(pt, -1.0)), dim=1, descending=True)
        phi = torch.remainder(raw[..., 1] + math.pi, 2 * math.pi) - math.pi
        out = torch.stack([raw[..., 0], phi, pt, mask.to(x.dtype)], dim=-1) * mask.unsqueeze(-1)
        return torch.gather(out, 1, order.unsqueeze(-1).expand(-1, -1, 4))

    # -- losses ---------------------------------------------------------------------------
    def _time_cond(self, t: Tensor, jet_cond: Tensor) -> Tensor:
        cfg = self.config
        return torch.cat([time_features(t, cfg.time_dim, cfg.time_max_frequency), jet_cond], dim=-1)

    def loss_draws(self, x: Tensor, mask: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The random numbers of the variant's loss for the batch ``x`` (``mask``), drawn with
        ``gen`` on the host and put on ``x``'s device: ``(t, eps)`` for FM and JeDi, the local
        and global latent noise ``(z, zg)`` for the GAN's generator."""
        cfg = self.config
        if cfg.variant == "gan":
            z = randn((*mask.shape, cfg.latent_local), gen, x.device) * mask.unsqueeze(-1)
            return z, randn((len(mask), cfg.latent_global), gen, x.device)
        t = rand((len(x),), gen, x.device)
        if cfg.variant == "jedi":
            t = t * 0.998 + 1e-3
        elif cfg.time_power != 1.0:
            t = t ** (1.0 / cfg.time_power)
        return t, randn(x.shape, gen, x.device)

    def fm_loss(
        self,
        x1: Tensor,
        mask: Tensor,
        jet_cond: Tensor,
        gen: torch.Generator | None = None,
        draws: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Conditional flow matching (noise at t = 0, data at t = 1): masked squared error of
        the velocity against ``x1 - (1 - sigma_min) eps`` (``draws``: :meth:`loss_draws`,
        else drawn with ``gen``)."""
        s = self.config.sigma_min
        t, eps = draws if draws is not None else self.loss_draws(x1, mask, gen)  # type: ignore[arg-type]
        tt = t.view(-1, 1, 1)
        xt = ((1 - (1 - s) * tt) * eps + tt * x1) * mask.unsqueeze(-1)
        target = x1 - (1 - s) * eps
        v = self.net(xt, mask, self._time_cond(t, jet_cond))
        return _masked_mse(v, target, mask)

    def jedi_loss(
        self,
        x0: Tensor,
        mask: Tensor,
        jet_cond: Tensor,
        gen: torch.Generator | None = None,
        draws: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """JeDi's denoising loss on the cosine schedule: weighted masked squared error of the
        predicted noise, weight ``1 - jedi_alpha * beta(t) / sigma(t)^2`` (floored at 0)
        (``draws``: :meth:`loss_draws`, else drawn with ``gen``)."""
        t, eps = draws if draws is not None else self.loss_draws(x0, mask, gen)  # type: ignore[arg-type]
        alpha, sigma = cosine_schedule(t)
        xt = (alpha.view(-1, 1, 1) * x0 + sigma.view(-1, 1, 1) * eps) * mask.unsqueeze(-1)
        pred = self.net(xt, mask, self._time_cond(t, jet_cond))
        beta = math.pi * torch.tan(0.5 * math.pi * t)  # -d log(alpha^2)/dt
        weight = (1 - self.config.jedi_alpha * beta / sigma**2).clamp_min(0.0)
        m = mask.unsqueeze(-1).float()  # counts in float32, also under autocast
        per_jet = (((pred - eps) ** 2) * m).sum(dim=(1, 2)) / (m.sum(dim=(1, 2)) * 3).clamp_min(1)
        return (weight * per_jet).mean()

    def gan_generate(
        self,
        mask: Tensor,
        jet_cond: Tensor,
        gen: torch.Generator | None = None,
        draws: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The generator's standardised particles for ``mask`` (noise ``draws``, else drawn
        with ``gen``: :meth:`loss_draws`)."""
        z, zg = draws if draws is not None else self.loss_draws(jet_cond, mask, gen)  # type: ignore[arg-type]
        return self.net(z, mask, torch.cat([jet_cond, zg], dim=-1))

    # -- sampling -------------------------------------------------------------------------
    def network_calls(self, sampler: str, steps: int) -> int:
        """Network evaluations one jet costs with ``sampler`` and ``steps``."""
        if self.config.variant == "gan":
            return 1
        if self.config.variant == "jedi":
            return steps
        return evaluations_per_step(sampler) * steps

    @torch.no_grad()
    def sample(
        self, jet: Tensor, sampler: str, steps: int, gen: torch.Generator, clip: float | None = None
    ) -> Tensor:
        """Jet-file particles ``(B, P, 4)`` for jet features ``jet`` ``(B, 4)`` (pT, mass used
        by conditional models; the multiplicity by all); ``clip``: JeDi's DDIM clipping
        (default ``config.jedi_clip``). Runs on the device of ``jet``; the noise is drawn on the
        host with ``gen``."""
        n_particles = self.config.n_particles
        multiplicity = jet[:, 3].round().long().clamp(1, n_particles)
        mask = self.mask_for(multiplicity, n_particles)
        jet_cond = self.conditions(jet)
        m = mask.unsqueeze(-1).float()
        if self.config.variant == "gan":
            x = self.gan_generate(mask, jet_cond, gen)
        elif self.config.variant == "fm":
            x0 = randn((*mask.shape, 3), gen, mask.device) * m

            def velocity(t: Tensor, x: Tensor) -> Tensor:
                return self.net(x, mask, self._time_cond(t.expand(len(x)), jet_cond))

            x = solve_fixed(velocity, x0, sampler, steps)
        else:
            x = randn((*mask.shape, 3), gen, mask.device) * m
            limit = self.config.jedi_clip if clip is None else clip
            # DDIM (deterministic): from t = 1 to 0 in ``steps`` network calls, the last one
            # returning its (clipped) prediction of the clean particles.
            times = torch.linspace(1.0 - 1e-3, 0.0, steps + 1, device=mask.device)
            for t_now, t_next in itertools.pairwise(times):
                a, s = cosine_schedule(t_now)
                a2, s2 = cosine_schedule(t_next)
                eps = self.net(x, mask, self._time_cond(t_now.expand(len(x)), jet_cond))
                x0 = ((x - s * eps) / a).clamp(-limit, limit)  # DDIM's clipping of the clean estimate
                x = (a2 * x0 + s2 * eps) * m
        return self.to_particles(x * m, mask)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters per network."""
        out = {"network": sum(p.numel() for p in self.net.parameters())}
        if self.condition_flow is not None:
            out["condition flow"] = sum(p.numel() for p in self.condition_flow.parameters())
        if self.disc is not None:
            out["critic"] = sum(p.numel() for p in self.disc.parameters())
        return out

    def inference_state(self) -> dict[str, Any]:
        """What an inference checkpoint holds (no critic, no training state)."""
        weights = {k: v for k, v in self.state_dict().items() if not k.startswith("disc.")}
        return {
            "format": CHECKPOINT_FORMATS[self.config.variant],
            "format_version": CHECKPOINT_VERSION,
            "config": json.dumps(self.config.to_dict()),
            "jet_type": self.jet_type,
            "complete": self.complete,
            "model": weights,
        }


def _masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).float()  # counts in float32, also under autocast
    return (((pred - target) ** 2) * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1)
