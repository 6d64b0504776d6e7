"""CaloClouds II (arXiv:2309.05704): configuration, training, checkpoints and generation.

The model has two generative parts and a calibration step (SPEC 6.1):

* the :class:`~caloforge.models.showerflow.ShowerFlow` samples per-shower summaries
  (number of points, visible energy, per-layer counts and energies, centre of gravity)
  given the incident energy;
* the :class:`~caloforge.models.pointwise.PointWiseNet`, trained as an EDM denoiser,
  samples that many points independently given (incident energy, number of points);
* :mod:`caloforge.calibrate` makes the points agree with the summaries.

:func:`train` streams a shower file once (per-shower summaries of every shower, a random
subset of ``cache_points`` points per shower kept in memory), then trains both parts in one
interleaved loop — the flow gets ``flow_steps`` of the ``steps`` iterations, spread evenly —
so a run stopped early by ``max_minutes`` leaves both parts equally far along. Checkpoints
(``out_dir/checkpoint.pt``) are written atomically every ``checkpoint_minutes``, at the end,
and on Ctrl-C; ``resume=True`` continues bit for bit. :func:`generate` turns incident
energies into :class:`~caloforge.io.PointShowers` ready for :class:`~caloforge.io.ShowerWriter`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge import __version__
from caloforge.calibrate import NPointsCalibration, calibrate_points, count_hits
from caloforge.detector import Detector, DetectorError, detector_from_dict
from caloforge.io import PointShowers, open_showers
from caloforge.models._config import PresetConfig
from caloforge.models._training import (
    CheckpointError,
    Progress,
    open_run,
    optimizer_step,
    run_loop,
    save_checkpoint,
)
from caloforge.models.edm import EMA, ConsistencyDenoiser, EDMDenoiser, edm_loss
from caloforge.models.pointwise import (
    CPU_WIDTHS,
    PAPER_WIDTHS,
    FoldedPointWiseNet,
    PointScaler,
    PointWiseNet,
    dequantize,
    fused_linear_available,
)
from caloforge.models.showerflow import (
    ShowerFlow,
    ShowerStats,
    largest_remainder,
    layer_energies,
    shower_stats,
)
from caloforge.sampling import (
    consistency_sigmas,
    karras_sigmas,
    sample_consistency,
    sample_euler,
    sample_heun,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "POINTS_PAD",
    "POINTS_PER_CALL",
    "PRECISIONS",
    "PRESETS",
    "CaloClouds2",
    "CaloClouds2Config",
    "CheckpointError",
    "GenerationError",
    "SamplerSpec",
    "TrainResult",
    "batch_seed",
    "calibrate",
    "check_request",
    "fit_calibration",
    "generate",
    "load_model",
    "native_bfloat16",
    "resolve_precision",
    "resolve_sampler",
    "train",
]

CHECKPOINT_FORMAT = "caloforge-caloclouds2"
#: Bumped whenever the checkpoint layout changes; older/newer versions are refused.
CHECKPOINT_VERSION = 1


class GenerationError(ValueError):
    """Showers cannot be generated as asked (e.g. incident energies outside the trained range)."""


@dataclass(frozen=True)
class SamplerSpec:
    """How a model's points are sampled by default: ``heun`` / ``euler`` with ``n_steps`` noise
    levels (EDM models; Heun costs ``2 n_steps - 1`` network calls), or ``consistency`` with
    ``n_steps`` network calls (distilled models). The N calibration is fitted with it.

    >>> SamplerSpec().network_calls, SamplerSpec("consistency", 1).sigmas().tolist()
    (25, [80.0, 0.0])
    """

    name: str = "heun"
    n_steps: int = 13
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ValueError(f"unknown sampler '{self.name}': use one of {', '.join(_SAMPLERS)}")
        if self.n_steps < 1:
            raise ValueError(f"the sampler needs at least one step, got {self.n_steps}")

    @property
    def consistency(self) -> bool:
        """True for a distilled (consistency) model."""
        return self.name == "consistency"

    @property
    def network_calls(self) -> int:
        """Network evaluations per shower batch."""
        return 2 * self.n_steps - 1 if self.name == "heun" else self.n_steps

    def sigmas(self) -> Tensor:
        """The noise levels the sampler visits (ending with 0)."""
        make = consistency_sigmas if self.consistency else karras_sigmas
        return make(self.n_steps, self.sigma_min, self.sigma_max)

    def sample(self, denoiser: EDMDenoiser, x: Tensor, generator: torch.Generator, **cond: Tensor) -> Tensor:
        """Run the sampler from ``x`` (already scaled to ``sigma_max``)."""
        if self.consistency:
            return sample_consistency(
                denoiser, x, self.sigmas(), generator=generator, sigma_min=self.sigma_min, **cond
            )
        return _SAMPLERS[self.name](denoiser, x, self.sigmas(), **cond)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able mapping."""
        return asdict(self)


