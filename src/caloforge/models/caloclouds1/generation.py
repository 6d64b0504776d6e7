"""CaloClouds (I) generation: Shower Flow → Latent Flow → 100 DDPM steps → calibrations."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.calibrate import calibrate_points
from caloforge.io import PointShowers
from caloforge.models._placement import randn
from caloforge.models.caloclouds1.checkpoint import check_state, model_from_state
from caloforge.models.caloclouds1.model import CaloClouds1
from caloforge.models.nn.ddpm import sample_ddpm
from caloforge.models.nn.pointwise import (
    POINTS_PAD,
    POINTS_PER_CALL,
    FoldedPointWiseNet,
    padded_width,
    shower_groups,
)
from caloforge.models.nn.showerflow import largest_remainder, layer_energies
from caloforge.models.protocol import (
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
    generate_batches,
)

#: Latent base noise is drawn from a normal truncated at this many standard deviations (the
#: CaloClouds code's ``truncate_std``): the flow's far tails hold few training latents.
LATENT_TRUNCATION = 2.0


def truncated_normal(shape: tuple[int, ...], generator: torch.Generator, bound: float) -> Tensor:
    """Standard normal draws beyond ``±bound`` redrawn until none is (same stream, reproducible;
    drawn on the generator's device, the host)."""
    x = torch.randn(shape, generator=generator)
    for _ in range(100):
        bad = x.abs() > bound
        if not bad.any():
            break
        x[bad] = torch.randn(int(bad.sum()), generator=generator)
    return x.clamp(-bound, bound)


@torch.no_grad()
def generate_batch(
    model: CaloClouds1,
    energy: Tensor,
    generator: torch.Generator,
    points_per_call: int = POINTS_PER_CALL,
    fast: bool = True,
) -> tuple[PointShowers, Tensor]:
    """One batch of showers and the flow's (uncalibrated) numbers of points, both on the host.

    The whole pipeline (flows, sampler, calibrations) runs on the device the model is on;
    every random number is drawn on the host from ``generator`` and moved there, so a GPU
    draws the same numbers as the CPU. ``fast`` runs the PointWise Net in its folded form on
    the CPU (the same showers up to float rounding); elsewhere the plain net runs."""
    device = next(model.net.parameters()).device
    energy = energy.to(device)
    flow = model.flow.sample(energy, generator)
    n_flow = flow.n_points
    n = model.calibration(n_flow)
    counts = largest_remainder(flow.point_fractions, n)
    layer_e = layer_energies(flow.energy_weights, counts, flow.e_vis)
    noise = truncated_normal((len(energy), model.config.latent_dim), generator, LATENT_TRUNCATION)
    latent = model.latent_from_noise(energy, n_flow, noise.to(device))
    net = FoldedPointWiseNet(model.net) if fast and device.type == "cpu" else model.net
    out = torch.zeros(len(energy), padded_width(int(n.max())), 4, device=device)
    for idx, w in shower_groups(n, points_per_call, POINTS_PAD):
        idx = idx.to(device)
        x = randn((len(idx), w, 4), generator, device)
        # Conditioned on the flow's N (the density of a Geant4 shower with that many points);
        # the calibrated count only decides how many points are drawn.
        cond = {"energy": energy[idx], "n_points": n_flow[idx], "latent": latent[idx]}
        out[idx, :w] = sample_ddpm(net, x, model.schedule, generator, **cond)
    mask = torch.arange(int(n.max()), device=device).unsqueeze(0) < n.unsqueeze(1)
    z = out[:, : int(n.max())]
    points = calibrate_points(model.scaler.inverse(z), mask, counts, layer_e, flow.cog[:, :2])
    points = torch.where(mask.unsqueeze(-1), points, 0.0)
    return PointShowers(energy.double().cpu().numpy(), points.cpu().numpy()), n_flow.cpu()


class CaloClouds1Generator:
    """A CaloClouds (I) checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`.

    Request options: ``points_per_call`` (padded points per network call, default
    :data:`POINTS_PER_CALL` on the CPU, 2^20 on a GPU) and ``fast`` (the folded net on the CPU,
    default on). The sampler is the model's DDPM (``ddpm``, its trained number of steps): a
    discrete-time model has no other. It generates on the request's device (the CPU or a CUDA
    device).
    """

    family = "caloclouds1"
    output = "points"
    particle = "gamma"

    def __init__(self, model: CaloClouds1, path: Path | None = None) -> None:
        self.model = model.eval()
        self.path = path
        self.detector = model.detector
        self.conditions = (energy_condition(model.energy_range),)
        self.complete = model.complete
        self.label = "caloclouds1"

    def plan(self, request: GenerationRequest) -> Plan:
        """The DDPM sampler of the model; float32 on the request's device."""
        steps = self.model.config.ddpm_steps
        extra = sorted(set(request.options) - {"points_per_call", "fast"})
        if extra:
            raise GenerationError(f"unknown CaloClouds generation option '{extra[0]}'")
        if request.sampler not in (None, "ddpm"):
            raise GenerationError(f"sampler '{request.sampler}' does not fit a DDPM model: use ddpm")
        if request.n_steps not in (None, steps):
            raise GenerationError(f"this DDPM model samples with the {steps} steps it was trained with")
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: CaloClouds runs in float32 (auto or float32)"
            )
        # Larger point groups per network call on a GPU, where wide batches pay.
        default = POINTS_PER_CALL if request.device == "cpu" else 1 << 20
        per_call = int(request.options.get("points_per_call", default))
        if per_call < 1:
            raise GenerationError(f"points_per_call must be at least 1, got {per_call}")
        return Plan(
            sampler=SamplerInfo("ddpm", steps, steps),
            precision="float32",
            device=request.device,
            allow_extrapolation=request.allow_extrapolation,
            attrs={"precision": "float32"},
            options={"points_per_call": per_call, "fast": bool(request.options.get("fast", True))},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.PointShowers` (batch ``index`` of a run with ``seed``),
        on the plan's device (the model is moved there)."""
        self.model.to(plan.device)
        energy = torch.as_tensor(np.asarray(conditions["energy"]), dtype=torch.float32, device=plan.device)
        generator = torch.Generator().manual_seed(batch_seed(seed, index))
        showers, _ = generate_batch(
            self.model, energy, generator, plan.options["points_per_call"], plan.options["fast"]
        )
        return showers

    def describe(self) -> dict[str, Any]:
        """Parameters, sampler, trained energy range and largest shower of the model."""
        m = self.model
        return {
            "parameters": m.n_parameters(),
            "sampler": f"ddpm, {m.config.ddpm_steps} steps ({m.config.beta_schedule} betas "
            f"{m.config.beta_start:g} to {m.config.beta_end:g})",
            "max points": m.max_points,
            "preset": m.config.name,
        }


def generate(
    model: CaloClouds1,
    energies_gev: Sequence[float] | np.ndarray,
    batch_size: int = 64,
    seed: int = 0,
    allow_extrapolation: bool = False,
    fast: bool = True,
    first_batch: int = 0,
) -> Iterator[PointShowers]:
    """Yield showers for ``energies_gev``, ``batch_size`` at a time, in order; batch ``k`` draws
    from :func:`batch_seed` ``(seed, first_batch + k)``. Energies outside the trained range
    raise :class:`GenerationError` unless ``allow_extrapolation``."""
    generator = CaloClouds1Generator(model)
    plan = generator.plan(GenerationRequest(allow_extrapolation=allow_extrapolation, options={"fast": fast}))
    if not model.complete:
        warnings.warn("this CaloClouds model has not finished training", stacklevel=2)
    yield from generate_batches(generator, {"energy": energies_gev}, plan, seed, batch_size, first_batch)


def load_generator(path: Path, state: dict[str, Any]) -> CaloClouds1Generator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return CaloClouds1Generator(model_from_state(check_state(state, path), path), path)
