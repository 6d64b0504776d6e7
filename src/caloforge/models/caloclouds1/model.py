"""The CaloClouds (I) container: Shower Flow, EPiC encoder, Latent Flow, DDPM PointWise Net."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.calibrate import NPointsCalibration
from caloforge.detector import Detector
from caloforge.models.caloclouds1.config import CaloClouds1Config
from caloforge.models.checkpoint import checkpoint_header
from caloforge.models.nn.ddpm import DDPMSchedule
from caloforge.models.nn.epic import EPiCEncoder
from caloforge.models.nn.pointwise import PointScaler, PointWiseNet
from caloforge.models.nn.showerflow import ShowerFlow, spline_flow

CHECKPOINT_FORMAT = "caloforge-caloclouds1"
#: Bumped whenever the checkpoint layout changes; older/newer versions are refused.
CHECKPOINT_VERSION = 1
#: ShowerFlow constructor arguments a checkpoint records (the flow comes from another model).
FLOW_KEYS = ("n_layers", "hidden", "transforms", "bins", "passes", "bound", "max_points")


class CaloClouds1(nn.Module):
    """A trained (or training) CaloClouds (I): the Shower Flow (borrowed from a CaloClouds II
    model), the EPiC encoder (training only), the Latent Flow (sampling), the DDPM PointWise
    Net (EMA weights), the point scaler and the number-of-points calibration.

    ``flow_config`` holds the Shower Flow's settings (:data:`FLOW_KEYS`); ``energy_range`` (GeV) the span
    of training energies; ``max_points`` the largest training shower (the net's ``N`` scale).
    """

    def __init__(
        self,
        config: CaloClouds1Config,
        detector: Detector,
        max_points: int,
        energy_range: tuple[float, float],
        flow_config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.config = config
        self.detector = detector
        self.max_points = int(max_points)
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        self.complete = False
        self.flow = ShowerFlow(**{k: flow_config[k] for k in FLOW_KEYS})
        self.energy_scale_gev = max(100.0, self.energy_range[1])
        self.encoder = EPiCEncoder(
            dim_in=4,
            latent_dim=config.latent_dim,
            dim_local=config.encoder_local,
            dim_global=config.encoder_global,
            hidden=config.encoder_hidden,
            n_layers=config.encoder_layers,
            dim_cond=2,
        )
        self.latent_flow = spline_flow(
            config.latent_dim, 2, config.latent_flow_transforms, config.latent_flow_hidden, order_seed=1
        )
        self.net = PointWiseNet(
            config.net_widths,
            energy_scale_gev=self.energy_scale_gev,
            n_scale=self.max_points,
            latent_dim=config.latent_dim,
        )
        self.scaler = PointScaler(half_size_mm=detector.half_size_mm)
        self.calibration = NPointsCalibration.identity(self.max_points)
        self.schedule = DDPMSchedule(
            config.ddpm_steps, config.beta_start, config.beta_end, config.beta_schedule
        )

    def condition(self, energy: Tensor, n_points: Tensor) -> Tensor:
        """``(B, 2)``: ``[E / E_scale * 2 - 1, N / N_scale * 2 - 1]`` for the encoder and Latent Flow."""
        return torch.stack(
            [
                energy.float() / self.energy_scale_gev * 2 - 1,
                n_points.float() / self.max_points * 2 - 1,
            ],
            dim=-1,
        )

    def latent_from_noise(self, energy: Tensor, n_points: Tensor, noise: Tensor) -> Tensor:
        """Latents ``(B, latent_dim)`` from the Latent Flow for base noise ``noise``."""
        return self.latent_flow(self.condition(energy, n_points)).transform.inv(noise)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of each part."""
        parts = {
            "shower_flow": self.flow,
            "epic_encoder": self.encoder,
            "latent_flow": self.latent_flow,
            "pointwise_net": self.net,
        }
        return {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}

    def metadata(self) -> dict[str, Any]:
        """The plain-data part of a checkpoint (JSON strings and numbers)."""
        return checkpoint_header(self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION) | {
            "flow_config": json.dumps(self.flow.settings),
            "max_points": self.max_points,
            "energy_range": list(self.energy_range),
            "calibration": self.calibration.to_dict(),
            "complete": self.complete,
        }
