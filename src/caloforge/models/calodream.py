"""CaloDREAM (arXiv:2405.09629): flow matching on voxel showers, factorised in two networks.

* the **energy network** (:class:`~caloforge.models.transfusion.Transfusion`) generates the
  45 normalised layer-energy variables ``u`` given the incident energy;
* the **shape network** (:class:`~caloforge.models.vit.ViT3d`) generates the voxel energies
  normalised by their layer energy, given the incident and layer energies — either in voxel
  space (ViT) or in the latent space of a :class:`~caloforge.models.vae.LayerVAE` (laViT).

Variables (SPEC 6.4): ``u_0 = Σ E_layer / E_inc`` and ``u_i = E_{i-1} / Σ_{j ≥ i-1} E_j``
(the share of the energy still to be deposited that layer ``i-1`` takes); the last layer
gets what remains. Networks see ``logit(u)`` and ``logit(ε + (1 - 2ε) f)`` (ε = 1e-6) for the
voxel fractions ``f``, each standardised with training-set means and widths.

Each part trains on its own (``train(part="energy"|"shape"|"vae", ...)``), checkpoints in its
run directory (atomic, periodic, Ctrl-C safe, exact resume) and the shape checkpoint embeds
the energy network (and the VAE for laViT) so that one file generates showers:
:func:`load_model` + :func:`generate`. Sampling integrates the learned ODE from noise (t = 0)
to data (t = 1) with a fixed-step solver or a trained bespoke (BNS) solver
(:mod:`caloforge.odesolvers`, :func:`train_solver`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.detector import Detector, PolarGrid, detector_from_dict
from caloforge.io import VoxelShowers, open_showers
from caloforge.models._config import PresetConfig
from caloforge.models._training import (
    CheckpointError,
    Progress,
    open_run,
    optimizer_step,
    run_loop,
    save_checkpoint,
)
from caloforge.models.edm import EMA
from caloforge.models.quantile_map import QuantileMap
from caloforge.models.transfusion import Transfusion
from caloforge.models.vae import LayerVAE, vae_loss
from caloforge.models.vit import ViT3d
from caloforge.odesolvers import (
    FIXED_STEP_METHODS,
    LOSS_MODES,
    BNSSolver,
    evaluations_per_step,
    solve_fixed,
    train_bns,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "PARTS",
    "SHAPE_TARGETS",
    "CaloDream",
    "CaloDreamConfig",
    "SolverSpec",
    "fit_calibration",
    "generate",
    "layer_energies",
    "layer_energies_from_u",
    "load_model",
    "resolve_solver",
    "save_calibration",
    "save_for_inference",
    "train",
    "train_solver",
    "u_from_layer_energies",
    "uses_calibration",
]

CHECKPOINT_FORMAT = "caloforge-calodream"
CHECKPOINT_VERSION = 1
PARTS = ("energy", "shape", "vae")
EPS = 1e-6
#: What the full-space shape network learns (``CaloDreamConfig.shape_target``): ``logit-fraction``
#: (the paper's: logit of the voxel's share of its layer) or ``log-energy`` (log of the voxel
#: energy over the readout threshold, empty voxels spread over a slab below it: see
#: :func:`log_energy_features`).
SHAPE_TARGETS = ("logit-fraction", "log-energy")
#: Empty voxels of the ``log-energy`` target lie uniformly in this range of ``log(E / threshold)``;
#: generated values under :data:`EMPTY_CUT` are empty, the rest hits (which start at 0).
EMPTY_SLAB = (-4.0, -2.0)
EMPTY_CUT = -1.0


# --------------------------------------------------------------------------- variables


def layer_energies(voxels: Tensor, n_layers: int) -> Tensor:
    """Energy per layer ``(n, n_layers)`` of flattened voxel showers ``(n, n_layers · per_layer)``."""
    return voxels.reshape(len(voxels), n_layers, -1).sum(-1)


def u_from_layer_energies(e_layer: Tensor, e_inc: Tensor) -> Tensor:
    """The ``L`` normalised variables ``u`` of layer energies ``(n, L)`` and incident energies ``(n,)``.

    Same units for both energies. A share of nothing (all energy already deposited) is 0.

    >>> e = torch.tensor([[2.0, 1.0, 1.0]])
    >>> u_from_layer_energies(e, torch.tensor([8.0])).tolist()
    [[0.5, 0.5, 0.5]]
    """
    e_layer = e_layer.double()
    remaining = e_layer.flip(-1).cumsum(-1).flip(-1)  # Σ_{j ≥ i} E_j
    total = remaining[:, 0]
    shares = torch.where(remaining[:, :-1] > 0, e_layer[:, :-1] / remaining[:, :-1].clamp_min(1e-30), 0.0)
    return torch.cat([(total / e_inc.double()).unsqueeze(-1), shares], dim=-1).float()


def layer_energies_from_u(u: Tensor, e_inc: Tensor) -> Tensor:
    """Inverse of :func:`u_from_layer_energies` (shares are clipped to [0, 1] first).

    >>> layer_energies_from_u(torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([8.0])).tolist()
    [[2.0, 1.0, 1.0]]
    """
    u = u.double()
    remaining = u[:, 0].clamp_min(0.0) * e_inc.double()
    out = []
    for i in range(1, u.shape[1]):
        e = u[:, i].clamp(0.0, 1.0) * remaining
        out.append(e)
        remaining = remaining - e
    out.append(remaining)
    return torch.stack(out, dim=-1).float()


def _logit(p: Tensor) -> Tensor:
    p = EPS + (1 - 2 * EPS) * p
    return torch.log(p) - torch.log1p(-p)


def _expit(x: Tensor) -> Tensor:
    return ((torch.sigmoid(x) - EPS) / (1 - 2 * EPS)).clamp(0.0, 1.0)


def fractions(voxels: Tensor, n_layers: int) -> Tensor:
    """Voxel energies divided by their layer's energy (0 in an empty layer), same shape."""
    v = voxels.reshape(len(voxels), n_layers, -1)
    e = v.sum(-1, keepdim=True)
    return torch.where(e > 0, v / e.clamp_min(1e-30), 0.0).reshape(voxels.shape)


