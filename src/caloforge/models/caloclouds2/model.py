"""The CaloClouds II model container: Shower Flow, PointWise Net, point scaler and N calibration."""

from __future__ import annotations

from typing import Any

from torch import nn

from caloforge.calibrate import NPointsCalibration, RadialCalibration
from caloforge.detector import Detector
from caloforge.models.caloclouds2.config import CaloClouds2Config, SamplerSpec
from caloforge.models.checkpoint import checkpoint_header
from caloforge.models.nn.edm import ConsistencyDenoiser, EDMDenoiser
from caloforge.models.nn.pointwise import (
    PointScaler,
    PointWiseNet,
)
from caloforge.models.nn.showerflow import (
    ShowerFlow,
)

CHECKPOINT_FORMAT = "caloforge-caloclouds2"
#: Bumped whenever the checkpoint layout changes; older/newer versions are refused.
CHECKPOINT_VERSION = 1


class CaloClouds2(nn.Module):
    """A trained (or training) CaloClouds II: Shower Flow, PointWise Net (EMA weights), point
    scaler and calibration, plus what it was trained on.

    ``energy_range`` (GeV) is the span of incident energies in the training data;
    ``max_points`` the largest shower in it (the flow's cap and the net's ``N`` scale).
    """

    def __init__(
        self,
        config: CaloClouds2Config,
        detector: Detector,
        max_points: int,
        energy_range: tuple[float, float],
    ) -> None:
        super().__init__()
        self.config = config
        self.detector = detector
        self.max_points = int(max_points)
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        self.complete = False
        self.flow = ShowerFlow(
            n_layers=detector.n_layers,
            hidden=config.flow_hidden,
            transforms=config.flow_transforms,
            bins=config.flow_bins,
            passes=config.flow_passes,
            bound=config.flow_bound,
            max_points=self.max_points,
        )
        self.net = PointWiseNet(
            config.net_widths, energy_scale_gev=max(100.0, self.energy_range[1]), n_scale=self.max_points
        )
        self.scaler = PointScaler(target_std=config.sigma_data, half_size_mm=detector.half_size_mm)
        self.calibration = NPointsCalibration.identity(self.max_points)
        self.sampler = SamplerSpec()
        # How the centre of gravity is set (caloforge.calibrate.calibrate_points): "tilt" for new
        # models; checkpoints written before the choice existed were sampled with "shift".
        self.cog_correction = "tilt"
        # Energy weights by radius (caloforge.calibrate.RadialCalibration); None: none.
        self.radial_calibration: RadialCalibration | None = None

    @property
    def denoiser(self) -> EDMDenoiser:
        """The PointWise Net with EDM (or, distilled, consistency) preconditioning:
        ``D(x, sigma, energy=, n_points=)``."""
        return self.denoiser_for(self.net)

    def denoiser_for(self, net: nn.Module) -> EDMDenoiser:
        """:attr:`denoiser` around another implementation of the same network (e.g. a trace)."""
        if self.sampler.consistency:
            return ConsistencyDenoiser(net, self.config.sigma_data, self.sampler.sigma_min)
        return EDMDenoiser(net, self.config.sigma_data)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of the flow and of the PointWise Net."""
        return {
            "shower_flow": sum(p.numel() for p in self.flow.parameters()),
            "pointwise_net": sum(p.numel() for p in self.net.parameters()),
        }

    def metadata(self) -> dict[str, Any]:
        """The plain-data part of a checkpoint (JSON strings and numbers)."""
        return checkpoint_header(self, CHECKPOINT_FORMAT, CHECKPOINT_VERSION) | {
            "max_points": self.max_points,
            "energy_range": list(self.energy_range),
            "calibration": self.calibration.to_dict(),
            "sampler": self.sampler.to_dict(),
            "cog_correction": self.cog_correction,
            "radial_calibration": None
            if self.radial_calibration is None
            else self.radial_calibration.to_dict(),
            "complete": self.complete,
        }
