"""The CaloINN network: standardised layer features, a coupling flow conditioned on the
incident energy, and what generation needs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from caloforge.detector import Detector, PolarGrid
from caloforge.models._placement import randn
from caloforge.models.caloinn.config import CaloINNConfig
from caloforge.models.caloinn.variables import layer_features, voxels_from_layer_features
from caloforge.models.checkpoint import detector_state
from caloforge.models.nn.coupling import CouplingFlow
from caloforge.models.voxel_features import log_energy_condition

CHECKPOINT_FORMAT = "caloforge-caloinn"
CHECKPOINT_VERSION = 1


class CaloINN(nn.Module):
    """A conditional normalizing flow over the ``(L, 1 + V)`` features of
    :func:`~caloforge.models.caloinn.variables.layer_features`, standardised per feature.

    ``forward`` direction: data → latent (training by maximum likelihood); :meth:`sample`
    runs it backwards from Gaussian noise, one pass, no iterations.
    """

    def __init__(self, config: CaloINNConfig, detector: Detector, energy_range: tuple[float, float]) -> None:
        super().__init__()
        if not isinstance(detector.readout, PolarGrid):
            raise ValueError(f"CaloINN needs a voxel (polar) readout; detector '{detector.name}' has cells")
        self.config, self.detector = config, detector
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        ro = detector.readout
        self.shape = (detector.n_layers, 1 + ro.n_alpha * ro.n_radial)
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))
        self.flow = CouplingFlow(
            self.shape,
            n_cond=1,
            n_blocks=config.n_blocks,
            hidden=config.hidden,
            kernel=config.kernel,
            depth=config.depth,
            kind=config.coupling,
            bins=config.bins,
            bound=config.bound,
            conditioner=config.conditioner,
            seed=config.seed,
        )
        self.complete = False

    # ---- preprocessing
    def energy_condition(self, e_inc_gev: Tensor) -> Tensor:
        """``(n, 1)``: log incident energy mapped to [-1, 1] over the training range."""
        return log_energy_condition(e_inc_gev, self.energy_range)

    def raw_features(self, voxels: Tensor, e_inc_gev: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Unstandardised features ``(n, L, 1 + V)`` of voxel showers ``(n, n_voxels)`` (MeV)
        with incident energies ``e_inc_gev``."""
        det = self.detector
        return layer_features(
            voxels, det.n_layers, det.threshold_mev, gen, e_inc_gev * 1000.0, self.config.layer_variable
        )

    def fit_standardisation(self, voxels: Tensor, e_inc_gev: Tensor, gen: torch.Generator) -> None:
        """Fit the per-feature mean and width on training showers (widths floored at
        ``config.min_std`` for the voxels, ``config.layer_min_std`` for the layer features)."""
        x = self.raw_features(voxels, e_inc_gev, gen)
        self.mean.copy_(x.mean(0))
        std = x.std(0)
        std[:, 1:] = std[:, 1:].clamp_min(self.config.min_std)
        std[:, 0] = std[:, 0].clamp_min(self.config.layer_min_std)
        self.std.copy_(std)

    def features(self, voxels: Tensor, e_inc_gev: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Standardised features, kept inside the splines' range ``±bound``."""
        edge = self.config.bound * (1 - 1e-4)
        return ((self.raw_features(voxels, e_inc_gev, gen) - self.mean) / self.std).clamp(-edge, edge)

    def voxels_from_features(self, x: Tensor, e_inc_gev: Tensor) -> Tensor:
        """Voxel energies (MeV) ``(n, n_voxels)`` of standardised features ``x``."""
        raw = x * self.std + self.mean
        return voxels_from_layer_features(
            raw, self.detector.threshold_mev, e_inc_gev * 1000.0, self.config.layer_variable
        )

    # ---- density and sampling
    def log_prob(self, x: Tensor, e_inc_gev: Tensor) -> Tensor:
        """Log-density of standardised features ``x`` given the incident energies, per shower."""
        return self.flow.log_prob(x, self.energy_condition(e_inc_gev))

    @torch.no_grad()
    def sample_features(self, e_inc_gev: Tensor, gen: torch.Generator, temperature: float = 1.0) -> Tensor:
        """Standardised features of ``len(e_inc_gev)`` showers from noise drawn with ``gen`` (on
        the host), on the device of ``e_inc_gev``."""
        z = randn((len(e_inc_gev), *self.shape), gen, e_inc_gev.device) * temperature
        return self.flow.inverse(z, self.energy_condition(e_inc_gev))

    @torch.no_grad()
    def sample(self, e_inc_gev: Tensor, gen: torch.Generator, temperature: float = 1.0) -> Tensor:
        """Voxel showers (MeV) ``(n, n_voxels)`` for the incident energies (GeV)."""
        return self.voxels_from_features(self.sample_features(e_inc_gev, gen, temperature), e_inc_gev)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters, ``{"flow": n}``."""
        return {"flow": sum(p.numel() for p in self.flow.parameters())}

    # ---- checkpoint form
    def inference_state(self) -> dict[str, Any]:
        """Everything :func:`~caloforge.models.caloinn.checkpoint.load_model` needs."""
        return detector_state(self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CaloINN"]
