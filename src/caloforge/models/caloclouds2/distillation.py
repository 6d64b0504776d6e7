"""CaloClouds II (CM): consistency distillation of the EDM PointWise Net (SPEC 6.2).

A consistency model ``f(x, sigma)`` maps a noisy point straight to the end of its
probability-flow ODE trajectory, so one network call replaces the 25 of the Heun sampler.
Consistency distillation (Song et al. 2023) teaches it from the EDM teacher:

1. take ``N`` Karras noise levels (default 18, sigma 0.002–10, rho 7; the paper goes up to 80)
   and a pair of adjacent levels ``t > t'`` per shower;
2. noise a training point cloud to ``t``; one teacher Heun step carries it to ``t'``;
3. minimise ``|| f_student(x_t, t) - stopgrad f_target(x_t', t') ||^2`` (or the pseudo-Huber
   distance), where the target network is an EMA of the student (constant decay 0.95);
4. ``f`` uses the boundary scalings of :class:`~caloforge.models.nn.edm.ConsistencyDenoiser`, so
   ``f(x, sigma_min) = x``.

Student, target (and, in the paper, the teacher) start from the teacher's EMA weights. A
*narrower* student (``student_widths``) starts from random weights instead: it costs less
per call but has to learn the map from scratch.

:func:`consistency_distillation_loss` is the loss on any denoisers (the tests distil a toy
2-D teacher with it); :func:`distill` runs it on a CaloClouds II checkpoint and writes a
complete model — the teacher's Shower Flow, scaler and detector, the student's EMA weights,
the consistency sampler, and an N calibration refitted for that sampler — that
:func:`~caloforge.models.caloclouds2.load_model` and ``caloforge generate`` use unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from caloforge.models._config import LoopConfig
from caloforge.models._distributed import shard, world
from caloforge.models._placement import randn
from caloforge.models._training import (
    OnDevice,
    Progress,
    TrainResult,
    check_resumable,
    distributed_step,
    locked_run,
    placement_of,
    run_checkpoint,
    run_to_end,
    save_finite_checkpoint,
)
from caloforge.models.caloclouds2.calibration import calibration_energies, fit_calibration
from caloforge.models.caloclouds2.checkpoint import load_model, model_from_state, read_model_checkpoint
from caloforge.models.caloclouds2.config import SamplerSpec
from caloforge.models.caloclouds2.data import TrainingData, load_training_data
from caloforge.models.caloclouds2.model import CaloClouds2
from caloforge.models.caloclouds2.training import point_batch
from caloforge.models.nn.edm import ConsistencyDenoiser, EDMDenoiser
from caloforge.models.nn.ema import EMA
from caloforge.models.nn.pointwise import PointWiseNet
from caloforge.models.protocol import CheckpointError
from caloforge.sampling import karras_sigmas

__all__ = ["DISTILL_PRESETS", "DistillConfig", "consistency_distillation_loss", "distill"]


@dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """A consistency-distillation run; presets in :data:`DISTILL_PRESETS`.

    >>> DistillConfig.from_preset("cpu", steps=10).n_levels
    18
    """

    name: str = "cpu"
    n_levels: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 10.0  # the paper's 80 makes the teacher's steps too coarse (docs/results.md)
    rho: float = 7.0
    target_decay: float = 0.95
    loss: str = "l2"  # or "pseudo-huber"
    student_widths: tuple[int, ...] | None = None  # None: the teacher's, initialised from it
    steps: int = 6000
    points_per_shower: int = 256
    lr: float = 1e-4
    ema_max_decay: float = 0.999

    KIND: ClassVar[str] = "distillation"

    def __post_init__(self) -> None:
        if self.n_levels < 2:
            raise ValueError(f"n_levels must be at least 2, got {self.n_levels}")
        if self.loss not in ("l2", "pseudo-huber"):
            raise ValueError(f"unknown consistency loss '{self.loss}': use l2 or pseudo-huber")
        self.check(
            at_least_one=("points_per_shower",),
            positive=("sigma_min", "sigma_max", "rho"),
            fractions={"target_decay": (0, 1)},
            point_widths=("student_widths",),
            optional=("student_widths",),
        )
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")


#: The presets (distill_presets.toml beside this module: the fields that differ from the defaults).
DISTILL_PRESETS: dict[str, DistillConfig] = DistillConfig.read_presets(__package__, "distill_presets.toml")


def _distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-point distance ``(..., d) -> (...)``: squared L2 (mean over d) or pseudo-Huber."""
    if kind == "l2":
        return (a - b).pow(2).mean(dim=-1)
    c = 0.00054 * a.shape[-1] ** 0.5  # Song & Dhariwal (2023): c = 0.00054 sqrt(d)
    return ((a - b).pow(2).sum(dim=-1) + c**2).sqrt() - c