_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "heun": sample_heun,
    "euler": sample_euler,
    "consistency": sample_consistency,
}


@dataclass(frozen=True)
class CaloClouds2Config(PresetConfig):
    """Everything that defines a CaloClouds II training run; presets in :data:`PRESETS`.

    >>> CaloClouds2Config.from_preset("cpu", steps=10).steps
    10
    """

    name: str = "cpu"
    # Data: showers used (None: all) and points per shower kept in memory for the PointWise Net.
    max_showers: int | None = None
    cache_points: int = 1024
    chunk_size: int = 250
    # Shower Flow (zuko neural spline flow).
    flow_hidden: tuple[int, ...] = (128, 128)
    flow_transforms: int = 6
    flow_bins: int = 8
    flow_passes: int | None = 2  # coupling layers; None: fully autoregressive (slow to sample)
    flow_bound: float = 10.0
    flow_steps: int = 4000
    flow_batch_size: int = 256
    flow_lr: float = 1e-3
    # PointWise Net trained with the EDM loss; `steps` is the length of the whole loop.
    net_widths: tuple[int, ...] = CPU_WIDTHS
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    steps: int = 20000
    batch_size: int = 64
    points_per_shower: int = 256
    lr: float = 5e-4
    grad_clip: float = 10.0
    ema_max_decay: float = 0.9999
    # Calibration of the number of points: model showers generated after training with the
    # default sampler of the model, Heun with `calibration_sampler_steps` noise levels.
    calibration_showers: int = 256
    calibration_sampler_steps: int = 13
    # Highest noise level of the default sampler: 10 rather than the paper's 80, because with 13
    # Heun steps from 80 the outer radial rings come out with +60 % energy (+25 % from 10).
    sampler_sigma_max: float = 10.0
    calibration_refinements: int = 1
    # Bookkeeping.
    seed: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 100

    KIND: ClassVar[str] = "CaloClouds II"
    # Fields added later, with the value that checkpoints written before them were trained with.
    LEGACY: ClassVar[dict[str, Any]] = {"flow_bound": 5.0, "sampler_sigma_max": 80.0}

    def __post_init__(self) -> None:
        for name in ("cache_points", "chunk_size", "flow_transforms", "flow_bins", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field '{name}' must be at least 1, got {getattr(self, name)}")
        if self.points_per_shower < 1 or self.flow_batch_size < 1 or self.flow_steps < 0:
            raise ValueError("points_per_shower and flow_batch_size must be positive, flow_steps >= 0")
        if len(self.net_widths) < 2 or self.net_widths[0] != 4 or self.net_widths[-1] != 4:
            raise ValueError(f"net_widths must start and end with 4 (x, y, layer, E), got {self.net_widths}")


PRESETS: dict[str, CaloClouds2Config] = {
    # Half an hour on one CPU core for a 20k-shower file (30.6 min measured, docs/results.md).
    "cpu": CaloClouds2Config(),
    # The published sizes: PointWise Net 4-128-256-512-256-128-4 (≈ 505k parameters), RAdam
    # lr 1e-4, batch 128 whole showers, 2M iterations; a large Shower Flow. GPU territory.
    "paper": CaloClouds2Config(
        name="paper",
        sampler_sigma_max=80.0,
        cache_points=6000,
        flow_hidden=(512, 512, 512),
        flow_transforms=10,
        flow_steps=100_000,
        flow_batch_size=2048,
        flow_lr=5e-4,
        net_widths=PAPER_WIDTHS,
        steps=2_000_000,
        batch_size=128,
        points_per_shower=6000,
        lr=1e-4,
        calibration_showers=2000,
        log_every=1000,
    ),
    # Seconds: checks that the whole pipeline runs (tests, first try of a new data file).
    # Its showers are not meant to be good.
    "smoke": CaloClouds2Config(
        name="smoke",
        cache_points=64,
        chunk_size=50,
        flow_hidden=(32,),
        flow_transforms=2,
        flow_steps=40,
        flow_batch_size=32,
        net_widths=(4, 32, 32, 4),
        steps=40,
        batch_size=8,
        points_per_shower=64,
        calibration_showers=16,
        calibration_sampler_steps=4,
        log_every=10,
    ),
}
CaloClouds2Config.PRESETS = PRESETS


class CaloClouds2(nn.Module):
    """A trained (or training) CaloClouds II: Shower Flow, PointWise Net (EMA weights), point
    scaler and calibration, plus what it was trained on.

    ``energy_range`` (GeV) is the span of incident energies in the training data;
    ``max_points`` the largest shower in it (the flow's cap and the net's ``N`` scale).
    """

    def __init__(
        self,
        config: CaloClouds2Config,
        detector: Detector,
        max_points: int,
        energy_range: tuple[float, float],
    ) -> None:
        super().__init__()
        self.config = config
        self.detector = detector
        self.max_points = int(max_points)
        self.energy_range = (float(energy_range[0]), float(energy_range[1]))
        self.complete = False
        self.flow = ShowerFlow(
            n_layers=detector.n_layers,
            hidden=config.flow_hidden,
            transforms=config.flow_transforms,
            bins=config.flow_bins,
            passes=config.flow_passes,
            bound=config.flow_bound,
            max_points=self.max_points,
        )
        self.net = PointWiseNet(
            config.net_widths, energy_scale_gev=max(100.0, self.energy_range[1]), n_scale=self.max_points
        )
        self.scaler = PointScaler(target_std=config.sigma_data, half_size_mm=detector.half_size_mm)
        self.calibration = NPointsCalibration.identity(self.max_points)
        self.sampler = SamplerSpec()

    @property
    def denoiser(self) -> EDMDenoiser:
        """The PointWise Net with EDM (or, distilled, consistency) preconditioning:
        ``D(x, sigma, energy=, n_points=)``."""
        return self.denoiser_for(self.net)

    def denoiser_for(self, net: nn.Module) -> EDMDenoiser:
        """:attr:`denoiser` around another implementation of the same network (e.g. a trace)."""
        if self.sampler.consistency:
            return ConsistencyDenoiser(net, self.config.sigma_data, self.sampler.sigma_min)
        return EDMDenoiser(net, self.config.sigma_data)

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters of the flow and of the PointWise Net."""
        return {
            "shower_flow": sum(p.numel() for p in self.flow.parameters()),
            "pointwise_net": sum(p.numel() for p in self.net.parameters()),
        }

    def metadata(self) -> dict[str, Any]:
        """The plain-data part of a checkpoint (JSON strings and numbers)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "caloforge_version": __version__,
            "config": json.dumps(self.config.to_dict()),
            "detector": json.dumps(self.detector.to_dict()),
            "max_points": self.max_points,
            "energy_range": list(self.energy_range),
            "calibration": self.calibration.to_dict(),
            "sampler": self.sampler.to_dict(),
            "complete": self.complete,
        }