def dequantize_fractions(frac: Tensor, e_layer: Tensor, threshold: float, gen: torch.Generator) -> Tensor:
    """Empty voxels of non-empty layers get a fraction ``U(0, 1) · threshold / E_layer``.

    These voxels lie below the threshold by construction, so :func:`voxels_from_fractions`
    (which applies it) maps them back to zero.
    """
    n, n_layers = e_layer.shape
    f = frac.reshape(n, n_layers, -1)
    scale = (threshold / e_layer.clamp_min(1e-30)).unsqueeze(-1)
    noise = torch.rand(f.shape, generator=gen) * scale
    f = torch.where((f == 0) & (e_layer >= threshold).unsqueeze(-1), noise, f)
    return f.reshape(frac.shape)


def voxels_from_fractions(frac: Tensor, e_layer: Tensor, threshold: float) -> Tensor:
    """Voxel energies ``fraction × layer energy``, thresholded, then rescaled to keep each layer's energy.

    The threshold acts before any renormalisation, so the sub-threshold fractions of
    :func:`dequantize_fractions` vanish however much of the layer they add up to. A layer
    with energy above the threshold but no voxel above it puts all of it in its largest voxel,
    so layer energies (from the energy network) are always kept.
    """
    n, n_layers = e_layer.shape
    v = frac.reshape(n, n_layers, -1).clamp_min(0.0) * e_layer.unsqueeze(-1)
    target = e_layer.unsqueeze(-1)
    # A layer whose voxels all fall under the threshold keeps its energy in its largest voxel.
    top = torch.zeros_like(v).scatter_(-1, v.argmax(-1, keepdim=True), 1.0)
    for _ in range(3):  # scaling down can push a voxel under the threshold again: repeat
        v = torch.where(v >= threshold, v, 0.0)
        v = torch.where((v.sum(-1, keepdim=True) > 0) | (target < threshold), v, top * target)
        kept = v.sum(-1, keepdim=True)
        v = torch.where(kept > 0, v * (target / kept.clamp_min(1e-30)), 0.0)
    return torch.where(v >= threshold, v, 0.0).reshape(n, -1)


def log_energy_features(voxels: Tensor, threshold: float, gen: torch.Generator | None = None) -> Tensor:
    """``log(E / threshold)`` of hit voxels (at least 0); empty ones uniform in :data:`EMPTY_SLAB`.

    A spike of empty voxels is hard for a flow to learn and its edge sits right under the
    smallest hits; a slab of finite width, separated from the hits by a gap, leaves the
    network a margin: :func:`voxels_from_log_energy` cuts in the middle of the gap.
    Without ``gen`` empty voxels sit at the slab's centre.

    >>> log_energy_features(torch.tensor([[0.0, 1.0, 2.718281828]]), 1.0).tolist()
    [[-3.0, 0.0, 1.0]]
    """
    hit = voxels >= threshold
    lo, hi = EMPTY_SLAB
    if gen is None:
        empty = torch.full(voxels.shape, (lo + hi) / 2)
    else:
        empty = lo + (hi - lo) * torch.rand(voxels.shape, generator=gen)
    return torch.where(hit, torch.log(voxels.clamp_min(threshold) / threshold), empty)


def voxels_from_log_energy(x: Tensor, e_layer: Tensor, threshold: float, iterations: int = 20) -> Tensor:
    """Voxel energies from :func:`log_energy_features` values, each layer holding ``e_layer``.

    Values under :data:`EMPTY_CUT` are empty, the rest are hits (values between the cut and 0
    count as 0: at the threshold). Each layer's hits are then brought to the layer energy
    given by the energy network with a **power** map ``E = threshold · (E_gen / threshold)^α``
    (``α ≥ 0`` per layer, by Newton's method): it keeps every hit at or above the threshold
    and the order of the hits, so the number of hits the network made survives, whereas scaling
    all energies by one factor would push the small hits under the threshold whenever the
    network's energies overshoot (α < 1 also narrows a spread the network made too wide). A
    layer with less energy than its hits need (threshold each) keeps its largest hits; one
    with energy but no hit puts it in its largest voxel; one under the threshold is empty.
    """
    n, n_layers = e_layer.shape
    x = x.reshape(n, n_layers, -1).double()
    units = (e_layer.double() / threshold).unsqueeze(-1)  # layer energy in thresholds
    y = x.clamp_min(0.0)
    hit = x >= EMPTY_CUT
    # at most floor(units) hits: keep the largest
    keep = torch.minimum(hit.sum(-1, keepdim=True), units.floor().long())
    order = torch.argsort(torch.where(hit, y, -1.0), dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(x.shape[-1]).expand_as(order))
    hit = hit & (rank < keep)

    y_hits = torch.where(hit, y, -math.inf)  # exp(α · -inf) = 0: only hits count (α > 0)
    log_units = units.clamp_min(1.0).log()
    # α with log Σ exp(α y) = log(units): the left side is convex and increasing in α, so
    # Newton's method started where it is too large converges from above, in a few steps.
    alpha = torch.ones_like(units)
    spread = y_hits.amax(-1, keepdim=True) > 0  # else (no hits, or all at the threshold) α is moot
    for _ in range(30):  # start: double α until the sum reaches the layer energy
        short = (torch.logsumexp(alpha * y_hits, -1, keepdim=True) < log_units) & spread
        if not short.any():
            break
        alpha = torch.where(short, 2 * alpha, alpha)
    for _ in range(iterations):
        w = torch.softmax(alpha * y_hits, -1)  # NaN for a layer without hits: handled below
        slope = torch.nan_to_num((w * y).sum(-1, keepdim=True))
        excess = torch.nan_to_num(torch.logsumexp(alpha * y_hits, -1, keepdim=True) - log_units)
        step = torch.where((slope > 0) & (excess > 0), excess / slope.clamp_min(1e-300), 0.0)
        alpha = alpha - step
        if step.abs().max() < 1e-12:
            break
    v = torch.where(hit, torch.exp(alpha * y), 0.0)
    # From above the sum is at least the layer energy (or, when every hit sits at the threshold,
    # the hits alone): the exact scaling can only move a hit under the threshold by rounding.
    v = v * (units / v.sum(-1, keepdim=True).clamp_min(1e-300))
    v = torch.where(hit, v.clamp_min(1.0), 0.0)
    top = torch.zeros_like(v).scatter_(-1, x.argmax(-1, keepdim=True), 1.0) * units
    v = torch.where((keep == 0) & (units >= 1), top, v)
    return (threshold * torch.where(units >= 1, v, 0.0)).reshape(n, -1).to(e_layer.dtype)


