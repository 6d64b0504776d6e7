"""CaloDREAM generation: energy network, then shape network, then the voxel decoder."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.io import VoxelShowers
from caloforge.models._placement import randn
from caloforge.models.calodream.checkpoint import model_from_state
from caloforge.models.calodream.model import (
    CaloDream,
)
from caloforge.models.calodream.solver import SolverSpec, resolve_solver
from caloforge.models.calodream.variables import (
    layer_energies_from_u,
)
from caloforge.models.protocol import (
    Condition,
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    check_conditions,
    energy_condition,
)

# --------------------------------------------------------------------------- generation


def shape_velocity(model: CaloDream, cond: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The shape network as a velocity field ``v(t, x)`` for a batch with conditions ``cond``."""
    net = model.net

    def v(t: Tensor, x: Tensor) -> Tensor:
        return net(x, t.reshape(1), cond)

    return v


def shape_noise(model: CaloDream, n: int, gen: torch.Generator) -> Tensor:
    """Starting points ``x(t=0)`` of ``n`` showers in the shape network's variables, drawn on
    the host with ``gen`` and put on the model's device."""
    mean = model.standard.mean
    return randn((n, *mean.shape), gen, mean.device)


def shape_condition(model: CaloDream, e_inc: Tensor, u: Tensor) -> Tensor:
    """The shape network's condition: scaled log incident energy and standardised logit(u)."""
    return torch.cat([model.energy_condition(e_inc), model.u_features(u)], dim=-1)


@torch.no_grad()
def sample_u(model: CaloDream, e_inc: Tensor, solver: SolverSpec, gen: torch.Generator) -> Tensor:
    """Layer-energy variables ``u`` ``(n, L)`` from the energy network."""
    z = model.net.sample(model.energy_condition(e_inc), solver.solver(), gen)  # type: ignore[operator]
    return model.u_from_features(z)


@torch.no_grad()
def sample_voxels(
    model: CaloDream, e_inc: Tensor, u: Tensor, solver: SolverSpec, gen: torch.Generator
) -> Tensor:
    """Voxel energies (MeV) ``(n, n_voxels)`` from the shape network given ``u`` (calibrated
    when :func:`uses_calibration`)."""
    x1 = sample_shape_features(model, e_inc, u, solver, gen)
    e_layer = layer_energies_from_u(u, e_inc * 1000.0)
    return model.voxels_from_features(x1, e_layer, e_inc if uses_calibration(model, solver) else None)


def uses_calibration(model: CaloDream, solver: SolverSpec) -> bool:
    """Whether generation with ``solver`` applies the model's hit-energy calibration: only with
    the sampler it was fitted with (the model's stored one)."""
    stored = model.sampler["shape"]
    same = solver.method == stored.method and solver.n_steps == stored.n_steps and solver.bns is stored.bns
    return model.part == "shape" and model.calibration is not None and same


@torch.no_grad()
def sample_shape_features(
    model: CaloDream, e_inc: Tensor, u: Tensor, solver: SolverSpec, gen: torch.Generator
) -> Tensor:
    """The shape network's (standardised) variables at t = 1, from noise drawn with ``gen``."""
    x0 = shape_noise(model, len(e_inc), gen)
    return solver.solver()(shape_velocity(model, shape_condition(model, e_inc, u)), x0)


def generate(
    model: CaloDream,
    energies_gev: np.ndarray,
    *,
    batch_size: int = 256,
    seed: int = 0,
    shape_solver: SolverSpec | None = None,
    energy_solver: SolverSpec | None = None,
    layer_u: np.ndarray | None = None,
    allow_extrapolation: bool = False,
    first_batch: int = 0,
) -> Iterator[VoxelShowers]:
    """Voxel showers for ``energies_gev``, one batch at a time.

    ``model`` is a shape model with an embedded energy model. ``layer_u`` (``(n, L)``) replaces
    the energy network by given layer-energy variables (to study the shape network alone).
    Batch ``k`` draws from its own stream, :func:`~caloforge.models.protocol.batch_seed`
    ``(seed, first_batch + k)``: the same showers for any split of the batches over processes.
    """
    _check_shape_model(model, need_energy=layer_u is None)
    energies = check_conditions(model_conditions(model), {"energy": energies_gev}, allow_extrapolation)[
        "energy"
    ]
    shape_solver = shape_solver or model.sampler["shape"]
    if model.energy_model is not None:
        energy_solver = energy_solver or model.energy_model.sampler["energy"]
    for index, lo in enumerate(range(0, len(energies), batch_size), start=first_batch):
        u = None if layer_u is None else layer_u[lo : lo + batch_size]
        yield voxel_batch(model, energies[lo : lo + batch_size], shape_solver, energy_solver, seed, index, u)


def place(model: CaloDream, device: str | torch.device) -> CaloDream:
    """``model`` and the networks it embeds (energy, VAE), which ``model.to`` does not move,
    on ``device`` (moved in place)."""
    for part in (model, model.energy_model, model.vae_model):
        if part is not None:
            part.to(device)
    return model


