"""The networks and preprocessing of one CaloDREAM part (energy, shape or VAE)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.detector import Detector, PolarGrid
from caloforge.models.calodream.config import CaloDreamConfig
from caloforge.models.calodream.solver import SolverSpec
from caloforge.models.calodream.variables import (
    _expit,
    _logit,
    calibrated_voxels,
    log_energy_features,
    voxels_from_fractions,
    voxels_from_log_energy,
)
from caloforge.models.nn.quantile_map import QuantileMap
from caloforge.models.nn.transfusion import Transfusion
from caloforge.models.nn.vae import LayerVAE
from caloforge.models.nn.vit import ViT3d
from caloforge.models.voxel_features import log_energy_condition

CHECKPOINT_FORMAT = "caloforge-calodream"
CHECKPOINT_VERSION = 1
PARTS = ("energy", "shape", "vae")

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
        else:
            self._build_grid_part(config, part, latent)
        self.cond_standard = _Standard((n_layers,))  # of logit(u), the shape net's condition
        self.energy_model: CaloDream | None = None
        self.vae_model: CaloDream | None = None
        # hit-energy calibration of a shape model (fit_calibration; None: none)
        self.calibration: QuantileMap | None = None

    def _build_grid_part(self, config: CaloDreamConfig, part: str, latent: bool) -> None:
        """The VAE or the shape network, whose strides and patches must tile the voxel grid."""
        try:
            self._grid_part(config, part, latent)
        except ValueError as exc:
            if "does not tile" not in str(exc):
                raise
            raise ValueError(
                f"{exc}: the preset's strides and patches are for another grid than "
                f"'{self.detector.name}'s; use a preset made for it (ds3 or paper-ds3 for calochallenge-ds3)"
            ) from None

    def _grid_part(self, config: CaloDreamConfig, part: str, latent: bool) -> None:
        n_layers = self.detector.n_layers
        if part == "vae":
            self.net = LayerVAE(
                self.grid,
                config.vae_latent_channels,
                config.vae_stride,
                config.vae_channels,
                full_resolution=config.vae_full_resolution,
            )
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

    def __setattr__(self, name: str, value: Any) -> None:
        # Embedded parts are saved as their own inference states, not inside this state dict.
        if name in ("energy_model", "vae_model"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---- preprocessing
    def energy_condition(self, e_inc_gev: Tensor) -> Tensor:
        """``(n, 1)``: log incident energy mapped to [-1, 1] over the training range."""
        return log_energy_condition(e_inc_gev, self.energy_range)

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

        A model with a fitted :attr:`calibration` and the incident energies ``e_inc`` (GeV)
        calibrates its hits' energies (:meth:`hit_values`) first and then scales each layer
        linearly (:func:`calibrated_voxels`); otherwise a log-energy model's layers are decoded
        with the power map, a fraction model's by :func:`voxels_from_fractions`."""
        threshold = self.detector.threshold_mev
        if self.calibration is not None and e_inc is not None:
            y = self.hit_values(x, e_layer)
            return calibrated_voxels(y, e_layer, e_inc, self.calibration, self.grid, threshold)
        if self.log_energy:
            return voxels_from_log_energy(self.standard.inverse(x).reshape(len(x), -1), e_layer, threshold)
        return voxels_from_fractions(self.fractions_from_features(x), e_layer, threshold)

    def hit_values(self, x: Tensor, e_layer: Tensor) -> Tensor:
        """``log(E / threshold)`` of the hits of network variables ``x`` ``(n, n_voxels)``, empty
        voxels below :data:`EMPTY_CUT` — what the hit-energy calibration maps. A fraction model
        (the laViT, the logit-fraction ViT) is decoded first (:func:`voxels_from_fractions`) and
        its voxels put in :func:`log_energy_features`' form."""
        if self.log_energy:
            return self.standard.inverse(x).reshape(len(x), -1)
        threshold = self.detector.threshold_mev
        voxels = voxels_from_fractions(self.fractions_from_features(x), e_layer, threshold)
        return log_energy_features(voxels, threshold)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of this part's network, ``{"<part>_network": n}``."""
        return {f"{self.part}_network": sum(p.numel() for p in self.net.parameters())}

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