# --------------------------------------------------------------------------- checkpoints

_REQUIRED_KEYS = ("config", "detector", "max_points", "energy_range", "calibration", "complete", "model")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint file (tensors and plain data only)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated/foreign files
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint (corrupt, truncated or not written by caloforge): {exc}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a CaloClouds II checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    version = state.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format version {version}; this caloforge ({__version__}) reads "
            f"version {CHECKPOINT_VERSION}: use the caloforge version that wrote it, or retrain"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"'{path}' lacks {', '.join(missing)}: the file is incomplete")
    return state


def _model_from_state(state: dict[str, Any], path: Path) -> CaloClouds2:
    try:
        config = CaloClouds2Config.from_dict(json.loads(state["config"]))
        detector = detector_from_dict(json.loads(state["detector"]))
        model = CaloClouds2(config, detector, int(state["max_points"]), tuple(state["energy_range"]))
        model.load_state_dict(state["model"])
        model.calibration = NPointsCalibration.from_dict(state["calibration"])
        # Checkpoints written before the sampler was stored are EDM models sampled with Heun, 13 levels.
        model.sampler = SamplerSpec(**state.get("sampler", {}))
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(f"'{path}': the checkpoint does not describe a valid model: {exc}") from exc
    model.complete = bool(state["complete"])
    return model.eval()


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a training checkpoint without optimiser, RNG and training-network state.

    What remains (metadata and the EMA model) is all :func:`load_model` and :func:`generate`
    need: about a third of the size, for shipping a model.
    """
    state = _read_checkpoint(Path(checkpoint))
    keep = {
        k: state[k]
        for k in ("format", "format_version", "caloforge_version", "sampler", *_REQUIRED_KEYS)
        if k in state
    }
    save_checkpoint(keep, out)
    return Path(out)


def load_model(path: str | Path) -> CaloClouds2:
    """Load a CaloClouds II checkpoint written by :func:`train` (EMA weights, on CPU).

    Raises :class:`CheckpointError` for missing, corrupt or incompatible files.
    """
    path = Path(path)
    return _model_from_state(_read_checkpoint(path), path)


# --------------------------------------------------------------------------- generation

#: Padded points per denoiser call when generating: showers of similar size are grouped up
#: to this many. On the CPU the folded net runs each shower's layers on its own, so this only
#: sets how many showers share the per-call work (noise, folded weights, the denoiser's
#: scalings): 32k points (about 14 showers at 50 GeV) was the fastest of 8k-200k.
POINTS_PER_CALL = 32768
#: Point groups are padded to a multiple of this many points, so that the matmul kernels
#: (built per shape by oneDNN, especially in bfloat16) are few and get reused.
POINTS_PAD = 64
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


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> Literal["float32", "bfloat16"]:
    """``float32`` or ``bfloat16`` for the PointWise Net; ``auto`` picks bfloat16 where
    :func:`native_bfloat16` (it keeps the shipped models' fidelity, docs/benchmarks.md), else
    float32. Raises :class:`GenerationError` for anything else."""
    if precision not in PRECISIONS:
        raise GenerationError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
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
    batch size 1; freezing folds the weights in: another 1.4x). The spline's softmax is traced
    in its explicit form, which is faster on the CPU (equal up to float rounding, which can
    very rarely move a rounded number of points by one). The cache follows the weights: an
    in-place update of its parameters or buffers (more training), or a new flow, makes a new trace."""
    module = model.flow
    versions = tuple(t._version for t in itertools.chain(module.parameters(), module.buffers()))
    cached = model.__dict__.get("_traced_flow")
    if cached is not None and cached[0] is module and cached[1] == versions:
        return cached[2]
    training = module.training
    try:
        with warnings.catch_warnings(), torch.no_grad(), _explicit_softmax():
            warnings.simplefilter("ignore")  # tracer warnings about Python numbers in the graph
            flow = torch.jit.trace(
                _FlowInverse(module).eval(),
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
    padded = (n + POINTS_PAD - 1) // POINTS_PAD * POINTS_PAD
    out = torch.zeros(len(n), int(padded.max()), 4)
    order = torch.argsort(n, stable=True).tolist()
    sizes = padded.tolist()
    denoiser = model.denoiser if net is None else model.denoiser_for(net)
    device = next(model.net.parameters()).device
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * sizes[order[stop]] <= points_per_call:
            stop += 1
        idx = torch.tensor(order[start:stop])
        width = sizes[order[stop - 1]]
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
        start = stop
    return out[:, : int(n.max())]


@torch.no_grad()
def _generate_batch(
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
    Net in its folded form (:class:`~caloforge.models.pointwise.FoldedPointWiseNet`): the same
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
    points = calibrate_points(model.scaler.inverse(z), mask, counts, layer_e, flow.cog[:, :2])
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


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index`` of a generation with ``seed``: every batch is its own random
    stream, so any split of the batches over processes gives the same showers.

    >>> batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed % 2**63, index]).generate_state(1, np.uint64)[0] >> 1)