def hit_log_fractions(y: Tensor, e_layer: Tensor, threshold: float, grid: tuple[int, int, int]) -> Tensor:
    """``log(E / E_layer)`` of the hits in :func:`log_energy_features` values ``y`` ``(n, n_voxels)``
    (NaN for empty voxels), grouped by layer and radial ring: ``(n, layers · rings, angles)``.

    Values between the empty cut and 0 are hits at the threshold, as in decoding; a layer
    with less than the threshold has no hits (decoding empties it).
    """
    n_layers, n_alpha, n_radial = grid
    y = y.double().reshape(-1, n_layers, n_alpha, n_radial).transpose(2, 3)
    log_layer = torch.log(e_layer.double().clamp_min(threshold) / threshold).view(-1, n_layers, 1, 1)
    filled = (e_layer >= threshold).view(-1, n_layers, 1, 1)
    v = torch.where((y >= EMPTY_CUT) & filled, y.clamp_min(0.0) - log_layer, math.nan)
    return v.reshape(-1, n_layers * n_radial, n_alpha)


def calibrated_voxels(
    y: Tensor,
    e_layer: Tensor,
    e_inc: Tensor,
    calibration: QuantileMap,
    grid: tuple[int, int, int],
    threshold: float,
) -> Tensor:
    """Voxel energies (MeV) from :func:`log_energy_features` values ``y`` with calibrated hits.

    Each hit's :func:`hit_log_fractions` value goes through ``calibration`` (per layer and
    ring, at the shower's incident energy ``e_inc`` in GeV); the hits then share their layer's
    energy ``e_layer`` in proportion to ``exp`` of the calibrated values
    (:func:`voxels_from_fractions`: thresholded and rescaled so that each layer keeps its
    energy). A layer without hits puts its energy in its largest voxel.
    """
    n_layers, n_alpha, n_radial = grid
    n = len(y)
    v = calibration(hit_log_fractions(y, e_layer, threshold, grid), torch.log(e_inc.double()))
    v = v.reshape(n, n_layers, n_radial, n_alpha).transpose(2, 3).reshape(n, n_layers, -1)
    frac = torch.nan_to_num(torch.softmax(torch.nan_to_num(v, nan=-math.inf), -1))  # no hits: 0
    top = torch.zeros_like(frac).scatter_(-1, y.reshape(n, n_layers, -1).argmax(-1, keepdim=True), 1.0)
    frac = torch.where(frac.sum(-1, keepdim=True) > 0, frac, top)
    return voxels_from_fractions(frac.reshape(n, -1).float(), e_layer, threshold)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CaloDreamConfig(PresetConfig):
    """Settings of one CaloDREAM training run (the ``part`` chosen at training time).

    Presets: ``cpu`` (2 CPU cores, about an hour per part), ``paper`` (published sizes, for a
    GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "CaloDREAM"
    LEGACY: ClassVar[dict[str, Any]] = {"dequantize": False, "shape_target": "logit-fraction"}

    seed: int = 0
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    val_fraction: float = 0.05
    val_every: int = 200
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    # energy network (transfusion)
    energy_d_model: int = 64
    energy_heads: int = 4
    energy_encoder_layers: int = 1
    energy_decoder_layers: int = 3
    energy_head_hidden: int = 128
    # shape network (ViT)
    patch: tuple[int, int, int] = (5, 4, 3)
    vit_dim: int = 64
    vit_depth: int = 4
    vit_heads: int = 4
    # VAE and latent ViT
    vae_latent_channels: int = 4
    vae_stride: tuple[int, int, int] = (3, 2, 3)
    vae_channels: int = 32
    vae_beta: float = 1e-4
    latent_patch: tuple[int, int, int] = (3, 2, 1)
    # default samplers stored with the model
    energy_solver: str = "rk4"
    energy_solver_steps: int = 8
    shape_solver: str = "rk4"
    shape_solver_steps: int = 4
    # With dequantize, empty voxels of a filled layer train as uniform energies below the
    # threshold (the cut after sampling empties them again) instead of a spike at logit(ε).
    # Off by default: on ds2 it doubled the generated hits (uniform noise in linear space
    # piles up just under the threshold in logit space, and small errors push it over).
    dequantize: bool = False
    # What the full-space ViT learns (SHAPE_TARGETS): the paper's logit of the layer fraction,
    # or log(E / threshold) with empty voxels on a slab below the threshold (log_energy_features).
    shape_target: str = "logit-fraction"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"CaloDREAM config: {name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"CaloDREAM config: val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.shape_target not in SHAPE_TARGETS:
            raise ValueError(f"CaloDREAM config: shape_target must be one of {', '.join(SHAPE_TARGETS)}")
        if self.dequantize and self.shape_target != "logit-fraction":
            raise ValueError("CaloDREAM config: dequantize applies to the logit-fraction shape target")
        for name in ("energy_solver", "shape_solver"):
            if getattr(self, name) not in FIXED_STEP_METHODS:
                raise ValueError(f"CaloDREAM config: {name} must be one of {', '.join(FIXED_STEP_METHODS)}")


PRESETS: dict[str, CaloDreamConfig] = {
    "cpu": CaloDreamConfig(),
    "paper": CaloDreamConfig(
        steps=200_000,
        batch_size=256,
        lr=1e-3,
        patch=(3, 4, 1),
        vit_dim=96,
        vit_depth=6,
        vit_heads=6,
        energy_decoder_layers=4,
        vae_channels=64,
        latent_patch=(1, 2, 1),
        checkpoint_minutes=15.0,
    ),
    "smoke": CaloDreamConfig(
        steps=30,
        batch_size=16,
        val_every=10,
        log_every=10,
        energy_d_model=16,
        energy_heads=2,
        energy_decoder_layers=1,
        energy_head_hidden=16,
        vit_dim=16,
        vit_depth=1,
        vit_heads=2,
        vae_channels=4,
        energy_solver_steps=2,
        shape_solver_steps=2,
    ),
}
CaloDreamConfig.PRESETS = PRESETS


# --------------------------------------------------------------------------- solvers


@dataclass(frozen=True)
class SolverSpec:
    """How to integrate a flow: a fixed-step ``method`` with ``n_steps``, or a trained BNS solver."""

    method: str
    n_steps: int
    bns: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in (*FIXED_STEP_METHODS, "bns"):
            raise ValueError(
                f"unknown ODE solver '{self.method}': use {', '.join(FIXED_STEP_METHODS)} or bns"
            )
        if self.method == "bns" and self.bns is None:
            raise ValueError(
                "a BNS solver needs its trained parameters: train one with `caloforge train-solver`"
            )
        if self.n_steps < 1:
            raise ValueError(f"an ODE solver needs at least one step, got {self.n_steps}")

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return self.n_steps * (1 if self.method == "bns" else evaluations_per_step(self.method))

    def solver(self) -> Callable[[Callable[[Tensor, Tensor], Tensor], Tensor], Tensor]:
        """``solve(v, x0) -> x1``."""
        if self.method == "bns":
            bns = BNSSolver.from_dict(self.bns)  # type: ignore[arg-type]
            bns.requires_grad_(False)
            return lambda v, x0: bns(v, x0)
        return lambda v, x0: solve_fixed(v, x0, self.method, self.n_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"method": self.method, "n_steps": self.n_steps, "bns": self.bns}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolverSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["method"]), int(data["n_steps"]), data.get("bns"))


# --------------------------------------------------------------------------- the model


class _Standard(nn.Module):
    """Per-element mean and width (buffers), fitted once on training data."""

    def __init__(self, shape: tuple[int, ...], min_std: float = 1e-3) -> None:
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, x: Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(self.min_std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


class CaloDream(nn.Module):
    """The networks and preprocessing of one CaloDREAM part, plus what generation needs."""

    def __init__(
        self,
        config: CaloDreamConfig,
        detector: Detector,
        part: str,
        energy_range: tuple[float, float],
        latent: bool = False,
    ) -> None:
        super().__init__()
        if part not in PARTS:
            raise ValueError(f"unknown CaloDREAM part '{part}': use one of {', '.join(PARTS)}")
        if not isinstance(detector.readout, PolarGrid):
            raise ValueError(f"CaloDREAM needs a voxel (polar) readout; detector '{detector.name}' has cells")
        self.config, self.detector, self.part, self.latent = config, detector, part, latent
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        ro = detector.readout
        self.grid = (detector.n_layers, ro.n_alpha, ro.n_radial)
        n_layers = detector.n_layers
        self.complete = False
        self.sampler = {
            "energy": SolverSpec(config.energy_solver, config.energy_solver_steps),
            "shape": SolverSpec(config.shape_solver, config.shape_solver_steps),
        }
        if part == "energy":
            self.net: nn.Module = Transfusion(
                n_layers,
                1,
                config.energy_d_model,
                config.energy_heads,
                config.energy_encoder_layers,
                config.energy_decoder_layers,
                config.energy_head_hidden,
            )
            self.standard = _Standard((n_layers,))
        elif part == "vae":
            self.net = LayerVAE(self.grid, config.vae_latent_channels, config.vae_stride, config.vae_channels)
            self.standard = _Standard(self.net.latent_shape)
        else:
            if latent:
                shape = LayerVAE(self.grid, config.vae_latent_channels, config.vae_stride).latent_shape
                patch = config.latent_patch
            else:
                shape, patch = (1, *self.grid), config.patch
            self.net = ViT3d(shape, patch, 1 + n_layers, config.vit_dim, config.vit_depth, config.vit_heads)
            # A voxel that is almost never hit has a tiny spread in logit space; a floor of one
            # logit unit keeps its rare hits from becoming huge standardised values.
            self.standard = _Standard(tuple(shape), min_std=1e-3 if latent else 1.0)
        self.cond_standard = _Standard((n_layers,))  # of logit(u), the shape net's condition
        self.energy_model: CaloDream | None = None
        self.vae_model: CaloDream | None = None
        # hit-energy calibration of a log-energy shape model (fit_calibration; None: none)
        self.calibration: QuantileMap | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Embedded parts are saved as their own inference states, not inside this state dict.
        if name in ("energy_model", "vae_model"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---- preprocessing
    def energy_condition(self, e_inc_gev: Tensor) -> Tensor:
        """``(n, 1)``: log incident energy mapped to [-1, 1] over the training range."""
        lo, hi = (math.log(e) for e in self.energy_range)
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 1e-6)
        return ((torch.log(e_inc_gev.double()) - mid) / half).float().unsqueeze(-1)

    def u_features(self, u: Tensor) -> Tensor:
        """``logit(u)``, standardised (the energy network's variables and the shape net's condition)."""
        return self.cond_standard(_logit(u))

    def u_from_features(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`u_features`."""
        return _expit(self.cond_standard.inverse(z))

    @property
    def log_energy(self) -> bool:
        """Whether the (full-space) shape network learns the ``log-energy`` target."""
        return self.part == "shape" and not self.latent and self.config.shape_target == "log-energy"

    def raw_shape_features(
        self, frac: Tensor, e_layer: Tensor | None = None, gen: torch.Generator | None = None
    ) -> Tensor:
        """The shape network's variables ``(n, C, L, A, R)`` of voxel fractions ``(n, n_voxels)``,
        not standardised: ``logit(frac)``, the VAE's latent mean (laViT), or for the
        ``log-energy`` target :func:`log_energy_features` of ``frac × e_layer`` (layer
        energies in MeV; ``gen`` draws the empty voxels' places)."""
        if self.latent:
            assert self.vae_model is not None
            return self.vae_model.net.encode(frac.reshape(-1, 1, *self.grid))[0]  # type: ignore[operator]
        if self.log_energy:
            if e_layer is None:
                raise ValueError("the log-energy shape target needs the layer energies")
            n, n_layers = e_layer.shape
            voxels = (frac.reshape(n, n_layers, -1) * e_layer.unsqueeze(-1)).reshape(n, -1)
            x = log_energy_features(voxels, self.detector.threshold_mev, gen)
            return x.reshape(-1, 1, *self.grid)
        return _logit(frac).reshape(-1, 1, *self.grid)

    def shape_features(
        self, frac: Tensor, e_layer: Tensor | None = None, gen: torch.Generator | None = None
    ) -> Tensor:
        """:meth:`raw_shape_features`, standardised."""
        return self.standard(self.raw_shape_features(frac, e_layer, gen))

    def fractions_from_features(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`shape_features` for the fraction targets (the VAE's decoder for
        laViT): ``(n, n_voxels)``."""
        if self.log_energy:
            raise ValueError("a log-energy shape model gives voxel energies: use voxels_from_features")
        if self.latent:
            assert self.vae_model is not None
            return self.vae_model.net.decode(self.standard.inverse(x)).reshape(len(x), -1)  # type: ignore[operator]
        return _expit(self.standard.inverse(x)).reshape(len(x), -1)

    def voxels_from_features(self, x: Tensor, e_layer: Tensor, e_inc: Tensor | None = None) -> Tensor:
        """Voxel energies (MeV) ``(n, n_voxels)`` of network variables ``x`` given the layer
        energies ``e_layer`` (MeV): thresholded, each layer keeping its energy.

        A log-energy model with a fitted :attr:`calibration` and the incident energies
        ``e_inc`` (GeV) calibrates its hits' energies first and then scales each layer
        linearly (:func:`calibrated_voxels`); otherwise the power map decodes the layers."""
        threshold = self.detector.threshold_mev
        if self.log_energy:
            y = self.standard.inverse(x).reshape(len(x), -1)
            if self.calibration is not None and e_inc is not None:
                return calibrated_voxels(y, e_layer, e_inc, self.calibration, self.grid, threshold)
            return voxels_from_log_energy(y, e_layer, threshold)
        return voxels_from_fractions(self.fractions_from_features(x), e_layer, threshold)

    def n_parameters(self) -> int:
        """Trainable parameters of this part's network."""
        return sum(p.numel() for p in self.net.parameters())

    # ---- checkpoint form
    def inference_state(self) -> dict[str, Any]:
        """Everything :func:`load_model` needs (weights, preprocessing, sampler, embedded parts)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "caloforge_version": __version__,
            "part": self.part,
            "latent": self.latent,
            "config": json.dumps(self.config.to_dict()),
            "detector": json.dumps(self.detector.to_dict()),
            "energy_range": list(self.energy_range),
            "complete": self.complete,
            "sampler": {k: v.to_dict() for k, v in self.sampler.items()},
            "model": self.state_dict(),
            "energy_model": self.energy_model.inference_state() if self.energy_model is not None else None,
            "vae_model": self.vae_model.inference_state() if self.vae_model is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
        }


def _from_state(state: dict[str, Any], where: str) -> CaloDream:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{where}' is not a CaloDREAM checkpoint (format {state.get('format')!r})")
    if int(state.get("format_version", -1)) != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"'{where}' has CaloDREAM checkpoint version {state.get('format_version')}, "
            f"this caloforge reads {CHECKPOINT_VERSION}: retrain or use a matching caloforge"
        )
    config = CaloDreamConfig.from_dict(json.loads(state["config"]))
    det = detector_from_dict(json.loads(state["detector"]))
    model = CaloDream(config, det, state["part"], tuple(state["energy_range"]), bool(state["latent"]))
    if state.get("vae_model") is not None:
        model.vae_model = _from_state(state["vae_model"], where)
    if state.get("energy_model") is not None:
        model.energy_model = _from_state(state["energy_model"], where)
    model.load_state_dict(state["model"])
    model.complete = bool(state["complete"])
    model.sampler = {k: SolverSpec.from_dict(v) for k, v in state["sampler"].items()}
    if state.get("calibration") is not None:
        model.calibration = QuantileMap.from_dict(state["calibration"])
    return model.eval().requires_grad_(False)


def _checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or a run directory's ``checkpoint.pt``."""
    path = Path(path)
    return path / "checkpoint.pt" if path.is_dir() else path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"model '{path}' does not exist: train one or give the path of a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({exc.__class__.__name__})") from exc


