"""L2LFlows run settings; presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caloforge.models._config import EMALoopConfig

#: Elementwise transforms of the per-layer coupling blocks.
LAYER_COUPLINGS = ("affine", "rqs")


@dataclass(frozen=True)
class L2LFlowsConfig(EMALoopConfig):
    """Settings of one L2LFlows training run.

    Presets: ``cpu`` (2 CPU cores, 15-20 minutes on 10k showers), ``paper`` (paper-scale
    blocks and widths, for a GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "L2LFlows"

    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3  # the one-cycle schedule's peak
    log_every: int = 50
    # the layer-energy flow (a zuko neural spline flow over the 30 log layer energies)
    energy_transforms: int = 4
    energy_hidden: int = 64
    energy_bins: int = 8
    # the per-layer flows: coupling blocks on 2 x 2-squeezed layer images, masks alternating
    # (checkerboard colours, then row halves), each with a conditioner of `depth` + 1 3 x 3
    # convolutions `hidden` channels wide; per-layer convolution weights, or one set shared by
    # all layers (`shared_weights`, ~2x faster on CPUs; the scalar maps and position biases
    # stay per layer)
    n_context: int = 5  # previous layers each layer's flow is conditioned on
    n_blocks: int = 4
    coupling: str = "affine"
    bins: int = 6
    hidden: int = 16
    depth: int = 1
    shared_weights: bool = True
    bound: float = 6.0
    # preprocessing: per-cell standardisation widths are floored at min_std
    min_std: float = 0.2
    # sampling: the base distribution's width (1 = the trained density)
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("energy_transforms", "energy_hidden", "energy_bins", "n_blocks", "bins", "hidden",
                          "depth"),
            at_least_zero=("n_context",),
            positive=("bound", "min_std", "temperature"),
            choices={"coupling": LAYER_COUPLINGS},
        )  # fmt: skip


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, L2LFlowsConfig] = L2LFlowsConfig.read_presets(__package__)
