"""CaloDREAM run settings; presets ``cpu``, ``paper``, ``ds3``, ``paper-ds3`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from caloforge.models._config import EMALoopConfig
from caloforge.models.calodream.variables import (
    SHAPE_TARGETS,
)
from caloforge.odesolvers import (
    FIXED_STEP_METHODS,
)

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CaloDreamConfig(EMALoopConfig):
    """Settings of one CaloDREAM training run (the ``part`` chosen at training time).

    Presets: ``cpu`` (2 CPU cores, about an hour per part), ``paper`` (published sizes, for a
    GPU), ``ds3`` and ``paper-ds3`` (the same for dataset 3's grid), ``smoke`` (seconds, for tests).
    """

    KIND: ClassVar[str] = "CaloDREAM"
    LEGACY: ClassVar[dict[str, Any]] = {"dequantize": False, "shape_target": "logit-fraction"}

    steps: int = 6000
    batch_size: int = 128
    min_lr: float = 1e-5
    grad_clip: float = 1.0
    val_every: int = 200
    log_every: int = 50
    # energy network (transfusion)
    energy_d_model: int = 64
    energy_heads: int = 4
    energy_encoder_layers: int = 1
    energy_decoder_layers: int = 3
    energy_head_hidden: int = 128
    # shape network (ViT)
    patch: tuple[int, int, int] = (5, 4, 3)
    vit_dim: int = 64
    vit_depth: int = 4
    vit_heads: int = 4
    # VAE and latent ViT
    vae_latent_channels: int = 4
    vae_stride: tuple[int, int, int] = (3, 2, 3)
    vae_channels: int = 32
    vae_beta: float = 1e-4
    # False: no 3 x 3 x 3 convolutions at the voxels' resolution (the patch VAE of dataset 3)
    vae_full_resolution: bool = True
    latent_patch: tuple[int, int, int] = (3, 2, 1)
    # default samplers stored with the model
    energy_solver: str = "rk4"
    energy_solver_steps: int = 8
    shape_solver: str = "rk4"
    shape_solver_steps: int = 4
    # With dequantize, empty voxels of a filled layer train as uniform energies below the
    # threshold (the cut after sampling empties them again) instead of a spike at logit(ε).
    # Off by default: on ds2 it doubled the generated hits (uniform noise in linear space
    # piles up just under the threshold in logit space, and small errors push it over).
    dequantize: bool = False
    # What the full-space ViT learns (SHAPE_TARGETS): the paper's logit of the layer fraction,
    # or log(E / threshold) with empty voxels on a slab below the threshold (log_energy_features).
    shape_target: str = "logit-fraction"

    def __post_init__(self) -> None:
        self.check(
            choices={
                "shape_target": SHAPE_TARGETS,
                "energy_solver": FIXED_STEP_METHODS,
                "shape_solver": FIXED_STEP_METHODS,
            },
        )
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"CaloDREAM config: min_lr must lie in [0, lr], got {self.min_lr}")
        if self.dequantize and self.shape_target != "logit-fraction":
            raise ValueError("CaloDREAM config: dequantize applies to the logit-fraction shape target")


#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, CaloDreamConfig] = CaloDreamConfig.read_presets(__package__)
