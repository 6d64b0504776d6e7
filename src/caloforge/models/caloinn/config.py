"""CaloINN run settings; presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from caloforge.models._config import EMALoopConfig
from caloforge.models.caloinn.variables import LAYER_VARIABLES
from caloforge.models.nn.coupling import CONDITIONERS, COUPLINGS


@dataclass(frozen=True)
class CaloINNConfig(EMALoopConfig):
    """Settings of one CaloINN training run.

    Presets: ``cpu`` (2 CPU cores, under an hour), ``paper`` (the published block count,
    subnet width and spline bins, for a GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "CaloINN"
    LEGACY: ClassVar[dict[str, Any]] = {"layer_variable": "log-energy", "layer_min_std": 1.0}

    steps: int = 1200
    batch_size: int = 128
    lr: float = 1e-3  # the one-cycle schedule's peak
    log_every: int = 50
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
            at_least_one=("n_blocks", "bins", "hidden", "depth"),
            odd=("kernel",),
            positive=("bound", "min_std", "layer_min_std", "temperature"),
            choices={"coupling": COUPLINGS, "layer_variable": LAYER_VARIABLES, "conditioner": CONDITIONERS},
        )  # fmt: skip


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, CaloINNConfig] = CaloINNConfig.read_presets(__package__)
