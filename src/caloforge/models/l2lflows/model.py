"""The L2LFlows model: preprocessing, the layer-energy flow, the per-layer flows, sampling."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from caloforge.detector import CellGrid, Detector
from caloforge.models._placement import randn
from caloforge.models.checkpoint import detector_state
from caloforge.models.l2lflows.config import L2LFlowsConfig
from caloforge.models.l2lflows.flows import EnergyFlow, LayerFlows, gaussian_log_prob
from caloforge.models.l2lflows.variables import (
    cell_features,
    cells_from_features,
    energies_from_features,
    energy_features,
    layer_energies,
)
from caloforge.models.voxel_features import log_energy_condition

CHECKPOINT_FORMAT = "caloforge-l2lflows"
CHECKPOINT_VERSION = 1


class L2LFlows(nn.Module):
    """Layer-energy flow plus one image flow per layer, over a cell-grid detector.

    ``net`` (``energy`` and ``layers``) holds every trainable weight; the buffers hold the
    standardisation of the layer-energy features ``g`` (per layer) and of the cell features
    ``y`` (per cell), see :mod:`~caloforge.models.l2lflows.variables`.
    """

    def __init__(self, config: L2LFlowsConfig, detector: Detector, energy_range: tuple[float, float]) -> None:
        super().__init__()
        if not isinstance(detector.readout, CellGrid):
            raise ValueError(
                f"L2LFlows needs a cell-grid readout; detector '{detector.name}' has polar voxels"
            )
        self.config, self.detector = config, detector
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        n = detector.readout.n_cells
        self.shape = (detector.n_layers, n, n)
        self.register_buffer("g_mean", torch.zeros(self.shape[0]))
        self.register_buffer("g_std", torch.ones(self.shape[0]))
        self.register_buffer("y_mean", torch.zeros(self.shape))
        self.register_buffer("y_std", torch.ones(self.shape))
        c = config
        self.net = nn.ModuleDict(
            {
                "energy": EnergyFlow(self.shape[0], 1, c.energy_transforms, c.energy_hidden, c.energy_bins),
                "layers": LayerFlows(
                    self.shape[0],
                    (n, n),
                    c.n_context,
                    2,
                    c.n_blocks,
                    c.hidden,
                    c.depth,
                    c.coupling,
                    c.bins,
                    c.bound,
                    c.shared_weights,
                ),
            }
        )
        self.complete = False

    # ---- preprocessing
    def energy_condition(self, e_inc_gev: Tensor) -> Tensor:
        """``(n, 1)``: log incident energy mapped to [-1, 1] over the training range."""
        return log_energy_condition(e_inc_gev, self.energy_range)

    def images(self, voxels: Tensor) -> Tensor:
        """``(n, L, H, W)`` view of flat showers ``(n, L·H·W)``."""
        return voxels.reshape(len(voxels), *self.shape)

    def raw_features(self, voxels: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Unstandardised ``g`` ``(n, L)`` and ``y`` ``(n, L, H, W)`` of flat showers (MeV)."""
        t = self.detector.threshold_mev
        images = self.images(voxels)
        e = layer_energies(images)
        return energy_features(e, t, gen), cell_features(images, e, t, gen)

    def fit_standardisation(self, voxels: Tensor, gen: torch.Generator) -> None:
        """Per-layer mean and width of ``g``, per-cell of ``y`` (widths floored at ``min_std``)."""
        g, y = self.raw_features(voxels, gen)
        self.g_mean.copy_(g.mean(0))
        self.g_std.copy_(g.std(0).clamp_min(1e-3))
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).clamp_min(self.config.min_std))

    def features(self, voxels: Tensor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Standardised ``g`` and ``y``; ``y`` kept inside ``±bound``."""
        g, y = self.raw_features(voxels, gen)
        edge = self.config.bound * (1 - 1e-4)
        return (g - self.g_mean) / self.g_std, ((y - self.y_mean) / self.y_std).clamp(-edge, edge)

    def decode(self, g: Tensor, y: Tensor) -> Tensor:
        """Flat showers (MeV) ``(n, L·H·W)`` of standardised ``g`` and ``y``."""
        t = self.detector.threshold_mev
        e = energies_from_features(g * self.g_std + self.g_mean, t)
        return cells_from_features(y * self.y_std + self.y_mean, e, t).flatten(1)

    # ---- density and sampling
    def log_prob(
        self, g: Tensor, y: Tensor, e_inc_gev: Tensor, net: nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        """Log-densities ``(energy, cells)`` per shower of standardised features (teacher forcing:
        every layer conditioned on the true previous layers), under ``net`` (default: own)."""
        net = self.net if net is None else net
        c = self.energy_condition(e_inc_gev)
        z, ladj = net["energy"](g, c)
        lp_energy = gaussian_log_prob(z) + ladj
        s = torch.stack([c.expand(-1, g.shape[1]), g], dim=-1)
        zy, ladj_y = net["layers"](y, net["layers"].context(y), s)
        return lp_energy, gaussian_log_prob(zy) + ladj_y.sum(-1)

    @torch.no_grad()
    def sample_features(
        self, e_inc_gev: Tensor, gen: torch.Generator, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Standardised ``g`` and ``y`` of ``len(e_inc_gev)`` showers: the layer energies first,
        then the layers in order, each conditioned on the previous ones generated (on the device
        of ``e_inc_gev``; noise drawn on the host with ``gen``)."""
        n, (n_layers, h, w), device = len(e_inc_gev), self.shape, e_inc_gev.device
        c = self.energy_condition(e_inc_gev)
        g = self.net["energy"].inverse(randn((n, n_layers), gen, device) * temperature, c)
        flows: LayerFlows = self.net["layers"]
        k, edge = flows.n_context, self.config.bound * (1 - 1e-4)
        layers = [torch.zeros(n, 1, h, w, device=device)] * k
        no_context = torch.zeros(n, 1, 0, h, w, device=device)
        for i in range(n_layers):
            ctx = torch.stack(layers[len(layers) - k :], dim=2) if k else no_context
            s = torch.stack([c, g[:, i : i + 1]], dim=-1)
            z = randn((n, 1, h, w), gen, device) * temperature
            layers.append(flows.inverse(z, ctx, s, slice(i, i + 1)).clamp(-edge, edge))
        return g, torch.cat(layers[k:], dim=1)

    @torch.no_grad()
    def sample(self, e_inc_gev: Tensor, gen: torch.Generator, temperature: float = 1.0) -> Tensor:
        """Flat showers (MeV) ``(n, L·H·W)`` for the incident energies (GeV)."""
        return self.decode(*self.sample_features(e_inc_gev, gen, temperature))

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters, ``{"energy": n, "layers": m}``."""
        return {k: sum(p.numel() for p in v.parameters()) for k, v in self.net.items()}

    # ---- checkpoint form
    def inference_state(self) -> dict[str, Any]:
        """Everything :func:`~caloforge.models.l2lflows.checkpoint.load_model` needs."""
        return detector_state(self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "L2LFlows"]
