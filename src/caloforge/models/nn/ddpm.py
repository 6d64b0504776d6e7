"""Discrete-time denoising diffusion (DDPM, Ho et al. 2020) as CaloClouds (I) uses it: a fixed
schedule of ``n_steps`` noise levels, an epsilon-predicting network and ancestral sampling.

Plain functions over a network ``eps(x_t, c_noise, **cond)``; the noise level of step ``t``
enters the network as ``c_noise = ln(sigma_t) / 4`` with ``sigma_t^2 = (1 - abar_t) / abar_t``,
the same embedding the EDM PointWise Net uses, so one network class serves both.

>>> s = DDPMSchedule(100, 1e-4, 0.02, "linear")
>>> s.betas.shape, round(float(s.alphas_bar[-1]), 3)
(torch.Size([100]), 0.364)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from caloforge.models._placement import randn

__all__ = ["SCHEDULES", "DDPMSchedule", "ddpm_loss", "ddpm_noise", "sample_ddpm"]

#: ``linear``: betas evenly spaced; ``quadratic``: their square roots evenly spaced (the
#: CaloClouds code's choice).
SCHEDULES = ("linear", "quadratic")


class DDPMSchedule:
    """The betas of ``n_steps`` discrete steps from ``beta_start`` to ``beta_end`` and what
    follows from them (float64 internally, float32 out)."""

    def __init__(
        self, n_steps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "quadratic"
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown beta schedule '{kind}': use {' or '.join(SCHEDULES)}")
        if n_steps < 1 or not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need n_steps >= 1 and 0 < beta_start <= beta_end < 1, got {n_steps}, "
                             f"{beta_start}, {beta_end}")  # fmt: skip
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
        else:
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n_steps, dtype=torch.float64) ** 2
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.n_steps = int(n_steps)
        self.betas = betas.float()
        self.alphas_bar = abar.float()
        # Variance of the posterior q(x_{t-1} | x_t, x_0): the ancestral step's noise.
        self.posterior_var = (betas * (1 - abar_prev) / (1 - abar)).float()
        self.c_noise = (((1 - abar) / abar).sqrt().log() / 4).float()


def ddpm_noise(
    x0: Tensor, schedule: DDPMSchedule, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A random step ``t`` ``(B,)`` per sample and unit Gaussian noise shaped like ``x0``."""
    t = torch.randint(schedule.n_steps, (x0.shape[0],), generator=generator).to(x0.device)
    return t, randn(x0.shape, generator, x0.device, x0.dtype)


def ddpm_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    cond: Mapping[str, Tensor],
    schedule: DDPMSchedule,
    t: Tensor,
    noise: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error of the predicted noise at steps ``t`` (``x0`` ``(B, P, d)``; padding
    slots, ``mask`` False, left out)."""
    abar = schedule.alphas_bar.to(x0.device)[t].reshape(-1, *([1] * (x0.ndim - 1)))
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    pred = net(xt, schedule.c_noise.to(x0.device)[t], **cond)
    err = ((pred - noise) ** 2).mean(dim=-1)
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1)


@torch.no_grad()
def sample_ddpm(
    net: Callable[..., Tensor], x: Tensor, schedule: DDPMSchedule, generator: torch.Generator, **cond: Tensor
) -> Tensor:
    """Ancestral sampling from ``x`` (unit Gaussian noise) through all steps, last to first;
    ``n_steps`` network calls. Noise is drawn on the CPU from ``generator``."""
    betas, abar, var = schedule.betas, schedule.alphas_bar, schedule.posterior_var
    for t in range(schedule.n_steps - 1, -1, -1):
        c = schedule.c_noise[t].expand(x.shape[0]).to(x.device)
        eps = net(x, c, **cond).to(x.dtype)
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        if t > 0:
            x = x + var[t].sqrt() * torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x