def distillation_draws(
    x0: Tensor, n_levels: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The random numbers of :func:`consistency_distillation_loss` for ``x0``: a level index
    per sample (of ``n_levels`` levels) and unit Gaussian noise like ``x0``, drawn with
    ``generator`` on the host and put on ``x0``'s device."""
    i = torch.randint(n_levels - 1, (x0.shape[0],), generator=generator).to(x0.device)
    return i, randn(x0.shape, generator, x0.device, x0.dtype)


def consistency_distillation_loss(
    student: EDMDenoiser,
    target: EDMDenoiser,
    teacher: EDMDenoiser,
    x0: Tensor,
    sigmas: Tensor,
    cond: dict[str, Tensor] | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    loss: str = "l2",
    draws: tuple[Tensor, Tensor] | None = None,
    autocast: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Tensor:
    """Consistency-distillation loss of a batch ``x0`` ``(B, ..., d)`` (one level pair per sample).

    ``sigmas`` are the ``N`` discretisation levels in decreasing order (no final 0). For each
    sample a pair ``t = sigmas[i] > t' = sigmas[i + 1]`` is drawn, ``x_t = x0 + t z``, the
    teacher takes one Heun step to ``x_t'``, and the loss compares ``student(x_t, t)`` with the
    gradient-free ``target(x_t', t')``. ``mask`` ``(B, ...)`` marks real points. ``draws``:
    ``(i, z)`` drawn beforehand (:func:`distillation_draws`), else drawn with ``generator``;
    ``autocast``: the context the student runs in (mixed precision; the teacher's Heun step
    and the target stay in full precision).
    """
    cond = cond or {}
    batch = x0.shape[0]
    i, noise = draws if draws is not None else distillation_draws(x0, len(sigmas), generator)
    sigmas = sigmas.to(x0.device)
    t, t_next = sigmas[i].to(x0.dtype), sigmas[i + 1].to(x0.dtype)
    shape = (batch, *([1] * (x0.ndim - 1)))
    x_t = x0 + noise * t.view(shape)
    with torch.no_grad():
        d = (x_t - teacher(x_t, t, **cond)) / t.view(shape)
        x_euler = x_t + d * (t_next - t).view(shape)
        d_next = (x_euler - teacher(x_euler, t_next, **cond)) / t_next.view(shape)
        x_next = x_t + (d + d_next) / 2 * (t_next - t).view(shape)
        aim = target(x_next, t_next, **cond)
    with autocast() if autocast is not None else contextlib.nullcontext():
        pred = student(x_t, t, **cond)
    dist = _distance(pred.float(), aim, loss)
    if mask is None:
        return dist.mean()
    m = mask.to(dist.dtype)
    return (dist * m).sum() / m.sum().clamp_min(1)


class _Distiller(OnDevice):
    """Mutable state of a distillation run (student, target, optimiser, RNGs) and one step of it.

    Data-parallel like CaloClouds II training (every rank draws the global batch and its noise,
    the loss of its share is weighted by its share of the points); the student trains under
    bfloat16 autocast on a GPU where the placement asks for it (``amp``), the teacher's Heun
    step and the target run in float32 (small-sigma targets need the precision)."""

    distributed = True
    amp = True

    def __init__(self, config: DistillConfig, teacher: CaloClouds2, data: TrainingData) -> None:
        self.config, self.teacher_model, self.data = config, teacher, data
        self.teacher = EDMDenoiser(teacher.net, teacher.config.sigma_data).requires_grad_(False)
        widths = config.student_widths
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if widths is None or tuple(widths) == teacher.net.widths:
                student_net = copy.deepcopy(teacher.net).train().requires_grad_(True)
            else:
                student_net = PointWiseNet(
                    tuple(widths), energy_scale_gev=teacher.net.energy_scale_gev, n_scale=teacher.net.n_scale
                )
        self.student_net = student_net
        self.target_net = copy.deepcopy(student_net).eval().requires_grad_(False)
        self.ema = EMA(student_net, config.ema_max_decay)
        self.opt = torch.optim.RAdam(student_net.parameters(), lr=config.lr)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.sigmas = karras_sigmas(config.n_levels, config.sigma_min, config.sigma_max, config.rho)[:-1]
        self.model = self._student_model()
        self.step = 0
        self.skipped = 0
        self.elapsed_s = 0.0
        self.last_losses: dict[str, float] = {}

    def _student_model(self) -> CaloClouds2:
        """The servable model: teacher's flow/scaler/calibration, the student's EMA net."""
        teacher = self.teacher_model
        config = replace(teacher.config, net_widths=self.student_net.widths)
        model = CaloClouds2(config, teacher.detector, teacher.max_points, teacher.energy_range)
        model.flow.load_state_dict(teacher.flow.state_dict())
        model.scaler.load_state_dict(teacher.scaler.state_dict())
        model.calibration = teacher.calibration
        model.cog_correction = teacher.cog_correction
        model.radial_calibration = teacher.radial_calibration
        model.net = self.ema.module
        model.sampler = SamplerSpec("consistency", 1, self.config.sigma_min, self.config.sigma_max)
        return model.eval()

    def device_modules(self) -> list[nn.Module]:
        return [self.teacher_model, self.student_net, self.target_net, self.model]

    def _wrap(self, net: nn.Module) -> ConsistencyDenoiser:
        return ConsistencyDenoiser(net, self.teacher_model.config.sigma_data, self.config.sigma_min)

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        x0, mask, cond = point_batch(
            self.data, self.teacher_model.scaler, cfg.batch_size, cfg.points_per_shower, self.gen, self.place
        )
        i, noise = distillation_draws(x0, len(self.sigmas), self.gen)
        mine = shard(len(x0))
        loss = consistency_distillation_loss(
            self._wrap(self.student_net),
            self._wrap(self.target_net),
            self.teacher,
            x0[mine],
            self.sigmas,
            {k: v[mine] for k, v in cond.items()},
            mask[mine],
            loss=cfg.loss,
            draws=(i[mine], noise[mine]),
            autocast=self.place.autocast,
        )
        if world().size > 1:  # this share's part of the mean over the global batch's points
            loss = loss * (mask[mine].sum() / mask.sum().clamp_min(1))
        value = distributed_step(loss, self.student_net, self.opt, cfg.grad_clip)
        if value is None:
            self.skipped += 1
            return [("cd_loss", None)]
        with torch.no_grad():
            for tgt, new in zip(self.target_net.parameters(), self.student_net.parameters(), strict=True):
                tgt.lerp_(new, 1 - cfg.target_decay)
        self.ema.update(self.student_net)
        return [("cd_loss", value)]

    def state(self) -> dict[str, Any]:
        return self.model.metadata() | {
            "model": self.model.state_dict(),
            "distill": {
                "config": json.dumps(self.config.to_dict()),
                "teacher": self.teacher_model.metadata(),
                "teacher_model": self.teacher_model.state_dict(),
                "student_net": self.student_net.state_dict(),
                "target_net": self.target_net.state_dict(),
                "ema_num_updates": self.ema.num_updates,
                "optimizer": self.opt.state_dict(),
                "rng": self.gen.get_state(),
                "step": self.step,
                "skipped_steps": self.skipped,
                "elapsed_s": self.elapsed_s,
                "data": {"path": self.data.path, "n_showers": len(self.data.energy)},
            },
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        try:
            run = state["distill"]
            if run["data"]["n_showers"] != len(self.data.energy):
                raise CheckpointError(
                    f"'{path}' was distilled on {run['data']['n_showers']} showers of "
                    f"'{run['data']['path']}', this run has {len(self.data.energy)}: use the same data"
                )
            self.student_net.load_state_dict(run["student_net"])
            self.target_net.load_state_dict(run["target_net"])
            ema_weights = {k[4:]: v for k, v in state["model"].items() if k.startswith("net.")}
            self.ema.load_state_dict({"module": ema_weights, "num_updates": run["ema_num_updates"]})
            self.opt.load_state_dict(run["optimizer"])
            self.gen.set_state(run["rng"])
            self.step = int(run["step"])
            self.skipped = int(run["skipped_steps"])
            self.elapsed_s = float(run["elapsed_s"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"'{path}' cannot be resumed from: {exc}") from exc

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def _teacher_from_run(state: dict[str, Any], path: Path) -> CaloClouds2:
    """The teacher stored inside a distillation checkpoint (resuming needs no teacher file)."""
    teacher_state = dict(state["distill"]["teacher"]) | {"model": state["distill"]["teacher_model"]}
    return model_from_state(teacher_state, path)


@locked_run
def distill(
    teacher_path: str | Path | None,
    data_path: str | Path,
    out_dir: str | Path,
    config: DistillConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
    device: str = "cpu",
    precision: str = "auto",
) -> TrainResult:
    """Distil the CaloClouds II checkpoint ``teacher_path`` into a one-step consistency model.

    ``data_path`` is the teacher's training file (points for the loss, Geant4 hits for the N
    calibration, which is refitted for the one-step sampler at the end). Checkpoints
    (``out_dir/checkpoint.pt``, a loadable CaloClouds II model) every ``checkpoint_minutes``,
    on Ctrl-C and at the end; ``resume=True`` continues exactly and needs only the checkpoint
    and the data (``teacher_path`` may then be None). Progress stages: ``load``, ``train``, ``calibrate``.
    ``device``, ``precision``: where it runs (:func:`~caloforge.models._training.placement_of`);
    data-parallel on several processes (``--nproc``, torchrun), rank 0 writes and calibrates.
    """
    config = config or DistillConfig()
    start = time.monotonic()
    ckpt = run_checkpoint(out_dir)  # the directory is made by run_loop, once the inputs are read
    state = None
    if resume:
        state = read_model_checkpoint(ckpt)
        if "distill" not in state:
            raise CheckpointError(f"'{ckpt}' is not a distillation run (no training state): start a new one")
        check_resumable(ckpt, state["distill"]["config"], config, verb="distilled")
        teacher = _teacher_from_run(state, ckpt)
    else:
        if ckpt.exists():
            raise CheckpointError(f"'{ckpt}' exists: resume it, or distil into another directory")
        if teacher_path is None:
            raise ValueError("a new distillation run needs the teacher model")
        teacher = load_model(teacher_path)
        if teacher.sampler.consistency:
            raise CheckpointError(f"'{teacher_path}' is already a consistency model: distil an EDM model")
    place = placement_of(_Distiller, config, device, precision)  # refused settings cost no data pass
    data = load_training_data(Path(data_path), teacher.config, progress)
    if data.detector.name != teacher.detector.name:
        raise ValueError(
            f"'{data_path}' is for detector '{data.detector.name}', the teacher for '{teacher.detector.name}'"
        )
    run = _Distiller(config, teacher, data)
    run.place_on(place)
    run_to_end(run, config, ckpt, state, progress, max_minutes, start)
    if not world().main:  # rank 0 writes and calibrates
        return TrainResult.of(run, ckpt, config.steps, run.model.complete, start, {})
    run.save(ckpt)
    # Generation runs the PointWise Net on the device and the rest on the CPU.
    run.model.to("cpu")
    run.model.net.to(run.place.device)
    tcfg = teacher.config
    energies = calibration_energies(data.energy, tcfg.calibration_showers, tcfg.seed)
    fit_calibration(
        run.model,
        energies,
        data.stats.n_points.numpy(),
        data.hits,
        tcfg.calibration_refinements,
        tcfg.seed,
        progress,
    )
    run.save(ckpt)
    parameters = {"pointwise_net": sum(p.numel() for p in run.student_net.parameters())}
    return TrainResult.of(run, ckpt, config.steps, run.model.complete, start, parameters)
