"""CaloINN generation: Gaussian noise through the inverted flow, then the voxel decoder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge.io import VoxelShowers
from caloforge.models.caloinn.checkpoint import model_from_state
from caloforge.models.caloinn.model import CaloINN
from caloforge.models.protocol import (
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
)

#: The one sampler of a flow: a single pass through the inverted network.
SAMPLER = "inverse"


def voxel_batch(
    model: CaloINN, energies: np.ndarray, seed: int, index: int, temperature: float | None = None
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed`` (its own random stream, :func:`batch_seed`)."""
    e = torch.from_numpy(np.asarray(energies, np.float64)).float()
    gen = torch.Generator().manual_seed(batch_seed(seed, index))
    t = model.config.temperature if temperature is None else temperature
    return VoxelShowers(np.asarray(energies, np.float64), model.sample(e, gen, t).numpy())


class CaloINNGenerator:
    """A CaloINN checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`.

    Generation option ``temperature`` (default: the model's, 1.0) scales the base noise.
    """

    family = "caloinn"
    output = "voxels"
    particle = "e-"
    label = "caloinn"

    def __init__(self, model: CaloINN, path: Path | None = None) -> None:
        self.model, self.path = model, path
        self.detector = model.detector
        self.conditions = (energy_condition(model.energy_range),)
        self.complete = model.complete

    def plan(self, request: GenerationRequest) -> Plan:
        """One inverse pass; float32 on the CPU."""
        if request.sampler not in (None, SAMPLER):
            raise GenerationError(
                f"unknown sampler '{request.sampler}' for CaloINN: a flow samples in one pass ({SAMPLER})"
            )
        if request.n_steps not in (None, 1):
            raise GenerationError(f"--steps {request.n_steps}: CaloINN samples in one pass (no steps to set)")
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: CaloINN models run in float32 (use auto or float32)"
            )
        if request.device != "cpu":
            raise GenerationError("CaloINN models generate on the CPU only")
        unknown = sorted(set(request.options) - {"temperature"})
        if unknown:
            raise GenerationError(f"unknown CaloINN generation option '{unknown[0]}' (it takes temperature)")
        temperature = float(request.options.get("temperature", self.model.config.temperature))
        if not 0 < temperature < 10:
            raise GenerationError(f"temperature must lie in (0, 10), got {temperature}")
        return Plan(
            sampler=SamplerInfo(SAMPLER, 1, 1),
            precision="float32",
            allow_extrapolation=request.allow_extrapolation,
            attrs={"temperature": temperature},
            options={"temperature": temperature},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.VoxelShowers` (batch ``index`` of a run with ``seed``)."""
        return voxel_batch(self.model, conditions["energy"], seed, index, plan.options["temperature"])

    def describe(self) -> dict[str, Any]:
        """Blocks, conditioner and parameters of the flow."""
        c = self.model.config
        bins = f", {c.bins} bins" if c.coupling == "rqs" else ""
        kernel = f", kernel {c.kernel}" if c.conditioner == "conv" else ""
        layer = "layer share" if c.layer_variable == "shares" else "layer log energy"
        return {
            "parameters": self.model.n_parameters()["flow"],
            "coupling blocks": f"{c.n_blocks} × {c.coupling}{bins}",
            "conditioner": f"{c.conditioner}, {c.depth} × {c.hidden}{kernel}",
            "features": f"{self.model.shape[0]} layers × (1 {layer} + {self.model.shape[1] - 1} voxels)",
            "sampler": f"{SAMPLER} (one pass), temperature {c.temperature:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> CaloINNGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return CaloINNGenerator(model_from_state(state, path), path)
