"""CaloClouds (I) run settings: presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caloforge.models._config import LoopConfig
from caloforge.models.nn.ddpm import SCHEDULES
from caloforge.models.nn.pointwise import CPU_WIDTHS


@dataclass(frozen=True)
class CaloClouds1Config(LoopConfig):
    """Everything that defines a CaloClouds (I) training run; presets in :data:`PRESETS`.

    The Shower Flow is not trained here: it is taken from a CaloClouds II model trained on
    the same data (the paper shares one flow between CaloClouds, CaloClouds II and CM).

    >>> CaloClouds1Config.from_preset("cpu").ddpm_steps
    100
    """

    name: str = "cpu"
    # Data: showers used (None: all) and points per shower kept in memory.
    max_showers: int | None = None
    cache_points: int = 1024
    chunk_size: int = 250
    # EPiC encoder → Gaussian latent (VAE-like, KL weight), conditioned on E_inc and N.
    latent_dim: int = 32
    encoder_local: int = 32
    encoder_global: int = 10
    encoder_hidden: int = 64
    encoder_layers: int = 3
    encoder_points: int = 256
    kl_weight: float = 1e-3
    # Latent Flow (zuko neural spline flow over the latent, conditioned on E_inc and N).
    latent_flow_transforms: int = 4
    latent_flow_hidden: tuple[int, ...] = (128, 128)
    latent_flow_lr: float = 1e-3
    # DDPM PointWise Net (epsilon prediction), 100 discrete steps.
    net_widths: tuple[int, ...] = CPU_WIDTHS
    ddpm_steps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "quadratic"
    steps: int = 15000
    points_per_shower: int = 256
    lr: float = 5e-4
    ema_max_decay: float = 0.9999
    # Number-of-points calibration, fitted with the model's own sampler after training.
    calibration_showers: int = 256
    calibration_refinements: int = 1

    KIND: ClassVar[str] = "CaloClouds"

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("cache_points", "chunk_size", "latent_dim", "encoder_local", "encoder_global",
                          "encoder_hidden", "encoder_points", "latent_flow_transforms", "ddpm_steps",
                          "points_per_shower", "calibration_showers"),
            at_least_zero=("encoder_layers", "calibration_refinements"),
            positive=("latent_flow_lr", "kl_weight"),
            choices={"beta_schedule": SCHEDULES},
            point_widths=("net_widths",),
            widths=("latent_flow_hidden",),
        )  # fmt: skip
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, CaloClouds1Config] = CaloClouds1Config.read_presets(__package__)
