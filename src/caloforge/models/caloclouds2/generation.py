"""CaloClouds II generation: flow, point sampling, calibrations; precisions and the fast CPU path."""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.calibrate import calibrate_points
from caloforge.hardware import cpu_vendor
from caloforge.io import PointShowers
from caloforge.models.caloclouds2.checkpoint import (
    model_from_state,
)
from caloforge.models.caloclouds2.config import _SAMPLERS, SamplerSpec
from caloforge.models.caloclouds2.model import CaloClouds2
from caloforge.models.nn.couplinginverse import CouplingFlowInverse, supports_coupling_inverse
from caloforge.models.nn.pointwise import (
    POINTS_PAD,
    POINTS_PER_CALL,
    FoldedPointWiseNet,
    fused_linear_available,
    padded_width,
    shower_groups,
)
from caloforge.models.nn.showerflow import (
    ShowerFlow,
    largest_remainder,
    layer_energies,
)
from caloforge.models.protocol import (
    Condition,
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
    generate_batches,
)

# --------------------------------------------------------------------------- generation

#: Values of ``precision`` in :func:`generate`.
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively (CPU: AMX or AVX-512-BF16; GPU: Ampere+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_properties(device).major >= 8
    if device.type != "cpu":
        return False
    has = [
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    ]
    return any(has) and fused_linear_available(torch.bfloat16)


def faster_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 is the *faster* precision of the PointWise Net on ``device``, as
    measured with ``caloforge bench`` (docs/benchmarks.md): on a GPU from Ampere on; on a CPU
    with AMX tiles; on an AMD CPU with AVX-512-BF16 (EPYC: CM 2.9 vs 3.6 ms per shower). Not on
    an Intel CPU with AVX-512-BF16 but no AMX (Xeon: 5.75 vs 4.58 ms), where the conversions
    cost more than the narrower dot products save."""
    device = torch.device(device)
    if device.type == "cuda":
        return native_bfloat16(device)
    if device.type != "cpu" or not fused_linear_available(torch.bfloat16):
        return False
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return amx or (avx512_bf16 and cpu_vendor() == "AuthenticAMD")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> Literal["float32", "bfloat16"]:
    """``float32`` or ``bfloat16`` for the PointWise Net; ``auto`` picks whichever is faster on
    ``device`` (:func:`faster_bfloat16`; both keep the shipped models' fidelity,
    docs/benchmarks.md). Raises :class:`GenerationError` for anything else."""
    if precision not in PRECISIONS:
        raise GenerationError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if faster_bfloat16(device) else "float32"
    return "bfloat16" if precision == "bfloat16" else "float32"


def _softmax(x: Tensor, dim: int = -1, _stacklevel: int = 3, dtype: torch.dtype | None = None) -> Tensor:
    """``F.softmax`` spelt out: torch's CPU kernel is ~10x slower on the flow's 8-bin last axis."""
    x = x if dtype is None else x.to(dtype)
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


@contextlib.contextmanager
def _explicit_softmax() -> Iterator[None]:
    """Within the block, ``torch.nn.functional.softmax`` (which zuko's splines call) is :func:`_softmax`."""
    original = F.softmax
    F.softmax = _softmax  # type: ignore[assignment]
    try:
        yield
    finally:
        F.softmax = original


class _FlowInverse(nn.Module):
    def __init__(self, flow: ShowerFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, energy: Tensor, noise: Tensor) -> Tensor:
        return self.flow.features_from_noise(energy, noise)


def _traced_flow(model: CaloClouds2) -> nn.Module:
    """A frozen TorchScript trace of the Shower Flow's inverse pass, cached on the model: the
    same numbers as the eager flow without Python's per-operation overhead (4.5x faster at
    batch size 1; freezing folds the weights in: another 1.4x). A flow of coupling transforms
    is traced in the form of :class:`~caloforge.models.nn.couplinginverse.CouplingFlowInverse`
    (each pass computes only the half it solves: another 2x), others with the spline's
    softmax in its explicit form, which is faster on the CPU. Both equal the eager flow up to
    float rounding, which can very rarely move a rounded number of points by one. The cache
    follows the weights: an in-place update of its parameters or buffers (more training), or
    a new flow, makes a new trace."""
    module = model.flow
    versions = tuple(t._version for t in itertools.chain(module.parameters(), module.buffers()))
    cached = model.__dict__.get("_traced_flow")
    if cached is not None and cached[0] is module and cached[1] == versions:
        return cached[2]
    training = module.training
    try:
        with warnings.catch_warnings(), torch.no_grad(), _explicit_softmax():
            warnings.simplefilter("ignore")  # tracer warnings about Python numbers in the graph
            inverse = (
                CouplingFlowInverse(module) if supports_coupling_inverse(module) else _FlowInverse(module)
            )
            flow = torch.jit.trace(
                inverse.eval(),
                (torch.full((3,), 50.0), torch.zeros(3, module.n_features)),
                check_trace=False,
            )
            flow = torch.jit.freeze(flow)
    finally:
        module.train(training)
    model.__dict__["_traced_flow"] = (module, versions, flow)
    return flow


def _sample_points(
    model: CaloClouds2,
    energy: Tensor,
    n_flow: Tensor,
    n: Tensor,
    generator: torch.Generator,
    sampler: SamplerSpec,
    points_per_call: int,
    net: nn.Module | None = None,
    autocast: bool = False,
) -> Tensor:
    """Run the sampler for ``n[b]`` points per shower; ``(B, max n, 4)`` in network space.

    Showers are sorted by size and denoised in groups of at most ``points_per_call`` points
    (at least one shower per group), each padded to a multiple of :data:`POINTS_PAD`, so little
    work goes into padding. ``net`` replaces the PointWise Net (e.g. by its folded form);
    ``autocast`` runs it under bfloat16 autocast.
    """
    out = torch.zeros(len(n), padded_width(int(n.max())), 4)
    denoiser = model.denoiser if net is None else model.denoiser_for(net)
    device = next(model.net.parameters()).device
    for idx, width in shower_groups(n, points_per_call, POINTS_PAD):
        x = torch.randn(len(idx), width, 4, generator=generator) * sampler.sigma_max
        # The net is conditioned on the flow's N: it learnt the point density of a Geant4 shower
        # with that many points; the calibrated count only decides how many are drawn from it.
        # Noise is drawn on the CPU, so a GPU gives the same showers as the CPU (up to rounding).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            z = sampler.sample(
                denoiser,
                x.to(device),
                generator,
                energy=energy[idx].to(device),
                n_points=n_flow[idx].to(device),
            )
        out[idx, :width] = z.float().cpu()
    return out[:, : int(n.max())]


@torch.no_grad()
def generate_batch(
    model: CaloClouds2,
    energy: Tensor,
    generator: torch.Generator,
    sampler: SamplerSpec | None = None,
    points_per_call: int = POINTS_PER_CALL,
    fast: bool = False,
    precision: Literal["float32", "bfloat16"] = "float32",
) -> tuple[PointShowers, Tensor]:
    """One batch of showers and the flow's (uncalibrated) numbers of points.

    ``fast`` (CPU only) runs the flow's inverse pass as a TorchScript trace and the PointWise
    Net in its folded form (:class:`~caloforge.models.nn.pointwise.FoldedPointWiseNet`): the same
    showers up to float rounding, less overhead. ``precision`` (``float32`` or ``bfloat16``)
    is that of the PointWise Net: on the CPU its folded form runs in that type, elsewhere the
    eager net runs under autocast.
    """
    on_cpu = next(model.net.parameters()).device.type == "cpu"
    bfloat16 = precision == "bfloat16"
    net = None
    if fast and on_cpu:
        noise = torch.randn(len(energy), model.flow.n_features, generator=generator)
        flow = model.flow.decode(_traced_flow(model)(energy, noise), energy)
    else:
        flow = model.flow.sample(energy, generator)
    if on_cpu and (fast or bfloat16):
        net = FoldedPointWiseNet(model.net, torch.bfloat16 if bfloat16 else torch.float32)
    n_flow = flow.n_points
    n = model.calibration(n_flow)
    counts = largest_remainder(flow.point_fractions, n)
    layer_e = layer_energies(flow.energy_weights, counts, flow.e_vis)
    mask = torch.arange(int(n.max())).unsqueeze(0) < n.unsqueeze(1)
    spec = sampler or model.sampler
    z = _sample_points(
        model, energy, n_flow, n, generator, spec, points_per_call, net, bfloat16 and net is None
    )
    points = model.scaler.inverse(z)
    points = calibrate_points(
        points, mask, counts, layer_e, flow.cog[:, :2], model.cog_correction, model.radial_calibration
    )
    points = torch.where(mask.unsqueeze(-1), points, 0.0)
    return PointShowers(energy.double().numpy(), points.numpy()), n_flow


def resolve_sampler(
    model: CaloClouds2, sampler: str | None = None, n_steps: int | None = None, sigma_max: float | None = None
) -> SamplerSpec:
    """The model's default sampler with ``sampler`` / ``n_steps`` / ``sigma_max`` replaced where given.

    A distilled (consistency) model only samples with ``consistency``; an EDM model with
    ``heun`` or ``euler``. Raises :class:`GenerationError` otherwise.
    """
    base = model.sampler
    name = base.name if sampler is None else sampler
    if name not in _SAMPLERS:
        raise GenerationError(f"unknown sampler '{name}': use one of {', '.join(_SAMPLERS)}")
    if (name == "consistency") != base.consistency:
        kind = "a distilled (consistency) model" if base.consistency else "an EDM (diffusion) model"
        allowed = "consistency" if base.consistency else "heun or euler"
        raise GenerationError(f"sampler '{name}' does not fit {kind}: use {allowed}")
    steps = n_steps if n_steps is not None else (base.n_steps if name == base.name else 13)
    if steps < 1:
        raise GenerationError(f"the sampler needs at least one step, got {steps}")
    if sigma_max is not None and not sigma_max > base.sigma_min:
        raise GenerationError(f"sigma_max must exceed sigma_min ({base.sigma_min}), got {sigma_max}")
    return replace(
        base, name=name, n_steps=steps, sigma_max=base.sigma_max if sigma_max is None else sigma_max
    )


def generate(
    model: CaloClouds2,
    energies_gev: Sequence[float] | np.ndarray,
    batch_size: int = 64,
    seed: int = 0,
    n_steps: int | None = None,
    sampler: str | None = None,
    allow_extrapolation: bool = False,
    points_per_call: int = POINTS_PER_CALL,
    device: str | torch.device | None = None,
    fast: bool = True,
    precision: str = "auto",
    first_batch: int = 0,
) -> Iterator[PointShowers]:
    """Yield showers for ``energies_gev``, ``batch_size`` at a time, in the given order.

    Points follow caloforge's in-memory convention (x, y mm; layer coordinate ``l + 0.5``;
    E MeV; zero padding). ``sampler`` and ``n_steps`` default to the model's own
    (:attr:`CaloClouds2.sampler`, the one its calibration was fitted with); see
    :func:`resolve_sampler`. The output depends on ``seed``, ``batch_size`` and
    ``points_per_call`` (padded points per network call; raise it on a GPU); batch ``k`` draws
    from :func:`batch_seed` ``(seed, first_batch + k)``, so the showers of a long run can be
    made in pieces (e.g. by several processes) and come out the same. Energies outside
    the trained range raise :class:`GenerationError` unless ``allow_extrapolation``.
    ``device`` (e.g. ``cuda``) moves the PointWise Net there; the rest runs on the CPU.
    ``fast`` (CPU) runs the flow as a TorchScript trace and the net in its folded form: the
    same showers up to float rounding, faster. ``precision`` is the PointWise Net's: ``auto``
    (whichever is faster on the hardware, see
    :func:`resolve_precision`), ``float32`` or ``bfloat16`` (slightly different showers of the
    same fidelity, docs/benchmarks.md).
    """
    generator = CaloClouds2Generator(model)
    on = str(device) if device is not None else str(next(model.net.parameters()).device)
    options = {"points_per_call": points_per_call, "fast": fast}
    plan = generator.plan(GenerationRequest(sampler, n_steps, precision, allow_extrapolation, on, options))
    if not model.complete:
        warnings.warn("this CaloClouds II model has not finished training", stacklevel=2)
    yield from generate_batches(generator, {"energy": energies_gev}, plan, seed, batch_size, first_batch)


def model_conditions(model: CaloClouds2) -> tuple[Condition, ...]:
    """What the model is conditioned on: the incident energy over its training range."""
    return (energy_condition(model.energy_range),)


class CaloClouds2Generator:
    """A CaloClouds II (or CM) checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`.

    Request options: ``points_per_call`` (padded points per network call, default
    :data:`POINTS_PER_CALL` on the CPU, 2^20 on a GPU) and ``fast`` (the traced flow and
    folded net on the CPU, default on).
    """

    family = "caloclouds2"
    output = "points"
    particle = "gamma"

    def __init__(self, model: CaloClouds2, path: Path | None = None) -> None:
        self.model = model.eval()
        self.path = path
        self.detector = model.detector
        self.conditions = model_conditions(model)
        self.complete = model.complete
        self.label = "caloclouds2-cm" if model.sampler.consistency else "caloclouds2"

    def plan(self, request: GenerationRequest) -> Plan:
        """Sampler and precision resolved (:func:`resolve_sampler`, :func:`resolve_precision`)."""
        extra = sorted(set(request.options) - {"points_per_call", "fast"})
        if extra:
            raise GenerationError(f"unknown CaloClouds II generation option '{extra[0]}'")
        # Larger point groups per network call on a GPU, where wide batches pay.
        default = POINTS_PER_CALL if request.device == "cpu" else 1 << 20
        per_call = int(request.options.get("points_per_call", default))
        if per_call < 1:
            raise GenerationError(f"points_per_call must be at least 1, got {per_call}")
        spec = resolve_sampler(self.model, request.sampler, request.n_steps)
        precision = resolve_precision(request.precision, request.device)
        return Plan(
            sampler=SamplerInfo(spec.name, spec.n_steps, spec.network_calls),
            precision=precision,
            device=request.device,
            allow_extrapolation=request.allow_extrapolation,
            attrs={"precision": precision},
            options={"points_per_call": per_call, "fast": bool(request.options.get("fast", True))},
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        """One batch of :class:`~caloforge.io.PointShowers` (batch ``index`` of a run with ``seed``)."""
        model = self.model
        if next(model.net.parameters()).device != torch.device(plan.device):
            model.net.to(plan.device)  # only the PointWise Net runs there; the rest stays on the CPU
        spec = resolve_sampler(model, plan.sampler.name, plan.sampler.n_steps)
        energy = torch.as_tensor(np.asarray(conditions["energy"]), dtype=torch.float32)
        generator = torch.Generator().manual_seed(batch_seed(seed, index))
        showers, _ = generate_batch(
            model,
            energy,
            generator,
            spec,
            plan.options["points_per_call"],
            plan.options["fast"],
            plan.precision,  # type: ignore[arg-type]
        )
        return showers

    def describe(self) -> dict[str, Any]:
        """Parameters, sampler, trained energy range and largest shower of the model."""
        m = self.model
        return {
            "parameters": m.n_parameters(),
            "sampler": f"{m.sampler.name}, {m.sampler.n_steps} steps ({m.sampler.network_calls} calls)",
            "max points": m.max_points,
            "preset": m.config.name,
        }


def load_generator(path: Path, state: dict[str, Any]) -> CaloClouds2Generator:
    """The family loader: a checked checkpoint's contents as a generator."""
    from caloforge.models.caloclouds2.checkpoint import check_state

    return CaloClouds2Generator(model_from_state(check_state(state, path), path), path)