def load_model(path: str | Path) -> CaloDream:
    """A CaloDREAM part (energy, shape or VAE) from a checkpoint or run directory, ready to sample."""
    path = _checkpoint_file(path)
    return _from_state(_read(path), str(path))


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a run's checkpoint without its training state (optimiser, live weights, RNG)."""
    path = _checkpoint_file(checkpoint)
    state = _read(path)
    _from_state(state, str(path))  # refuse anything that would not load
    state.pop("train", None)
    save_checkpoint(state, out)
    return Path(out)


def is_calodream_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` (file or run directory) holds a CaloDREAM checkpoint."""
    path = _checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT
    except Exception:
        return False


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    detector: Detector
    energy: Tensor  # GeV, (n,)
    u: Tensor  # (n, L)
    e_layer: Tensor  # MeV, (n, L)
    frac: Tensor | None  # (n, n_voxels)
    energy_range: tuple[float, float]


def load_voxel_data(
    path: str | Path, with_fractions: bool = True, max_showers: int | None = None, min_showers: int = 20
) -> _Data:
    """Incident energies, ``u`` variables and (optionally) voxel fractions of a voxel file."""
    path = Path(path)
    with open_showers(path) as f:
        det = f.detector
        if f.kind != "voxels":
            raise ValueError(
                f"'{path}' holds point clouds: CaloDREAM trains on voxel files (simulate --voxel-out)"
            )
        if not isinstance(det.readout, PolarGrid):
            raise ValueError(f"'{path}' is for detector '{det.name}' without a voxel readout")
        attrs = dict(f.attrs)
        energies, us, fracs, e_layers = [], [], [], []
        for chunk in f.iter_chunks(2000, stop=max_showers):
            v = torch.from_numpy(chunk.voxels.astype(np.float32))
            e = torch.from_numpy(chunk.energy.astype(np.float32))
            energies.append(e)
            e_layers.append(layer_energies(v, det.n_layers))
            us.append(u_from_layer_energies(e_layers[-1], e * 1000.0))
            if with_fractions:
                fracs.append(fractions(v, det.n_layers))
    if not energies:
        raise ValueError(f"'{path}' holds no showers")
    energy = torch.cat(energies)
    if len(energy) < min_showers:
        raise ValueError(f"'{path}' holds {len(energy)} showers: at least {min_showers} are needed")
    # The simulated spectrum's range when the file records it, else the range of its showers.
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    fracs_all = torch.cat(fracs) if with_fractions else None
    return _Data(det, energy, torch.cat(us), torch.cat(e_layers), fracs_all, (lo, hi))


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train` reports."""

    checkpoint: Path
    part: str
    step: int
    total_steps: int
    complete: bool
    minutes: float
    losses: dict[str, float]
    parameters: int


def _cfm_pair(x1: Tensor, gen: torch.Generator, per_element: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, target velocity)`` of the straight path from noise to ``x1``."""
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(x1.shape if per_element else (len(x1),), generator=gen)
    tb = t if per_element else t.view(-1, *([1] * (x1.dim() - 1)))
    return (1 - tb) * x0 + tb * x1, t, x1 - x0


