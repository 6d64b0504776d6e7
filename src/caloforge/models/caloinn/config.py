"""CaloINN run settings; presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from caloforge.models._config import PresetConfig
from caloforge.models.caloinn.variables import LAYER_VARIABLES
from caloforge.models.nn.coupling import CONDITIONERS, COUPLINGS


@dataclass(frozen=True)
class CaloINNConfig(PresetConfig):
    """Settings of one CaloINN training run.

    Presets: ``cpu`` (2 CPU cores, under an hour), ``paper`` (the published block count,
    subnet width and spline bins, for a GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "CaloINN"
    LEGACY: ClassVar[dict[str, Any]] = {"layer_variable": "log-energy", "layer_min_std": 1.0}

    seed: int = 0
    steps: int = 1200
    batch_size: int = 128
    lr: float = 1e-3  # the one-cycle schedule's peak
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    val_fraction: float = 0.05
    val_every: int = 250
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    # the invertible network
    n_blocks: int = 8
    coupling: str = "rqs"
    bins: int = 6
    bound: float = 8.0
    conditioner: str = "conv"
    hidden: int = 64
    kernel: int = 3
    depth: int = 2
    # preprocessing: what a layer's first feature is (variables.LAYER_VARIABLES), and the
    # per-feature standardisation's widths, floored at min_std for the voxels (a rarely hit
    # voxel's rare hits stay moderate) and at layer_min_std for the layer features (the
    # total's natural width is ~0.05: a floor of 1 hid it in a narrow spike)
    layer_variable: str = "shares"
    min_std: float = 1.0
    layer_min_std: float = 0.01
    # sampling: the base distribution's width (1 = the trained density)
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("steps", "batch_size", "val_every", "log_every", "n_blocks", "bins", "hidden",
                          "depth"),
            odd=("kernel",),
            positive=("lr", "grad_clip", "bound", "min_std", "layer_min_std", "temperature"),
            fractions={"val_fraction": (0, 0.5), "ema_decay": (0, 1)},
            choices={"coupling": COUPLINGS, "layer_variable": LAYER_VARIABLES, "conditioner": CONDITIONERS},
        )  # fmt: skip


PRESETS: dict[str, CaloINNConfig] = {
    "cpu": CaloINNConfig(),
    # The published CaloINN: 12 spline blocks with 10 bins and subnets of 3 layers of 256
    # (arXiv:2312.09290); here with the layer-convolution conditioner (see docs/caloinn.md).
    "paper": CaloINNConfig(
        steps=200_000,
        batch_size=256,
        lr=5e-4,
        n_blocks=12,
        bins=10,
        hidden=256,
        kernel=5,
        depth=3,
        checkpoint_minutes=15.0,
    ),
    "smoke": CaloINNConfig(
        steps=30, batch_size=16, val_every=10, log_every=10, n_blocks=2, bins=4, hidden=8, ema_decay=0.9
    ),
}
CaloINNConfig.PRESETS = PRESETS
