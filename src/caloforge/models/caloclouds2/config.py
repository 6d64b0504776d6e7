"""CaloClouds II run settings (presets ``cpu``, ``paper``, ``smoke``) and its sampler description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from caloforge.models._config import LoopConfig
from caloforge.models.nn.edm import EDMDenoiser
from caloforge.models.nn.pointwise import (
    CPU_WIDTHS,
)
from caloforge.sampling import (
    consistency_sigmas,
    karras_sigmas,
    sample_consistency,
    sample_euler,
    sample_heun,
)


@dataclass(frozen=True)
class SamplerSpec:
    """How a model's points are sampled by default: ``heun`` / ``euler`` with ``n_steps`` noise
    levels (EDM models; Heun costs ``2 n_steps - 1`` network calls), or ``consistency`` with
    ``n_steps`` network calls (distilled models). The N calibration is fitted with it.

    >>> SamplerSpec().network_calls, SamplerSpec("consistency", 1).sigmas().tolist()
    (25, [80.0, 0.0])
    """

    name: str = "heun"
    n_steps: int = 13
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ValueError(f"unknown sampler '{self.name}': use one of {', '.join(_SAMPLERS)}")
        if self.n_steps < 1:
            raise ValueError(f"the sampler needs at least one step, got {self.n_steps}")

    @property
    def consistency(self) -> bool:
        """True for a distilled (consistency) model."""
        return self.name == "consistency"

    @property
    def network_calls(self) -> int:
        """Network evaluations per shower batch."""
        return 2 * self.n_steps - 1 if self.name == "heun" else self.n_steps

    def sigmas(self) -> Tensor:
        """The noise levels the sampler visits (ending with 0)."""
        make = consistency_sigmas if self.consistency else karras_sigmas
        return make(self.n_steps, self.sigma_min, self.sigma_max)

    def sample(self, denoiser: EDMDenoiser, x: Tensor, generator: torch.Generator, **cond: Tensor) -> Tensor:
        """Run the sampler from ``x`` (already scaled to ``sigma_max``)."""
        if self.consistency:
            return sample_consistency(
                denoiser, x, self.sigmas(), generator=generator, sigma_min=self.sigma_min, **cond
            )
        return _SAMPLERS[self.name](denoiser, x, self.sigmas(), **cond)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping."""
        return asdict(self)


_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "heun": sample_heun,
    "euler": sample_euler,
    "consistency": sample_consistency,
}


@dataclass(frozen=True)
class CaloClouds2Config(LoopConfig):
    """Everything that defines a CaloClouds II training run; presets in :data:`PRESETS`.

    >>> CaloClouds2Config.from_preset("cpu", steps=10).steps
    10
    """

    name: str = "cpu"
    # Data: showers used (None: all) and points per shower kept in memory for the PointWise Net.
    max_showers: int | None = None
    cache_points: int = 1024
    chunk_size: int = 250
    # Points re-clustered on a coarser grid of this many squares per cell side (a divisor of the
    # data's 6, e.g. 2: about half the points at 50 GeV); None: the file's own clustering.
    cluster_per_cell: int | None = None
    # Shower Flow (zuko neural spline flow).
    flow_hidden: tuple[int, ...] = (128, 128)
    flow_transforms: int = 6
    flow_bins: int = 8
    flow_passes: int | None = 2  # coupling layers; None: fully autoregressive (slow to sample)
    flow_bound: float = 10.0
    flow_steps: int = 4000
    flow_batch_size: int = 256
    flow_lr: float = 1e-3
    # PointWise Net trained with the EDM loss; `steps` is the length of the whole loop.
    net_widths: tuple[int, ...] = CPU_WIDTHS
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    steps: int = 20000
    points_per_shower: int = 256
    lr: float = 5e-4
    ema_max_decay: float = 0.9999
    # Calibration of the number of points: model showers generated after training with the
    # default sampler of the model, Heun with `calibration_sampler_steps` noise levels.
    calibration_showers: int = 256
    calibration_sampler_steps: int = 13
    # Highest noise level of the default sampler: 10 rather than the paper's 80, because with 13
    # Heun steps from 80 the outer radial rings come out with +60 % energy (+25 % from 10).
    sampler_sigma_max: float = 10.0
    calibration_refinements: int = 1

    KIND: ClassVar[str] = "CaloClouds II"
    # Fields added later, with the value that checkpoints written before them were trained with.
    LEGACY: ClassVar[dict[str, Any]] = {"flow_bound": 5.0, "sampler_sigma_max": 80.0}

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("cache_points", "chunk_size", "cluster_per_cell", "flow_transforms", "flow_bins",
                          "flow_batch_size", "points_per_shower"),
            at_least_zero=("flow_steps",),
            positive=("flow_lr", "sigma_data"),
            point_widths=("net_widths",),
            widths=("flow_hidden",),
            optional=("cluster_per_cell",),
        )  # fmt: skip


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, CaloClouds2Config] = CaloClouds2Config.read_presets(__package__)
