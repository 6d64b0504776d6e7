"""EDM preconditioning and training loss (Karras et al. 2022, "Elucidating the design space").

:class:`EDMDenoiser` wraps a raw network ``F(x_in, c_noise, **cond)`` into a denoiser
``D(x, sigma, **cond) = c_skip x + c_out F(c_in x, c_noise, **cond)`` whose output estimates the
clean sample; samplers (:mod:`caloforge.sampling`) only ever see ``D``.

>>> import torch
>>> class Zero(torch.nn.Module):
...     def forward(self, x, c_noise):
...         return torch.zeros_like(x)
>>> d = EDMDenoiser(Zero())
>>> x = torch.ones(2, 3, 4)
>>> [round(v, 6) for v in d(x, torch.tensor([1e-4, 80.0]))[:, 0, 0].tolist()]  # keeps x as sigma -> 0
[1.0, 3.9e-05]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.models._placement import randn

__all__ = ["ConsistencyDenoiser", "EDMDenoiser", "edm_loss", "edm_noise"]


def _per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` as a tensor broadcastable against ``x``: one value per batch element."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMDenoiser(nn.Module):
    """``D(x, sigma, **cond) -> x0`` around a network ``net(c_in x, c_noise, **cond)``.

    ``sigma_data`` is the standard deviation of the (normalised) data; ``c_noise = ln(sigma) / 4``.
    ``sigma`` may be a float or hold one value per batch element.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` for noise levels ``sigma``."""
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        return sd2 / (sigma**2 + sd2), sigma * self.sigma_data / norm, 1 / norm

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        s = _per_sample(sigma, x)
        c_skip, c_out, c_in = self.scalings(s)
        c_noise = s.reshape(-1).log() / 4
        return c_skip * x + c_out * self.net(c_in * x, c_noise, **cond)


class ConsistencyDenoiser(EDMDenoiser):
    """A consistency model ``f(x, sigma)`` (Song et al. 2023) with EDM's network scalings.

    Only ``c_skip`` and ``c_out`` change, so that ``f(x, sigma_min) = x`` exactly (the
    boundary condition): ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``,
    ``c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)``. A student initialised from an
    EDM teacher's network starts close to the teacher's denoiser.

    >>> class Ones(torch.nn.Module):
    ...     def forward(self, x, c_noise):
    ...         return torch.ones_like(x)
    >>> f = ConsistencyDenoiser(Ones(), sigma_data=0.5, sigma_min=0.002)
    >>> x = torch.full((1, 2, 4), 3.0)
    >>> torch.equal(f(x, 0.002), x)
    True
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002) -> None:
        super().__init__(net, sigma_data)
        self.sigma_min = float(sigma_min)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        shifted = sigma - self.sigma_min
        c_skip = sd2 / (shifted**2 + sd2)
        c_out = shifted * self.sigma_data / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, 1 / (sigma**2 + sd2).sqrt()


def edm_noise(
    x0: Tensor, P_mean: float = -1.2, P_std: float = 1.2, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The noise :func:`edm_loss` draws for the batch ``x0``: one level ``sigma`` ``(B,)`` per
    shower, ``ln sigma ~ N(P_mean, P_std^2)``, and unit Gaussian noise shaped like ``x0``."""
    shape = (x0.shape[0],)
    ln_sigma = P_mean + P_std * randn(shape, generator, x0.device, x0.dtype)
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    return ln_sigma.exp(), noise


def edm_loss(
    denoiser: EDMDenoiser,
    x0: Tensor,
    cond: Mapping[str, Tensor],
    P_mean: float = -1.2,
    P_std: float = 1.2,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """EDM denoising loss of a batch ``x0`` of shape ``(B, P, d)``: one noise level per shower.

    ``ln sigma ~ N(P_mean, P_std^2)``; each shower's squared error is weighted by
    ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` so every noise level contributes
    about equally. ``mask`` ``(B, P)`` marks real points: padding slots do not enter the loss
    (the public CaloClouds II code trained on them too). Noise comes from ``generator``, or is
    given as ``noise = (sigma, noise)`` (:func:`edm_noise`; to share one draw between processes).
    """
    sigma, eps = edm_noise(x0, P_mean, P_std, generator) if noise is None else noise
    s = _per_sample(sigma, x0)
    denoised = denoiser(x0 + eps * s, sigma, **cond)
    sd2 = denoiser.sigma_data**2
    weight = (s**2 + sd2) / (s * denoiser.sigma_data) ** 2
    err = (weight * (denoised - x0) ** 2).mean(dim=-1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1)
