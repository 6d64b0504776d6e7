"""Samplers as plain functions over a denoiser ``D(x, sigma, **cond) -> x0`` (k-diffusion style).

A sampler knows nothing about the network: it only calls the denoiser with a batch of
noisy samples ``x`` (first axis: batch) and one noise level per batch element. The EDM
teacher (:class:`caloforge.models.nn.edm.EDMDenoiser`), a consistency student or an analytic
denoiser all plug in the same way.

The probability-flow ODE of EDM (Karras et al. 2022) is ``dx/dsigma = (x - D(x, sigma)) / sigma``;
:func:`sample_euler` and :func:`sample_heun` integrate it from ``sigmas[0]`` down to
``sigmas[-1]`` (normally 0). Few steps bias the result (13 Heun steps widen a Gaussian by
about 10 %); many steps converge to the exact answer:

>>> import torch
>>> def gaussian(x, sigma):  # exact denoiser for data ~ N(1, 0.5^2)
...     s2 = 0.25 / (0.25 + sigma.view(-1, 1) ** 2)
...     return 1.0 + s2 * (x - 1.0)
>>> sigmas = karras_sigmas(50)
>>> x = sigmas[0] * torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
>>> out = sample_heun(gaussian, x, sigmas)
>>> round(out.mean().item(), 1), round(out.std().item(), 1)
(1.0, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from caloforge.models._placement import randn

__all__ = [
    "Denoiser",
    "consistency_sigmas",
    "karras_sigmas",
    "sample_consistency",
    "sample_euler",
    "sample_heun",
]

#: ``D(x, sigma, **cond) -> x0``: ``sigma`` holds one noise level per batch element.
Denoiser = Callable[..., Tensor]


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device: str = "cpu"
) -> Tensor:
    """The ``n`` noise levels of Karras et al. (2022), eq. 5, from ``sigma_max`` down, with a final 0.

    ``n`` levels make ``n`` steps; with Heun that is ``2 n - 1`` denoiser calls because the
    last step (to 0) is an Euler step.

    >>> [round(s, 3) for s in karras_sigmas(3).tolist()]
    [80.0, 2.515, 0.002, 0.0]
    """
    if n < 1:
        raise ValueError(f"need at least one noise level, got n={n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho if n > 1 else torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def _churn(
    x: Tensor, sigma: float, gamma: float, s_noise: float, generator: torch.Generator | None
) -> tuple[Tensor, float]:
    """Raise the noise level from ``sigma`` to ``sigma (1 + gamma)`` (Karras et al., algorithm 2)."""
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        eps = randn(x.shape, generator, x.device, x.dtype) * s_noise
        x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


def _gamma(s_churn: float, n_steps: int, sigma: float, s_tmin: float, s_tmax: float) -> float:
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / n_steps, math.sqrt(2) - 1)


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    **cond: Tensor,
) -> Tensor:
    """Euler steps along ``sigmas``: one denoiser call per step.

    ``x`` starts at noise level ``sigmas[0]`` (e.g. ``sigmas[0] * randn``). ``s_churn > 0``
    adds fresh noise before each step (drawn from ``generator``); the default is the
    deterministic ODE solver.
    """
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = _churn(x, sigma, _gamma(s_churn, n_steps, sigma, s_tmin, s_tmax), s_noise, generator)
        denoised = denoiser(x, x.new_full((x.shape[0],), sigma_hat), **cond)
        x = x + (x - denoised) / sigma_hat * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    **cond: Tensor,
) -> Tensor:
    """Heun (2nd order) steps along ``sigmas``; the step to ``sigma = 0`` is an Euler step.

    With ``karras_sigmas(13)`` that is 13 steps and 25 denoiser calls (CaloClouds II).
    Arguments as for :func:`sample_euler`.
    """
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x, sigma_hat = _churn(x, sigma, _gamma(s_churn, n_steps, sigma, s_tmin, s_tmax), s_noise, generator)
        d = (x - denoiser(x, x.new_full((x.shape[0],), sigma_hat), **cond)) / sigma_hat
        x_next = x + d * (sigma_next - sigma_hat)
        if sigma_next > 0:
            # Trapezoidal correction: average the slopes at both ends of the step.
            d_next = (x_next - denoiser(x_next, x.new_full((x.shape[0],), sigma_next), **cond)) / sigma_next
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma_hat)
        x = x_next
    return x


def consistency_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device: str = "cpu"
) -> Tensor:
    """Noise levels of an ``n``-step consistency sampler: ``sigma_max``, then ``n - 1``
    intermediate levels of the Karras schedule with ``n + 1`` levels, then 0.

    >>> [round(s, 3) for s in consistency_sigmas(2).tolist()]
    [80.0, 2.515, 0.0]
    """
    if n < 1:
        raise ValueError(f"need at least one step, got n={n}")
    levels = karras_sigmas(n + 1, sigma_min, sigma_max, rho, device)[:n]
    return torch.cat([levels, levels.new_zeros(1)])


@torch.no_grad()
def sample_consistency(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    sigma_min: float = 0.002,
    **cond: Tensor,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, algorithm 1): one denoiser call per step.

    ``x`` starts at ``sigmas[0]``; after each jump to the clean sample, fresh noise brings it
    back to the next level ``sigmas[i] > 0`` (``sqrt(sigma^2 - sigma_min^2)`` of it, drawn
    from ``generator``). With :func:`consistency_sigmas` ``(1)`` this is one network call.
    """
    x = denoiser(x, x.new_full((x.shape[0],), float(sigmas[0])), **cond)
    for sigma in sigmas[1:].tolist():
        if sigma <= 0:
            break
        eps = randn(x.shape, generator, x.device, x.dtype)
        x = x + eps * math.sqrt(max(sigma**2 - sigma_min**2, 0.0))
        x = denoiser(x, x.new_full((x.shape[0],), sigma), **cond)
    return x