class _Trainer:
    """Mutable state of one CaloDREAM training run, and one step of it."""

    def __init__(self, config: CaloDreamConfig, part: str, data: _Data, vae: CaloDream | None) -> None:
        self.config, self.part, self.data = config, part, data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = CaloDream(config, data.detector, part, data.energy_range, latent=vae is not None)
        self.model.vae_model = vae
        self.gen = torch.Generator().manual_seed(config.seed)
        n = len(data.energy)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        n_val = round(config.val_fraction * n)
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.model.cond_standard.fit(_logit(data.u[self.train_idx]))
        if part == "shape":
            fit_gen = torch.Generator().manual_seed(config.seed + 3)
            self.model.standard.fit(self._shape_x(self.train_idx[:4000], fit_gen, fitted=False))
        self.ema = EMA(self.model.net, config.ema_decay)
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, config.steps, eta_min=config.min_lr)
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

    def _frac(self, idx: Tensor) -> Tensor:
        assert self.data.frac is not None
        return self.data.frac[idx].reshape(-1, 1, *self.model.grid)

    def _shape_x(self, idx: Tensor, gen: torch.Generator, fitted: bool = True) -> Tensor:
        frac, e_layer = self.data.frac[idx], self.data.e_layer[idx]  # type: ignore[index]
        if self.config.dequantize and not self.model.latent:
            frac = dequantize_fractions(frac, e_layer, self.data.detector.threshold_mev, gen)
        with torch.no_grad():  # unfitted: the standardisation itself is being fitted
            features = self.model.shape_features if fitted else self.model.raw_shape_features
            return features(frac, e_layer, gen)

    def _loss(self, net: nn.Module, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        m, data = self.model, self.data
        if self.part == "energy":
            z = m.u_features(data.u[idx])
            x_t, t, target = _cfm_pair(z, gen, per_element=True)
            pred = net(x_t, t, z, m.energy_condition(data.energy[idx]))
            loss = (pred - target).pow(2).mean()
            return loss, {"cfm": loss.item()}
        if self.part == "vae":
            ce, kl = vae_loss(net, self._frac(idx), self.config.vae_beta, gen)  # type: ignore[arg-type]
            return ce + self.config.vae_beta * kl, {"ce": ce.item(), "kl": kl.item()}
        x1 = self._shape_x(idx, gen)
        x_t, t, target = _cfm_pair(x1, gen, per_element=False)
        loss = (net(x_t, t, shape_condition(m, data.energy[idx], data.u[idx])) - target).pow(2).mean()
        return loss, {"cfm": loss.item()}

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        pick = torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)
        self.model.net.train()
        loss, parts = self._loss(self.model.net, self.train_idx[pick], self.gen)
        if optimizer_step(loss, self.model.net, self.opt, cfg.grad_clip):
            self.ema.update(self.model.net)
        else:
            self.skipped += 1
            parts = {k: None for k in parts}  # type: ignore[misc]
        self.sched.step()
        out: list[tuple[str, float | None]] = list(parts.items())
        if len(self.val_idx) and (self.step + 1) % cfg.val_every == 0:
            out.append(("val", self.validation_loss()))
        return out

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Loss of the EMA network on the validation showers (fixed noise)."""
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        losses = []
        for lo in range(0, min(len(self.val_idx), 2048), 256):
            idx = self.val_idx[lo : lo + 256]
            losses.append(self._loss(self.ema.module, idx, gen)[0].item() * len(idx))
        return float(sum(losses) / min(len(self.val_idx), 2048))

    def finished_model(self) -> CaloDream:
        """The model with the EMA weights (what is saved for inference)."""
        self.model.net.load_state_dict(self.ema.module.state_dict())
        return self.model

    def state(self) -> dict[str, Any]:
        live = {k: v.clone() for k, v in self.model.net.state_dict().items()}
        self.model.net.load_state_dict(self.ema.module.state_dict())
        inference = self.model.inference_state()
        self.model.net.load_state_dict(live)
        return inference | {
            "train": {
                "net": live,
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "gen": self.gen.get_state(),
                "step": self.step,
                "skipped": self.skipped,
                "elapsed_s": self.elapsed_s,
                "n_showers": len(self.data.energy),
            }
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        tr = state.get("train")
        if tr is None:
            raise CheckpointError(
                f"'{path}' holds no training state (an inference-only file): start a new run"
            )
        if tr["n_showers"] != len(self.data.energy):
            raise CheckpointError(
                f"'{path}' was trained on {tr['n_showers']} showers, the data file has "
                f"{len(self.data.energy)}: resume with the same data"
            )
        self.model.load_state_dict(state["model"])
        self.model.net.load_state_dict(tr["net"])
        self.ema.load_state_dict(tr["ema"])
        self.opt.load_state_dict(tr["opt"])
        self.sched.load_state_dict(tr["sched"])
        self.gen.set_state(tr["gen"])
        self.step, self.skipped, self.elapsed_s = int(tr["step"]), int(tr["skipped"]), float(tr["elapsed_s"])

    def save(self, path: Path) -> None:
        save_checkpoint(self.state(), path)


def train(
    config: CaloDreamConfig,
    part: str,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    energy_model: str | Path | None = None,
    vae_model: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train one CaloDREAM part on the voxel file ``data_path``; checkpoint in ``out_dir``.

    ``part`` is ``energy``, ``shape`` (with ``vae_model``: the latent laViT) or ``vae``.
    ``energy_model`` (a finished energy run) is embedded in a shape checkpoint so that it
    generates showers on its own; ``resume=True`` with ``energy_model`` on a finished run
    embeds (or replaces) it afterwards. Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at
    the end; ``resume=True`` continues exactly; ``out_dir/train_log.jsonl`` gets the losses.
    """
    start = time.monotonic()
    if part not in PARTS:
        raise ValueError(f"unknown CaloDREAM part '{part}': use one of {', '.join(PARTS)}")
    if part != "shape" and (energy_model is not None or vae_model is not None):
        raise ValueError("--energy-model and --vae only apply to the shape network")
    if vae_model is not None and config.shape_target != "logit-fraction":
        raise ValueError(
            f"shape target '{config.shape_target}' is for the full-space ViT; "
            "laViT (--vae) learns the VAE's latents"
        )
    ckpt, state = open_run(out_dir, config, resume, _read)
    vae = _load_part(vae_model, "vae") if vae_model is not None else None
    energy = _load_part(energy_model, "energy") if energy_model is not None else None
    if progress is not None:
        progress("load", 0, 1)
    data = load_voxel_data(data_path, with_fractions=part != "energy")
    if progress is not None:
        progress("load", 1, 1)
    for other in (vae, energy):
        if other is not None and other.detector.name != data.detector.name:
            raise ValueError(
                f"the {other.part} model is for detector '{other.detector.name}', "
                f"the data for '{data.detector.name}'"
            )
    trainer = _Trainer(config, part, data, vae)
    if state is not None:
        trainer.restore(state, ckpt)
    run_loop(
        trainer, config.steps, ckpt, config.log_every, config.checkpoint_minutes, progress, max_minutes, start
    )
    trainer.model.complete = trainer.step >= config.steps
    if energy is None and state is not None and state.get("energy_model") is not None:
        energy = _from_state(state["energy_model"], str(ckpt))  # keep what an earlier call embedded
    trainer.model.energy_model = energy
    trainer.save(ckpt)
    return TrainResult(
        ckpt,
        part,
        trainer.step,
        config.steps,
        trainer.model.complete,
        (time.monotonic() - start) / 60,
        trainer.last_losses,
        trainer.model.n_parameters(),
    )


