"""BIB-AE generation: latents from N(0, 1), the decoder, the post-processor, the threshold."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge.io import VoxelShowers
from caloforge.models.bibae.checkpoint import model_from_state
from caloforge.models.bibae.model import BIBAE
from caloforge.models.protocol import (
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
)

__all__ = ["SAMPLER", "BIBAEGenerator", "image_batch", "load_generator"]

#: The one sampler: a latent draw through the decoder and the post-processor.
SAMPLER = "decode"


def image_batch(
    model: BIBAE, energies: np.ndarray, seed: int, index: int, latent_scale: float | None = None
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed`` (its own random stream, :func:`batch_seed`)."""
    e = torch.from_numpy(np.asarray(energies, np.float64)).float()
    gen = torch.Generator().manual_seed(batch_seed(seed, index))
    scale = model.config.latent_scale if latent_scale is None else latent_scale
    return VoxelShowers(np.asarray(energies, np.float64), model.sample(e, gen, scale).numpy())


class BIBAEGenerator:
    """A BIB-AE checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`.

    Generation option ``latent_scale`` (default: the model's, 1.0) scales the latent draws.
    """

    family = "bibae"
    output = "voxels"
    particle = "gamma"
    label = "bibae"

    def __init__(self, model: BIBAE, path: Path | None = None) -> None:
        self.model, self.path = model, path
        self.detector = model.detector
        self.conditions = (energy_condition(model.energy_range),)
        self.complete = model.complete

    def plan(self, request: GenerationRequest) -> Plan:
        """One decoder pass; float32 on the CPU."""
        if request.sampler not in (None, SAMPLER):
            raise GenerationError(
                f"unknown sampler '{request.sampler}' for BIB-AE: it decodes a latent in one pass ({SAMPLER})"
            )
        if request.n_steps not in (None, 1):
            raise GenerationError(f"--steps {request.n_steps}: BIB-AE decodes in one pass (no steps to set)")
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: BIB-AE models run in float32 (use auto or float32)"
            )
        if request.device != "cpu":
            raise GenerationError("BIB-AE models generate on the CPU only")
        unknown = sorted(set(request.options) - {"latent_scale"})
        if unknown:
            raise GenerationError(f"unknown BIB-AE generation option '{unknown[0]}' (it takes latent_scale)")
        scale = float(request.options.get("latent_scale", self.model.config.latent_scale))
        if not 0 < scale < 10:
            raise GenerationError(f"latent_scale must lie in (0, 10), got {scale}")
        return Plan(
            sampler=SamplerInfo(SAMPLER, 1, 1),
            precision="float32",
            allow_extrapolation=request.allow_extrapolation,
            attrs={"latent_scale": scale},
            options={"latent_scale": scale},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.VoxelShowers` (batch ``index`` of a run with ``seed``)."""
        return image_batch(self.model, conditions["energy"], seed, index, plan.options["latent_scale"])

    def describe(self) -> dict[str, Any]:
        """Widths, latent and parameters of the networks."""
        c, n = self.model.config, self.model.n_parameters()
        length, cells, _ = self.model.shape
        return {
            "parameters": sum(n.values()),
            "encoder / decoder": f"3-d convolutions {'/'.join(map(str, c.channels))}, latent {c.latent}",
            "post-processor": f"{c.post_layers} × {c.post_hidden} 1×1×1 convolutions, {n['post']} parameters",
            "image": f"{length} layers × {cells} × {cells} cells",
            "sampler": f"{SAMPLER} (one pass), latent scale {c.latent_scale:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> BIBAEGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return BIBAEGenerator(model_from_state(state, path), path)
