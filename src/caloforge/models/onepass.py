"""The generator of the one-pass voxel and image models (CaloINN, BIB-AE, L2LFlows).

They share everything but their network: one sampler of one pass (no steps to set), float32
on the CPU or a CUDA device, one scalar generation option that widens or narrows the noise
(``temperature``, ``latent_scale``), and batches drawn from their own random stream
(:func:`batch_seed`, on the host: the same draws on any device). A family subclasses
:class:`OnePassGenerator`, naming itself, its sampler and its option, and adds ``describe``;
its model has ``sample(energies, generator, option) -> cells`` (on the device of
``energies``), ``to(device)``, ``detector``, ``energy_range``, ``complete`` and
``config.<option>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from caloforge.io import VoxelShowers
from caloforge.models.protocol import (
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
)

__all__ = ["OnePassGenerator", "one_pass_batch"]


class OnePassModel(Protocol):
    """What :class:`OnePassGenerator` needs of a model."""

    detector: Any
    energy_range: tuple[float, float]
    complete: bool
    config: Any

    def sample(self, energies: Any, gen: Any, option: float) -> Any: ...

    def to(self, device: Any) -> Any: ...


def one_pass_batch(
    model: OnePassModel, energies: np.ndarray, seed: int, index: int, option: float, device: str = "cpu"
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed`` (its own random stream, :func:`batch_seed`), by
    ``model`` on ``device`` (where the model must be); the cells come back to the host."""
    import torch

    e = torch.from_numpy(np.asarray(energies, np.float64)).float().to(device)
    gen = torch.Generator().manual_seed(batch_seed(seed, index))  # on the host: the same draws anywhere
    return VoxelShowers(np.asarray(energies, np.float64), model.sample(e, gen, option).cpu().numpy())


class OnePassGenerator:
    """A one-pass model's checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`."""

    output = "voxels"
    family: ClassVar[str]
    label: ClassVar[str]
    particle: ClassVar[str]
    #: the model's name in messages, its sampler, what the sampler does, and its one option
    name: ClassVar[str]
    sampler: ClassVar[str]
    how: ClassVar[str]
    option: ClassVar[str]

    def __init__(self, model: Any, path: Path | None = None) -> None:
        self.model, self.path = model, path
        self.detector = model.detector
        self.conditions = (energy_condition(model.energy_range),)
        self.complete = model.complete

    def plan(self, request: GenerationRequest) -> Plan:
        """One pass, float32, on the request's device; the option checked to lie in (0, 10)."""
        name = self.name
        if request.sampler not in (None, self.sampler):
            raise GenerationError(
                f"unknown sampler '{request.sampler}' for {name}: {self.how} ({self.sampler})"
            )
        if request.n_steps not in (None, 1):
            raise GenerationError(f"--steps {request.n_steps}: {name} samples in one pass (no steps to set)")
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: {name} models run in float32 (use auto or float32)"
            )
        unknown = sorted(set(request.options) - {self.option})
        if unknown:
            raise GenerationError(f"unknown {name} generation option '{unknown[0]}' (it takes {self.option})")
        value = float(request.options.get(self.option, getattr(self.model.config, self.option)))
        if not 0 < value < 10:
            raise GenerationError(f"{self.option} must lie in (0, 10), got {value}")
        return Plan(
            sampler=SamplerInfo(self.sampler, 1, 1),
            precision="float32",
            device=request.device,
            allow_extrapolation=request.allow_extrapolation,
            attrs={self.option: value},
            options={self.option: value},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.VoxelShowers` (batch ``index`` of a run with ``seed``),
        on the plan's device (the model is moved there)."""
        self.model.to(plan.device)
        option = plan.options[self.option]
        return one_pass_batch(self.model, conditions["energy"], seed, index, option, plan.device)