def _load_part(path: str | Path, part: str) -> CaloDream:
    model = load_model(path)
    if model.part != part:
        raise ValueError(f"'{path}' is a CaloDREAM {model.part} model, a {part} model is needed here")
    return model


# --------------------------------------------------------------------------- generation


def shape_velocity(model: CaloDream, cond: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The shape network as a velocity field ``v(t, x)`` for a batch with conditions ``cond``."""
    net = model.net

    def v(t: Tensor, x: Tensor) -> Tensor:
        return net(x, t.reshape(1), cond)

    return v


def shape_noise(model: CaloDream, n: int, gen: torch.Generator) -> Tensor:
    """Starting points ``x(t=0)`` of ``n`` showers in the shape network's variables."""
    return torch.randn((n, *model.standard.mean.shape), generator=gen)


def shape_condition(model: CaloDream, e_inc: Tensor, u: Tensor) -> Tensor:
    """The shape network's condition: scaled log incident energy and standardised logit(u)."""
    return torch.cat([model.energy_condition(e_inc), model.u_features(u)], dim=-1)


def resolve_solver(model: CaloDream, method: str | None = None, n_steps: int | None = None) -> SolverSpec:
    """The shape model's stored solver with ``method`` / ``n_steps`` replaced where given.

    A BNS solver only exists as trained (``caloforge train-solver``), with its own step count.
    """
    stored = model.sampler["shape"]
    method = method or stored.method
    if method == "bns" and stored.method != "bns":
        raise ValueError("this model has no trained BNS solver: run `caloforge train-solver` first")
    if method == "bns" and n_steps not in (None, stored.n_steps):
        raise ValueError(f"the model's BNS solver has {stored.n_steps} steps; --steps cannot change it")
    return SolverSpec(method, n_steps or stored.n_steps, stored.bns if method == stored.method else None)


def check_energies(model: CaloDream, energies: np.ndarray, allow_extrapolation: bool) -> None:
    """Refuse incident energies outside the training range (unless ``allow_extrapolation``)."""
    lo, hi = model.energy_range
    bad = (energies < lo * 0.999) | (energies > hi * 1.001) | ~np.isfinite(energies)
    if bad.any() and not allow_extrapolation:
        raise ValueError(
            f"{int(bad.sum())} incident energies outside the training range {lo:.3g}-{hi:.3g} GeV: "
            "pass --allow-extrapolation to generate them anyway"
        )


@torch.no_grad()
def sample_u(model: CaloDream, e_inc: Tensor, solver: SolverSpec, gen: torch.Generator) -> Tensor:
    """Layer-energy variables ``u`` ``(n, L)`` from the energy network."""
    z = model.net.sample(model.energy_condition(e_inc), solver.solver(), gen)  # type: ignore[operator]
    return model.u_from_features(z)


@torch.no_grad()
def sample_voxels(
    model: CaloDream, e_inc: Tensor, u: Tensor, solver: SolverSpec, gen: torch.Generator
) -> Tensor:
    """Voxel energies (MeV) ``(n, n_voxels)`` from the shape network given ``u`` (calibrated
    when :func:`uses_calibration`)."""
    x1 = sample_shape_features(model, e_inc, u, solver, gen)
    e_layer = layer_energies_from_u(u, e_inc * 1000.0)
    return model.voxels_from_features(x1, e_layer, e_inc if uses_calibration(model, solver) else None)


def uses_calibration(model: CaloDream, solver: SolverSpec) -> bool:
    """Whether generation with ``solver`` applies the model's hit-energy calibration: only with
    the sampler it was fitted with (the model's stored one)."""
    stored = model.sampler["shape"]
    same = solver.method == stored.method and solver.n_steps == stored.n_steps and solver.bns is stored.bns
    return model.log_energy and model.calibration is not None and same


@torch.no_grad()
def sample_shape_features(
    model: CaloDream, e_inc: Tensor, u: Tensor, solver: SolverSpec, gen: torch.Generator
) -> Tensor:
    """The shape network's (standardised) variables at t = 1, from noise drawn with ``gen``."""
    x0 = shape_noise(model, len(e_inc), gen)
    return solver.solver()(shape_velocity(model, shape_condition(model, e_inc, u)), x0)


def generate(
    model: CaloDream,
    energies_gev: np.ndarray,
    *,
    batch_size: int = 256,
    seed: int = 0,
    shape_solver: SolverSpec | None = None,
    energy_solver: SolverSpec | None = None,
    layer_u: np.ndarray | None = None,
    allow_extrapolation: bool = False,
) -> Iterator[VoxelShowers]:
    """Voxel showers for ``energies_gev``, one batch at a time (reproducible from ``seed``).

    ``model`` is a shape model with an embedded energy model. ``layer_u`` (``(n, L)``) replaces
    the energy network by given layer-energy variables (to study the shape network alone).
    """
    if model.part != "shape":
        raise ValueError(f"this is a CaloDREAM {model.part} model: generate with a shape model")
    if model.energy_model is None and layer_u is None:
        raise ValueError("this shape model has no energy network: train it with --energy-model RUN")
    energies = np.asarray(energies_gev, np.float64).reshape(-1)
    check_energies(model, energies, allow_extrapolation)
    shape_solver = shape_solver or model.sampler["shape"]
    if model.energy_model is not None:
        energy_solver = energy_solver or model.energy_model.sampler["energy"]
    gen = torch.Generator().manual_seed(seed)
    for lo in range(0, len(energies), batch_size):
        e = torch.from_numpy(energies[lo : lo + batch_size]).float()
        if layer_u is not None:
            u = torch.as_tensor(layer_u[lo : lo + batch_size]).float()
        else:
            u = sample_u(model.energy_model, e, energy_solver, gen)  # type: ignore[arg-type]
        vox = sample_voxels(model, e, u, shape_solver, gen)
        yield VoxelShowers(energies[lo : lo + batch_size], vox.numpy())


# --------------------------------------------------------------------------- calibration


def fit_calibration(
    model: CaloDream,
    data_path: str | Path,
    *,
    n_showers: int = 4000,
    n_bins: int = 8,
    drop_hits: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> QuantileMap:
    """Fit (and set) ``model.calibration`` against the first ``n_showers`` Geant4 showers of a
    training voxel file.

    The model generates one shower per training incident energy (its energy network and
    stored sampler); per layer, radial ring and incident-energy bin (``n_bins`` log-uniform
    over the training range, interpolated in between), the quantiles of its hits'
    ``log(E / E_layer)`` are matched to Geant4's. With ``drop_hits`` the hit rates are matched
    too: where the model hits a group's voxels more often than Geant4, its smallest hits
    there become empty (:class:`QuantileMap` ``rates``). Use training showers, never the test set.
    """
    if not model.log_energy or model.energy_model is None:
        raise ValueError("only a log-energy shape model with an energy network can be calibrated")
    data = load_voxel_data(data_path, max_showers=n_showers)
    if data.detector.to_dict() != model.detector.to_dict():
        raise ValueError(
            f"'{data_path}' is for detector '{data.detector.name}', the model for '{model.detector.name}'"
        )
    assert data.frac is not None
    threshold, n = model.detector.threshold_mev, len(data.energy)
    g4 = model.raw_shape_features(data.frac, data.e_layer).reshape(n, -1)  # empty voxels under the cut
    target = hit_log_fractions(g4, data.e_layer, threshold, model.grid)
    gen = torch.Generator().manual_seed(seed)
    sources = []
    for lo in range(0, n, batch_size):
        e = data.energy[lo : lo + batch_size]
        u = sample_u(model.energy_model, e, model.energy_model.sampler["energy"], gen)
        x1 = sample_shape_features(model, e, u, model.sampler["shape"], gen)
        y = model.standard.inverse(x1).reshape(len(e), -1)
        sources.append(hit_log_fractions(y, layer_energies_from_u(u, e * 1000.0), threshold, model.grid))
        if progress is not None:
            progress("calibration showers", min(lo + batch_size, n), n)
    log_e = torch.log(data.energy.double())
    lo_e, hi_e = (math.log(v) for v in model.energy_range)
    model.calibration = QuantileMap.fit(
        torch.cat(sources), log_e, target, log_e, (lo_e, hi_e), n_bins=n_bins, drop=drop_hits
    )
    return model.calibration


def save_calibration(
    path: str | Path, calibration: QuantileMap | None, out: str | Path | None = None
) -> Path:
    """Write ``calibration`` into the checkpoint at ``path`` (file or run directory), or into a
    copy at ``out``; everything else in the checkpoint is kept. ``None`` removes it."""
    path = _checkpoint_file(path)
    state = _read(path)
    model = _from_state(state, str(path))  # refuse anything that would not load
    if calibration is not None:
        groups = model.grid[0] * model.grid[2]
        if not model.log_energy or calibration.n_groups != groups:
            raise ValueError(
                f"'{path}' is not a log-energy shape model with {calibration.n_groups} layer-ring groups"
            )
    state["calibration"] = calibration.to_dict() if calibration is not None else None
    target = Path(out) if out is not None else path
    save_checkpoint(state, target)
    return target


# --------------------------------------------------------------------------- BNS solvers


def train_solver(
    model: CaloDream,
    data_path: str | Path,
    n_steps: int,
    *,
    loss: str = "global",
    n_train: int = 256,
    batch_size: int = 16,
    iterations: int = 150,
    lr: float = 5e-3,
    rtol: float = 1e-4,
    seed: int = 0,
    progress: Progress | None = None,
) -> BNSSolver:
    """Train an ``n_steps`` bespoke non-stationary solver for ``model``'s frozen shape network.

    Conditions (incident and layer energies) come from the first ``n_train`` showers of
    ``data_path``; references are dopri5 solutions (:func:`caloforge.odesolvers.train_bns`,
    with the shape network's field for each shower's condition). ``loss`` is ``global`` (end
    points) or ``local`` (each step from the reference trajectory). The solver starts as
    Euler; of the iterates scored on all ``n_train`` showers (the start, every 25th, the
    last), the one with the lowest loss wins.
    """
    if model.part != "shape":
        raise ValueError(f"BNS solvers are trained for shape models; this is a {model.part} model")
    if loss not in LOSS_MODES:
        raise ValueError(f"unknown BNS loss '{loss}': use {' or '.join(LOSS_MODES)}")
    data = load_voxel_data(data_path, with_fractions=False, max_showers=n_train, min_showers=1)
    cond = shape_condition(model, data.energy, data.u)

    def on_step(iteration: int, total: int, value: float) -> None:
        if progress is not None:
            progress("train", iteration, total, info=f"loss {value:.3g}")

    def on_reference(done: int, total: int) -> None:
        if progress is not None:
            progress("reference", done, total)

    return train_bns(
        lambda index: shape_velocity(model, cond[index]),
        lambda n, gen: shape_noise(model, n, gen),
        n_steps,
        mode=loss,
        n_train=len(cond),
        batch=batch_size,
        iterations=iterations,
        lr=lr,
        seed=seed,
        reference_rtol=rtol,
        conditional=True,
        progress=on_step,
        reference_progress=on_reference,
    )


def save_solver(model_path: str | Path, solver: BNSSolver, out: str | Path | None = None) -> Path:
    """Store ``solver`` as the shape sampler of the checkpoint ``model_path`` (or of a copy at ``out``).

    The file is replaced atomically; training state in it is kept, so the run can still resume.
    """
    path = _checkpoint_file(model_path)
    state = _read(path)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("part") != "shape":
        raise CheckpointError(f"'{path}' is not a CaloDREAM shape model")
    spec = SolverSpec("bns", solver.n_steps, solver.to_dict())
    state["sampler"] = dict(state["sampler"]) | {"shape": spec.to_dict()}
    state["calibration"] = None  # fitted with the previous sampler: refit with calibrate
    target = Path(out) if out is not None else path
    save_checkpoint(state, target)
    return target
