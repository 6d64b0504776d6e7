"""CaloClouds (I) run settings: presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caloforge.models._config import PresetConfig
from caloforge.models.nn.ddpm import SCHEDULES
from caloforge.models.nn.pointwise import CPU_WIDTHS, PAPER_WIDTHS


@dataclass(frozen=True)
class CaloClouds1Config(PresetConfig):
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
    batch_size: int = 64
    points_per_shower: int = 256
    lr: float = 5e-4
    grad_clip: float = 10.0
    ema_max_decay: float = 0.9999
    # Number-of-points calibration, fitted with the model's own sampler after training.
    calibration_showers: int = 256
    calibration_refinements: int = 1
    # Bookkeeping.
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 100

    KIND: ClassVar[str] = "CaloClouds"

    def __post_init__(self) -> None:
        self.check(
            at_least_one=(
                "cache_points", "chunk_size", "latent_dim", "encoder_local", "encoder_global",
                "encoder_hidden", "encoder_points", "latent_flow_transforms", "ddpm_steps", "steps",
                "batch_size", "points_per_shower", "calibration_showers", "log_every",
            ),
            at_least_zero=("encoder_layers", "calibration_refinements"),
            positive=("lr", "latent_flow_lr", "grad_clip", "kl_weight"),
            choices={"beta_schedule": SCHEDULES},
            point_widths=("net_widths",),
            widths=("latent_flow_hidden",),
        )  # fmt: skip
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")


PRESETS: dict[str, CaloClouds1Config] = {
    # Under an hour on the two cores of the development machine for a 20k-shower file.
    "cpu": CaloClouds1Config(),
    # The published sizes (CaloClouds code): latent 256, PointWise Net 4-128-256-512-256-128-4,
    # latent flow of 14 transforms of width 256, 100 quadratic steps 1e-4 → 0.02, KL weight 1e-3,
    # whole showers, long training: GPU territory.
    "paper": CaloClouds1Config(
        name="paper",
        cache_points=6000,
        latent_dim=256,
        encoder_local=128,
        encoder_global=64,
        encoder_hidden=256,
        encoder_layers=6,
        encoder_points=6000,
        latent_flow_transforms=14,
        latent_flow_hidden=(256, 256),
        net_widths=PAPER_WIDTHS,
        steps=1_000_000,
        batch_size=128,
        points_per_shower=6000,
        lr=1e-4,
        calibration_showers=2000,
        log_every=1000,
    ),
    # Seconds: checks that the pipeline runs (tests). Its showers are not meant to be good.
    "smoke": CaloClouds1Config(
        name="smoke",
        cache_points=64,
        chunk_size=50,
        latent_dim=4,
        encoder_local=8,
        encoder_global=4,
        encoder_hidden=16,
        encoder_layers=1,
        encoder_points=32,
        latent_flow_transforms=1,
        latent_flow_hidden=(16,),
        net_widths=(4, 32, 32, 4),
        ddpm_steps=10,
        steps=40,
        batch_size=8,
        points_per_shower=32,
        calibration_showers=16,
        log_every=10,
    ),
}
CaloClouds1Config.PRESETS = PRESETS
