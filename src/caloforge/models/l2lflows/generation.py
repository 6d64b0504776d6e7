"""L2LFlows generation: layer energies from their flow, then the layers in order, each from its
flow conditioned on the previous ones generated; decoded, thresholded, in MeV."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge.io import VoxelShowers
from caloforge.models.l2lflows.checkpoint import model_from_state
from caloforge.models.l2lflows.model import L2LFlows
from caloforge.models.protocol import (
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
)

#: The one sampler: the inverted flows, one pass for the energies and one per layer.
SAMPLER = "inverse"


def voxel_batch(
    model: L2LFlows, energies: np.ndarray, seed: int, index: int, temperature: float | None = None
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed`` (its own random stream, :func:`batch_seed`)."""
    e = torch.from_numpy(np.asarray(energies, np.float64)).float()
    gen = torch.Generator().manual_seed(batch_seed(seed, index))
    t = model.config.temperature if temperature is None else temperature
    return VoxelShowers(np.asarray(energies, np.float64), model.sample(e, gen, t).numpy())


class L2LFlowsGenerator:
    """An L2LFlows checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`.

    Generation option ``temperature`` (default: the model's, 1.0) scales the base noise.
    """

    family = "l2lflows"
    output = "voxels"
    particle = "gamma"
    label = "l2lflows"

    def __init__(self, model: L2LFlows, path: Path | None = None) -> None:
        self.model, self.path = model, path
        self.detector = model.detector
        self.conditions = (energy_condition(model.energy_range),)
        self.complete = model.complete

    def plan(self, request: GenerationRequest) -> Plan:
        """The inverted flows in one pass each; float32 on the CPU."""
        if request.sampler not in (None, SAMPLER):
            raise GenerationError(
                f"unknown sampler '{request.sampler}' for L2LFlows: flows sample in one pass ({SAMPLER})"
            )
        if request.n_steps not in (None, 1):
            raise GenerationError(
                f"--steps {request.n_steps}: L2LFlows samples in one pass (no steps to set)"
            )
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: L2LFlows models run in float32 (use auto or float32)"
            )
        if request.device != "cpu":
            raise GenerationError("L2LFlows models generate on the CPU only")
        unknown = sorted(set(request.options) - {"temperature"})
        if unknown:
            raise GenerationError(f"unknown L2LFlows generation option '{unknown[0]}' (it takes temperature)")
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
        """Flows, blocks, conditioners and parameters."""
        c, (n_layers, h, w) = self.model.config, self.model.shape
        bins = f", {c.bins} bins" if c.coupling == "rqs" else ""
        params = self.model.n_parameters()
        return {
            "parameters": sum(params.values()),
            "layer-energy flow": (
                f"NSF, {c.energy_transforms} transforms × {c.energy_hidden}, {c.energy_bins} bins"
            ),
            "layer flows": f"{n_layers} × {c.n_blocks} checkerboard {c.coupling} blocks{bins}",
            "conditioner": (
                f"{c.depth + 1} convolutions × {c.hidden}, {'shared' if c.shared_weights else 'per layer'}; "
                f"{c.n_context} previous layers"
            ),
            "features": f"{n_layers} layer energies + {n_layers} layers × {h} × {w} cells",
            "sampler": f"{SAMPLER} (layer by layer), temperature {c.temperature:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> L2LFlowsGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return L2LFlowsGenerator(model_from_state(state, path), path)


__all__ = ["SAMPLER", "L2LFlowsGenerator", "load_generator", "voxel_batch"]
