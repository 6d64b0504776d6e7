"""L2LFlows run settings; presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from caloforge.models._config import PresetConfig

#: Elementwise transforms of the per-layer coupling blocks.
LAYER_COUPLINGS = ("affine", "rqs")


@dataclass(frozen=True)
class L2LFlowsConfig(PresetConfig):
    """Settings of one L2LFlows training run.

    Presets: ``cpu`` (2 CPU cores, 15-20 minutes on 10k showers), ``paper`` (paper-scale
    blocks and widths, for a GPU), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "L2LFlows"

    seed: int = 0
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3  # the one-cycle schedule's peak
    grad_clip: float = 10.0
    ema_decay: float = 0.999
    val_fraction: float = 0.05
    val_every: int = 250
    log_every: int = 50
    checkpoint_minutes: float = 5.0
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
            at_least_one=("steps", "batch_size", "val_every", "log_every", "energy_transforms",
                          "energy_hidden", "energy_bins", "n_blocks", "bins", "hidden", "depth"),
            at_least_zero=("n_context",),
            positive=("lr", "grad_clip", "bound", "min_std", "temperature"),
            fractions={"val_fraction": (0, 0.5), "ema_decay": (0, 1)},
            choices={"coupling": LAYER_COUPLINGS},
        )  # fmt: skip


PRESETS: dict[str, L2LFlowsConfig] = {
    # Cut for 2 CPU cores versus the paper: 4 affine blocks per layer instead of spline blocks
    # with U-Net conditioners, 2 convolutions of 16 channels shared by the 30 layers (per-layer
    # scalar maps and position biases) instead of separate per-layer networks tens of channels
    # wide, a 4 x 64 spline flow for the layer energies, ~1.2k steps of 32 showers (~4 epochs
    # of 10k) instead of hundreds of epochs.
    "cpu": L2LFlowsConfig(),
    # Paper scale (arXiv:2405.20407, as far as its description goes: per-layer flows of spline
    # coupling blocks with convolutional conditioners, a MAF-like flow for the layer energies,
    # long training on a GPU); conv stacks rather than U-Nets here.
    "paper": L2LFlowsConfig(
        steps=200_000,
        batch_size=128,
        lr=5e-4,
        energy_transforms=6,
        energy_hidden=128,
        n_blocks=8,
        coupling="rqs",
        bins=8,
        hidden=64,
        depth=3,
        shared_weights=False,
        checkpoint_minutes=15.0,
    ),
    "smoke": L2LFlowsConfig(
        steps=12,
        batch_size=8,
        val_every=6,
        log_every=6,
        energy_transforms=1,
        energy_hidden=8,
        energy_bins=4,
        n_blocks=2,
        hidden=4,
        ema_decay=0.9,
    ),
}
L2LFlowsConfig.PRESETS = PRESETS