def voxel_batch(
    model: CaloDream,
    energies: np.ndarray,
    shape_solver: SolverSpec,
    energy_solver: SolverSpec | None,
    seed: int,
    index: int,
    layer_u: np.ndarray | None = None,
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed``: the energy network's layer energies (or the given
    ``layer_u``), then the shape network's voxels, all from the batch's own random stream
    (drawn on the host). Runs on the shape network's device (its embedded networks are moved
    there); the voxels come back to the host."""
    device = model.standard.mean.device
    place(model, device)  # the embedded networks beside the shape network
    e = torch.from_numpy(np.asarray(energies, np.float64)).float().to(device)
    gen = torch.Generator().manual_seed(batch_seed(seed, index))
    if layer_u is not None:
        u = torch.as_tensor(layer_u).float().to(device)
    else:
        u = sample_u(model.energy_model, e, energy_solver, gen)  # type: ignore[arg-type]
    vox = sample_voxels(model, e, u, shape_solver, gen)
    return VoxelShowers(np.asarray(energies, np.float64), vox.cpu().numpy())


def _check_shape_model(model: CaloDream, need_energy: bool = True) -> None:
    if model.part != "shape":
        raise GenerationError(f"this is a CaloDREAM {model.part} network: generate with a shape model")
    if need_energy and model.energy_model is None:
        raise GenerationError("this shape model has no energy network: train it with --energy-model RUN")


def model_conditions(model: CaloDream) -> tuple[Condition, ...]:
    """What the model is conditioned on: the incident energy over its training range."""
    return (energy_condition(model.energy_range),)


class CaloDreamGenerator:
    """A CaloDREAM shape checkpoint (with its energy network) as a
    :class:`~caloforge.models.protocol.ShowerGenerator`; ``sampler`` is the shape network's
    ODE solver (``euler``, ``midpoint``, ``rk4`` or a trained ``bns``). It generates on the
    request's device (the CPU or a CUDA device): networks, solvers and calibration."""

    family = "calodream"
    output = "voxels"
    particle = "e-"

    def __init__(self, model: CaloDream, path: Path | None = None) -> None:
        self.model = model
        self.path = path
        self.detector = model.detector
        self.conditions = model_conditions(model)
        self.complete = model.complete and (model.energy_model is None or model.energy_model.complete)
        # the readout beside the variant where it is not dataset 2's: calodream-lavit-ds3
        readout = model.detector.name.removeprefix("calochallenge-")
        base = "calodream-lavit" if model.latent else "calodream"
        self.label = base if readout == "ds2" else f"{base}-{readout}"

    def plan(self, request: GenerationRequest) -> Plan:
        """The shape solver resolved (:func:`resolve_solver`); float32 on the request's device."""
        _check_shape_model(self.model)
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: CaloDREAM models run in float32 (use auto or float32)"
            )
        if request.options:
            raise GenerationError(f"unknown CaloDREAM generation option '{sorted(request.options)[0]}'")
        try:
            spec = resolve_solver(self.model, request.sampler, request.n_steps)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        return Plan(
            sampler=SamplerInfo(spec.method, spec.n_steps, spec.evaluations),
            precision="float32",
            device=request.device,
            allow_extrapolation=request.allow_extrapolation,
            attrs={"latent": bool(self.model.latent), "calibrated": uses_calibration(self.model, spec)},
            options={"method": spec.method, "n_steps": spec.n_steps},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.VoxelShowers` (batch ``index`` of a run with ``seed``),
        on the plan's device (the networks are moved there)."""
        model = place(self.model, plan.device)
        spec = resolve_solver(model, plan.options["method"], plan.options["n_steps"])
        energy_solver = model.energy_model.sampler["energy"]  # type: ignore[union-attr]
        return voxel_batch(model, conditions["energy"], spec, energy_solver, seed, index)

    def describe(self) -> dict[str, Any]:
        """Parts, parameters, solvers and calibration of the model."""
        m = self.model
        facts: dict[str, Any] = {
            "part": m.part + (" (latent, laViT)" if m.latent else ""),
            "parameters": m.n_parameters(),
        }
        if m.energy_model is not None:
            facts["energy network parameters"] = m.energy_model.n_parameters()
            e = m.energy_model.sampler["energy"]
            facts["energy solver"] = f"{e.method}, {e.n_steps} steps"
        s = m.sampler.get("shape")
        if s is not None:
            facts["shape solver"] = f"{s.method}, {s.n_steps} steps ({s.evaluations} evaluations)"
        facts["shape target"] = m.config.shape_target if not m.latent else "VAE latent"
        facts["hit-energy calibration"] = m.calibration is not None
        return facts


def load_generator(path: Path, state: dict[str, Any]) -> CaloDreamGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""

    return CaloDreamGenerator(model_from_state(state, path), path)