def check_request(
    model: CaloClouds2,
    energies_gev: Sequence[float] | np.ndarray,
    batch_size: int = 64,
    allow_extrapolation: bool = False,
    points_per_call: int = POINTS_PER_CALL,
    precision: str = "auto",
) -> np.ndarray:
    """The checks of :func:`generate` on its arguments, without generating: the energies as a
    float64 array, or :class:`GenerationError` naming what is wrong."""
    resolve_precision(precision)
    energies = np.asarray(energies_gev, dtype=np.float64).reshape(-1)
    if batch_size < 1 or points_per_call < 1:
        raise GenerationError("batch_size and points_per_call must be at least 1")
    if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
        raise GenerationError("incident energies must be finite and positive (GeV)")
    lo, hi = model.energy_range
    slack = 1e-6 * max(hi - lo, 1.0)
    outside = (energies < lo - slack) | (energies > hi + slack)
    if outside.any() and not allow_extrapolation:
        raise GenerationError(
            f"{int(outside.sum())} incident energies (e.g. {energies[outside][0]:.4g} GeV) lie outside the "
            f"trained range {lo:.4g}-{hi:.4g} GeV; pass allow_extrapolation=True to generate them anyway"
        )
    return energies


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
    (bfloat16 where the hardware computes it natively, else float32; see
    :func:`resolve_precision`), ``float32`` or ``bfloat16`` (slightly different showers of the
    same fidelity, docs/benchmarks.md).
    """
    energies = check_request(model, energies_gev, batch_size, allow_extrapolation, points_per_call, precision)
    spec = resolve_sampler(model, sampler, n_steps)
    if not model.complete:
        warnings.warn("this CaloClouds II model has not finished training", stacklevel=2)
    model.eval()
    if device is not None:
        model.net.to(device)  # only the PointWise Net runs there; flow and calibration stay on the CPU
    resolved = resolve_precision(precision, next(model.net.parameters()).device)
    for index, start in enumerate(range(0, len(energies), batch_size), start=first_batch):
        energy = torch.as_tensor(energies[start : start + batch_size], dtype=torch.float32)
        generator = torch.Generator().manual_seed(batch_seed(seed, index))
        yield _generate_batch(model, energy, generator, spec, points_per_call, fast, resolved)[0]


# --------------------------------------------------------------------------- training data


@dataclass
class _TrainingData:
    detector: Detector
    energy: Tensor  # (n,) GeV
    stats: ShowerStats
    hits: np.ndarray  # (n,) cell hits above threshold (Geant4), for the N calibration
    points: Tensor  # (n, cache_points, 4) random subset of each shower's points, zero-padded
    path: str
    energy_range: tuple[float, float]  # GeV


def _load_training_data(
    data_path: Path, config: CaloClouds2Config, progress: Progress | None
) -> _TrainingData:
    """Stream the file once: summaries of every shower and a point subsample (seeded)."""
    rng = np.random.default_rng(config.seed)
    energies, stats, hits, points = [], [], [], []
    with open_showers(data_path) as reader:
        if reader.kind != "points":
            raise ValueError(f"'{data_path}' holds {reader.kind}; CaloClouds II trains on point clouds")
        detector = reader.detector
        # The generated spectrum (caloforge files record it) can be a little wider than the sample.
        spectrum = (reader.attrs.get("energy_min_gev"), reader.attrs.get("energy_max_gev"))
        total = len(reader) if config.max_showers is None else min(len(reader), config.max_showers)
        done = 0
        for chunk in reader.iter_chunks(config.chunk_size, stop=total):
            done += len(chunk)
            chunk = chunk[chunk.n_points > 0]
            if len(chunk):
                energies.append(chunk.energy)
                stats.append(shower_stats(chunk, detector.n_layers))
                hits.append(count_hits(chunk, detector))
                points.append(_subsample(chunk, config.cache_points, rng))
            if progress is not None:
                progress("load", done, total)
    if not energies:
        raise ValueError(f"'{data_path}' holds no showers with points to train on")
    energy = np.concatenate(energies)
    lo, hi = float(energy.min()), float(energy.max())
    if isinstance(spectrum[0], (int, float)) and isinstance(spectrum[1], (int, float)):
        lo, hi = min(lo, float(spectrum[0])), max(hi, float(spectrum[1]))
    return _TrainingData(
        detector=detector,
        energy=torch.from_numpy(energy.astype(np.float32)),
        stats=ShowerStats.concatenate(stats),
        hits=np.concatenate(hits),
        points=torch.from_numpy(np.concatenate(points)),
        path=str(data_path),
        energy_range=(lo, hi),
    )


def _subsample(showers: PointShowers, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` random real points per shower, ``(n, k, 4)`` with zero padding."""
    mask = showers.mask
    keys = np.where(mask, rng.random(mask.shape), 2.0)  # padding sorts last
    take = np.argsort(keys, axis=1)[:, :k]
    out = np.take_along_axis(showers.points, take[..., None], axis=1)
    out[~np.take_along_axis(mask, take, axis=1)] = 0.0
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1]), (0, 0)))
    return out.astype(np.float32)


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train` did: the checkpoint, how far it got and the last logged losses."""

    checkpoint: Path
    step: int
    total_steps: int
    complete: bool
    minutes: float
    losses: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)


def point_batch(
    data: _TrainingData, scaler: PointScaler, batch_size: int, points: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A training batch: ``points`` random cached points of ``batch_size`` random showers,
    dequantised and scaled, ``(B, points, 4)``; the real-point mask; the conditioning."""
    idx = torch.randint(len(data.energy), (batch_size,), generator=gen)
    cached = data.points[idx]
    valid = cached[..., 3] > 0
    keys = torch.rand(valid.shape, generator=gen) + (~valid) * 2.0
    take = keys.argsort(dim=1)[:, :points]
    pts = cached.gather(1, take.unsqueeze(-1).expand(-1, -1, 4))
    mask = valid.gather(1, take)
    pts = dequantize(pts, data.detector.fine_cell_mm, gen)
    x0 = torch.where(mask.unsqueeze(-1), scaler(pts), 0.0)
    return x0, mask, {"energy": data.energy[idx], "n_points": data.stats.n_points[idx]}


class _Trainer:
    """The mutable state of a training run, and one step of it."""

    def __init__(self, config: CaloClouds2Config, data: _TrainingData) -> None:
        self.config, self.data = config, data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # reproducible initial weights without touching the global RNG
            self.model = CaloClouds2(config, data.detector, int(data.stats.n_points.max()), data.energy_range)
        self.model.sampler = SamplerSpec(
            "heun", config.calibration_sampler_steps, sigma_max=config.sampler_sigma_max
        )
        self.gen = torch.Generator().manual_seed(config.seed)
        self._fit_standardisation()
        self.train_net = self.model.net
        self.ema = EMA(self.train_net, config.ema_max_decay)
        self.model.net = self.ema.module  # the container samples with the averaged weights
        self.opt_net = torch.optim.RAdam(self.train_net.parameters(), lr=config.lr)
        self.opt_flow = torch.optim.Adam(self.model.flow.parameters(), lr=config.flow_lr)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.skipped = 0
        self.elapsed_s = 0.0
        self.last_losses: dict[str, float] = {}

    def _fit_standardisation(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        data = self.data
        self.model.flow.fit_standardisation(self.model.flow.features_from_stats(data.stats, data.energy, gen))
        pts = dequantize(data.points, data.detector.fine_cell_mm, gen)
        self.model.scaler.fit(pts, data.points[..., 3] > 0)

    def flow_steps_before(self, step: int) -> int:
        """Flow updates done in the first ``step`` iterations (spread evenly over the loop)."""
        return step * self.config.flow_steps // self.config.steps

    def _update(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> float | None:
        """:func:`optimizer_step`; returns the loss, or None (and counts a skip)."""
        if not optimizer_step(loss, module, optimizer, self.config.grad_clip):
            self.skipped += 1
            return None
        return loss.item()

    def net_step(self) -> float | None:
        cfg = self.config
        x0, mask, cond = point_batch(
            self.data, self.model.scaler, cfg.batch_size, cfg.points_per_shower, self.gen
        )
        loss = edm_loss(
            EDMDenoiser(self.train_net, cfg.sigma_data),
            x0,
            cond,
            P_mean=cfg.p_mean,
            P_std=cfg.p_std,
            mask=mask,
            generator=self.noise_gen,
        )
        value = self._update(loss, self.train_net, self.opt_net)
        if value is not None:
            self.ema.update(self.train_net)
        return value

    def one_step(self) -> list[tuple[str, float | None]]:
        """One PointWise Net update and the flow updates that fall on this step."""
        k = self.step
        losses = [("edm_loss", self.net_step())]
        for j in range(self.flow_steps_before(k), self.flow_steps_before(k + 1)):
            losses.append(("flow_loss", self.flow_step(j)))
        return losses

    def flow_step(self, flow_step: int) -> float | None:
        cfg, data = self.config, self.data
        # Cosine decay to 1 % of the initial rate over the flow's share of the loop.
        progress = min(flow_step / max(cfg.flow_steps, 1), 1.0)
        for group in self.opt_flow.param_groups:
            group["lr"] = cfg.flow_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
        idx = torch.randint(len(data.energy), (cfg.flow_batch_size,), generator=self.gen)
        flow = self.model.flow
        feats = flow.features_from_stats(data.stats[idx], data.energy[idx], self.gen)
        loss = -flow.log_prob(feats, data.energy[idx]).mean() / flow.n_features
        return self._update(loss, flow, self.opt_flow)

    def state(self) -> dict[str, Any]:
        model = self.model
        return model.metadata() | {
            "model": model.state_dict(),
            "train_net": self.train_net.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "optimizers": {"net": self.opt_net.state_dict(), "flow": self.opt_flow.state_dict()},
            "rng": {"data": self.gen.get_state(), "noise": self.noise_gen.get_state()},
            "step": self.step,
            "skipped_steps": self.skipped,
            "elapsed_s": self.elapsed_s,
            "data": {"path": self.data.path, "n_showers": len(self.data.energy)},
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        n = len(self.data.energy)
        if state.get("data", {}).get("n_showers") != n:
            raise CheckpointError(
                f"'{path}' was trained on {state.get('data', {}).get('n_showers')} showers of "
                f"'{state.get('data', {}).get('path')}', this run has {n}: resume with the same data"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.train_net.load_state_dict(state["train_net"])
            self.ema.num_updates = int(state["ema_num_updates"])
            self.opt_net.load_state_dict(state["optimizers"]["net"])
            self.opt_flow.load_state_dict(state["optimizers"]["flow"])
            self.gen.set_state(state["rng"]["data"])
            self.noise_gen.set_state(state["rng"]["noise"])
            self.step = int(state["step"])
            self.skipped = int(state["skipped_steps"])
            self.elapsed_s = float(state.get("elapsed_s", 0.0))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"'{path}' cannot be resumed from: {exc}") from exc
        self.model.calibration = NPointsCalibration.from_dict(state["calibration"])
        self.model.complete = bool(state["complete"])

    def save(self, path: Path) -> None:
        save_checkpoint(self.state(), path)


def fit_calibration(
    model: CaloClouds2,
    energies: Tensor,
    n_points: np.ndarray,
    hits: np.ndarray,
    refinements: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> NPointsCalibration:
    """Fit the number-of-points calibration (SPEC 6.1) of ``model`` with its own sampler.

    Model showers at ``energies`` are generated so that their cell hits match the Geant4
    showers' (``n_points`` clustered points and ``hits`` cells above threshold each, any
    number of showers). A first run with the identity gives the cubic fit of
    :meth:`NPointsCalibration.fit`; each of the ``refinements`` further runs (same showers,
    same noise) corrects it with a secant step (:meth:`NPointsCalibration.refine`).
    ``model.calibration`` is left set to the result. The showers are made by the eager
    float32 path, so the fit does not depend on the machine (bfloat16 generation has the same
    hit counts within the W1 spreads, docs/results.md).
    """
    passes = 1 + refinements
    model.eval()

    def run(calibration: NPointsCalibration, index: int) -> tuple[np.ndarray, np.ndarray]:
        model.calibration = calibration
        gen = torch.Generator().manual_seed(seed + 4)
        n_flow, hits_model, batch = [], [], 32
        for start in range(0, len(energies), batch):
            showers, n = _generate_batch(model, energies[start : start + batch], gen)
            n_flow.append(n.numpy())
            hits_model.append(count_hits(showers, model.detector))
            if progress is not None:
                done = index * len(energies) + min(start + batch, len(energies))
                progress("calibrate", done, passes * len(energies))
        return np.concatenate(n_flow), np.concatenate(hits_model)

    previous = NPointsCalibration.identity(model.max_points)
    previous_run = run(previous, 0)
    current = NPointsCalibration.fit(n_points, hits, *previous_run, n_scale=model.max_points)
    for index in range(1, passes):
        current_run = run(current, index)
        previous, current = current, current.refine(previous, n_points, hits, *previous_run, *current_run)
        previous_run = current_run
    model.calibration = current
    return current


def _calibration_energies(energy: Tensor, n: int, seed: int) -> Tensor:
    pick = torch.randperm(len(energy), generator=torch.Generator().manual_seed(seed + 3))
    return energy[pick[:n]]


def _fit_calibration(trainer: _Trainer, progress: Progress | None) -> NPointsCalibration:
    """The calibration at the end of training, on the training showers."""
    model, data, cfg = trainer.model, trainer.data, trainer.config
    energies = _calibration_energies(data.energy, cfg.calibration_showers, cfg.seed)
    return fit_calibration(
        model,
        energies,
        data.stats.n_points.numpy(),
        data.hits,
        cfg.calibration_refinements,
        cfg.seed,
        progress,
    )


def calibrate(
    model_path: str | Path,
    data_path: str | Path,
    out: str | Path | None = None,
    *,
    sampler: str | None = None,
    n_steps: int | None = None,
    sigma_max: float | None = None,
    showers: int | None = None,
    refinements: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> NPointsCalibration:
    """Refit the N calibration of the checkpoint ``model_path`` against the Geant4 file ``data_path``.

    ``sampler`` / ``n_steps`` / ``sigma_max`` change the model's default sampler (the
    calibration belongs to it, see :func:`resolve_sampler`). The checkpoint is rewritten
    atomically (or written to ``out``), everything else in it unchanged, so a training run can
    still be resumed.
    ``showers`` model showers (default: the model config's ``calibration_showers``) are
    drawn at energies of the data file.
    """
    path = Path(model_path)
    state = _read_checkpoint(path)
    model = _model_from_state(state, path)
    try:
        model.sampler = resolve_sampler(model, sampler, n_steps, sigma_max)
    except GenerationError as exc:
        raise ValueError(str(exc)) from exc
    cfg = model.config
    energy, n_points, hits = [], [], []
    with open_showers(data_path) as reader:
        if reader.kind != "points":
            raise ValueError(f"'{data_path}' holds {reader.kind}; the calibration needs point clouds")
        if reader.detector.name != model.detector.name:
            raise ValueError(
                f"'{data_path}' is for detector '{reader.detector.name}', "
                f"the model for '{model.detector.name}'"
            )
        for chunk in reader.iter_chunks(cfg.chunk_size):
            chunk = chunk[chunk.n_points > 0]
            energy.append(chunk.energy)
            n_points.append(chunk.n_points)
            hits.append(count_hits(chunk, model.detector))
            if progress is not None:
                progress("load", sum(len(e) for e in energy), len(reader))
    if not energy:
        raise ValueError(f"'{data_path}' holds no showers with points")
    all_energy = torch.from_numpy(np.concatenate(energy).astype(np.float32))
    count = cfg.calibration_showers if showers is None else showers
    calibration = fit_calibration(
        model,
        _calibration_energies(all_energy, count, seed),
        np.concatenate(n_points).astype(np.float64),
        np.concatenate(hits),
        cfg.calibration_refinements if refinements is None else refinements,
        seed,
        progress,
    )
    state = state | {"calibration": calibration.to_dict(), "sampler": model.sampler.to_dict()}
    save_checkpoint(state, path if out is None else out)
    return calibration


def train(
    config: CaloClouds2Config,
    data_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train CaloClouds II on the point-cloud file ``data_path``; checkpoint in ``out_dir``.

    ``progress(stage, done, total)`` is called with stages ``load``, ``train`` (every step)
    and ``calibrate``. ``max_minutes`` stops the loop (counted from the call) with a
    resumable checkpoint; the calibration is still fitted so the checkpoint can generate.
    Ctrl-C writes a checkpoint after the current step and re-raises ``KeyboardInterrupt``.
    ``out_dir/train_log.jsonl`` receives running losses every ``log_every`` steps.
    ``resume=True`` continues ``out_dir/checkpoint.pt`` exactly (same data and config needed);
    without it an existing checkpoint is an error rather than overwritten.
    """
    start = time.monotonic()
    ckpt, state = open_run(out_dir, config, resume, _read_checkpoint)

    data = _load_training_data(Path(data_path), config, progress)
    trainer = _Trainer(config, data)
    if state is not None:
        trainer.restore(state, ckpt)
    run_loop(
        trainer, config.steps, ckpt, config.log_every, config.checkpoint_minutes, progress, max_minutes, start
    )
    trainer.model.complete = trainer.step >= config.steps
    trainer.save(ckpt)  # the weights are safe even if the calibration below is interrupted
    trainer.model.calibration = _fit_calibration(trainer, progress)
    trainer.save(ckpt)
    return TrainResult(
        checkpoint=ckpt,
        step=trainer.step,
        total_steps=config.steps,
        complete=trainer.model.complete,
        minutes=(time.monotonic() - start) / 60,
        losses=trainer.last_losses,
        parameters=trainer.model.n_parameters(),
    )
