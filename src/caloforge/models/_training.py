"""Training machinery shared by every model: optimiser step, atomic checkpoints, resume checks
and the step loop (progress, periodic checkpoints, time budget, Ctrl-C, the divergence guard)."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import torch
from torch import Tensor, nn

from caloforge.models._config import PresetConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack
from caloforge.models._distributed import (
    agree,
    all_reduce_sum,
    broadcast_module,
    rank_device,
    shard,
    sync_gradients,
    world,
)
from caloforge.models._placement import Placement, resolve_precision
from caloforge.models.checkpoint import RUN_CHECKPOINT, read_checkpoint, save_checkpoint
from caloforge.models.nn.ema import EMA
from caloforge.models.protocol import CheckpointError
from caloforge.safety import check_output_dir, output_lock

__all__ = [
    "MAX_SKIPPED_IN_A_ROW",
    "MAX_SKIPPED_SHARE",
    "SKIPPED_SHARE_MIN_STEPS",
    "CheckpointError",
    "EMATrainer",
    "OnDevice",
    "Progress",
    "RunOptions",
    "Term",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "check_resumable",
    "check_shares",
    "combine_terms",
    "distributed_step",
    "locked_run",
    "non_finite_entry",
    "open_run",
    "optimizer_step",
    "placement_of",
    "run_checkpoint",
    "run_lock",
    "run_loop",
    "run_to_end",
    "save_checkpoint",
    "save_finite_checkpoint",
    "seeded",
    "train_run",
]

T = TypeVar("T")

#: ``progress(stage, done, total)``; training stages add ``info=`` (the running losses).
Progress = Callable[..., None]

#: :func:`run_loop` stops a run whose update was skipped (non-finite loss or gradient norm) in
#: this many steps in a row ...
MAX_SKIPPED_IN_A_ROW = 10
#: ... or in more than this share of the steps it made, once it made at least
#: :data:`SKIPPED_SHARE_MIN_STEPS` (both counted from the start of the call, i.e. per session).
MAX_SKIPPED_SHARE = 0.1
SKIPPED_SHARE_MIN_STEPS = 20

_LIKELY_CAUSE = (
    "the training data may hold non-finite or extreme values (check the file), or the learning rate "
    "is too high"
)


class TrainingDiverged(ValueError):
    """A training run stopped because its loss or gradient norm was not finite too often (see
    :func:`run_loop`), or because the state to checkpoint holds non-finite values; the last good
    checkpoint is left as it was. A ``ValueError``, so the command line reports it as one line."""


@dataclass
class TrainResult:
    """What a training run did: the checkpoint, how far it got, the last logged losses and the
    trainable parameters of each network (``part``: which part of a multi-part family) and
    ``skipped``: the optimiser updates skipped for a non-finite loss or gradient norm over the
    whole run, resumed sessions included (a CaloClouds II step makes a PointWise Net update and
    its share of Shower Flow updates, so this can exceed the steps)."""

    checkpoint: Path
    step: int
    total_steps: int
    complete: bool
    minutes: float
    losses: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    part: str | None = None
    skipped: int = 0

    @classmethod
    def of(
        cls,
        trainer: Trainer,
        checkpoint: Path,
        total_steps: int,
        complete: bool,
        start: float,
        parameters: dict[str, int],
        part: str | None = None,
    ) -> TrainResult:
        """The result of the run ``trainer`` did, started at ``time.monotonic()`` = ``start``."""
        minutes = (time.monotonic() - start) / 60
        return cls(
            checkpoint,
            trainer.step,
            total_steps,
            complete,
            minutes,
            trainer.last_losses,
            parameters,
            part,
            trainer.skipped,
        )


class RunOptions(TypedDict, total=False):
    """How a training run goes, the keywords every family's ``train`` takes: ``resume`` (continue
    the checkpoint in the run directory exactly), ``progress`` (``progress(stage, done, total,
    info=...)``) and ``max_minutes`` (stop with a resumable checkpoint after that long); a
    training that runs on devices (:class:`~caloforge.models.protocol.Training` ``gpu``) also
    takes ``device`` (``cpu``, ``cuda:N``) and ``precision`` (``auto``, ``float32``,
    ``bfloat16``; see :func:`placement_of`)."""

    resume: bool
    progress: Progress | None
    max_minutes: float | None
    device: str
    precision: str


@dataclass
class Term:
    """One term of a training loss: ``value``, a mean over ``units`` (None: the showers of the
    batch share; else a count, e.g. of non-empty layers) of this rank's share of the batch,
    ``weight`` its factor in the loss, logged as ``name``. :func:`combine_terms` makes the loss
    of the whole (global) batch out of the ranks' shares."""

    name: str
    value: Tensor
    units: Tensor | float | None = None
    weight: float = 1.0


def combine_terms(terms: list[Term], showers: int) -> tuple[Tensor, list[tuple[str, float]]]:
    """This rank's part of the loss of the global batch (``showers``: the showers of its
    share), and each term's value on the global batch (logged).

    Each term is weighted by this rank's share of its units, so the ranks' parts sum to the
    loss one process computes on the whole batch (:func:`optimizer_step` sums them); in one
    process the loss is the plain weighted sum.

    >>> terms = [Term("a", torch.tensor(2.0)), Term("b", torch.tensor(1.0), weight=0.5)]
    >>> loss, logged = combine_terms(terms, 4)
    >>> float(loss), logged
    (2.5, [('a', 2.0), ('b', 1.0)])
    """
    if world().size == 1:
        loss = sum(t.weight * t.value for t in terms)
        return loss, [(t.name, t.value.item()) for t in terms]  # type: ignore[return-value]
    device = terms[0].value.device
    units = torch.tensor(
        [float(showers if t.units is None else t.units) for t in terms], dtype=torch.float64, device=device
    )
    share = units / all_reduce_sum(units.clone()).clamp_min(1.0)
    # A share without units (no real point, no filled layer) has a NaN mean: it counts 0.
    values = [torch.where(units[i] > 0, t.value, torch.zeros_like(t.value)) for i, t in enumerate(terms)]
    loss = sum(
        t.weight * v * share[i].to(v.dtype) for i, (t, v) in enumerate(zip(terms, values, strict=True))
    )
    logged = all_reduce_sum(torch.stack([v.detach().double() * share[i] for i, v in enumerate(values)]))
    return loss, [(t.name, v) for t, v in zip(terms, logged.tolist(), strict=True)]  # type: ignore[return-value]


class Trainer(Protocol):
    """What :func:`run_loop` drives: the state of one training run and one step of it.

    ``skipped`` counts the optimiser updates skipped because :func:`optimizer_step` refused
    them (non-finite loss or gradient norm); :func:`run_loop` watches it to stop a diverging
    run. ``save`` should write with :func:`save_finite_checkpoint`.
    """

    step: int
    skipped: int
    elapsed_s: float
    last_losses: dict[str, float]

    def one_step(self) -> list[tuple[str, float | None]]:
        """One optimisation step; the losses it computed (None: that update was skipped, and
        ``skipped`` was increased)."""
        ...

    def save(self, path: Path) -> None:
        """Write a resumable checkpoint to ``path``."""
        ...


def optimizer_step(
    loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float
) -> bool:
    """Backpropagate ``loss``, clip ``module``'s gradient norm to ``grad_clip`` and step.

    Returns False, without stepping, when the loss or the gradient is not finite, so one bad
    batch cannot poison a long run. On several processes (:mod:`caloforge.models._distributed`)
    ``loss`` is this rank's share of the global batch's loss: the shares are summed to decide
    (all ranks skip together, else some would wait for the others forever), the gradients are
    summed before clipping, so every rank makes the same update (:func:`distributed_step`
    also returns the summed loss).
    """
    return distributed_step(loss, module, optimizer, grad_clip) is not None


def distributed_step(
    loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float
) -> float | None:
    """:func:`optimizer_step` that returns the loss of the whole (global) batch, or None when
    the update was skipped. In one process that is ``loss.item()``."""
    optimizer.zero_grad(set_to_none=True)
    total = all_reduce_sum(loss.detach().clone())
    if not torch.isfinite(total):
        return None
    loss.backward()
    sync_gradients(module)
    norm = nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return total.item()


def non_finite_entry(state: Any, prefix: str = "") -> str | None:
    """The key path (``model.net.layers.0.weight``) of the first floating-point tensor or float
    in the nested dicts, lists and tuples of ``state`` that holds a NaN or infinity; None if none
    does."""
    if isinstance(state, Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(state, float):
        return None if math.isfinite(state) else prefix or "<float>"
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = non_finite_entry(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def save_finite_checkpoint(state: dict[str, Any], path: Path) -> None:
    """:func:`save_checkpoint`, unless a tensor of ``state`` (weights, buffers, optimiser
    moments) is not finite: then raise :class:`TrainingDiverged` and leave ``path`` as it was."""
    bad = non_finite_entry(state)
    if bad is not None:
        raise TrainingDiverged(
            f"not writing '{path}': '{bad}' holds NaN or infinite values; {_LIKELY_CAUSE}; "
            "the last good checkpoint is kept"
        )
    save_checkpoint(state, path)


def ema_training_state(
    trainer: Any, averaged: nn.Module, live_key: str, parts: Mapping[str, Any]
) -> dict[str, Any]:
    """The checkpoint state of a trainer that keeps an EMA of ``averaged`` (part of, or all of,
    ``trainer.model``): the model's inference state taken while the averaged weights are in
    place (copied: the live weights come back into the same tensors), plus ``train`` — the live
    weights of ``averaged`` under ``live_key``, the EMA, every ``parts`` entry's ``state_dict()``
    (optimisers, schedulers, critics), the random state, the counters and the number of training
    showers (``len(trainer.data.energy)``). :func:`restore_ema_training` reads it back."""
    with trainer.ema.applied_to(averaged) as live:
        inference = copy.deepcopy(trainer.model.inference_state())
    return inference | {
        "train": {
            live_key: live,
            "ema": trainer.ema.state_dict(),
            **{name: part.state_dict() for name, part in parts.items()},
            "gen": trainer.gen.get_state(),
            "step": trainer.step,
            "skipped": trainer.skipped,
            "elapsed_s": trainer.elapsed_s,
            "n_showers": len(trainer.data.energy),
        }
    }


def restore_ema_training(
    trainer: Any,
    state: dict[str, Any],
    path: Path,
    averaged: nn.Module,
    live_key: str,
    parts: Mapping[str, Any],
    same_data: str = "resume with the same data (and --max-showers)",
) -> None:
    """Put a :func:`ema_training_state` back into ``trainer`` (refusing, with
    :class:`CheckpointError`, an inference-only file or one trained on another number of showers;
    ``same_data`` is what the message tells the user to do)."""
    tr = state.get("train")
    if tr is None:
        raise CheckpointError(f"'{path}' holds no training state (an inference-only file): start a new run")
    n = len(trainer.data.energy)
    if tr["n_showers"] != n:
        raise CheckpointError(
            f"'{path}' was trained on {tr['n_showers']} showers, the data file has {n}: {same_data}"
        )
    trainer.model.load_state_dict(state["model"])
    averaged.load_state_dict(tr[live_key])
    trainer.ema.load_state_dict(tr["ema"])
    for name, part in parts.items():
        part.load_state_dict(tr[name])
    trainer.gen.set_state(tr["gen"])
    trainer.step, trainer.skipped = int(tr["step"]), int(tr["skipped"])
    trainer.elapsed_s = float(tr["elapsed_s"])


def seeded(seed: int, make: Callable[[], T]) -> T:
    """``make()`` with torch's global generator seeded with ``seed`` (reproducible initial
    weights), the global generator's state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


class OnDevice:
    """A trainer whose modules (:meth:`device_modules`) train on a device: :meth:`place_on`
    moves them there and keeps the :class:`~caloforge.models._placement.Placement` (``place``)
    its steps put batches on and take the precision from."""

    place = Placement()

    def device_modules(self) -> list[nn.Module]:
        """What lives on the training device."""
        raise NotImplementedError

    def place_on(self, place: Placement) -> None:
        """Move :meth:`device_modules` to ``place``'s device (before the first step or a
        restore: the optimisers hold the same parameter objects)."""
        self.place = place
        if place.on_cuda:
            torch.cuda.set_device(place.device)  # pinned memory and new tensors on this GPU too
        for module in self.device_modules():
            module.to(place.device)


class EMATrainer(OnDevice):
    """What the trainers that keep an EMA of their network share (CaloINN, L2LFlows, BIB-AE,
    CaloDREAM): the batch generator, the validation split, the counters :func:`run_loop`
    reads, an optimiser update that feeds the EMA, the checkpoint state
    (:func:`ema_training_state`), the device (:meth:`place_on`) and, for a trainer that
    describes its loss as :meth:`inputs` and :meth:`terms`, the whole step on one or several
    processes (:meth:`one_step`). A subclass builds its model and optimisers, calls
    :meth:`start`, and says which network is averaged and trained (:meth:`averaged`), under
    which checkpoint key its live weights go (``live_key``) and which parts (optimisers,
    schedulers, critics) the checkpoint holds (:meth:`parts`).

    Data-parallel (``distributed``): every rank draws the same global batch — rows and every
    random number, with the run's CPU generator — and computes :meth:`inputs` for all of it;
    its network then sees only its share, and :func:`combine_terms` weights the shares so the
    summed gradients are those of the whole batch: the same training as one process, up to
    rounding."""

    live_key = "net"
    #: What the refusal of a checkpoint trained on other data tells the user to do.
    same_data = "resume with the same data (and --max-showers)"
    #: Whether :meth:`one_step` runs data-parallel (see the class docstring).
    distributed = True
    #: Validation: the first showers of the validation split, in chunks of this many.
    validation_showers = 2048
    validation_chunk = 256
    config: Any
    data: Any
    model: Any
    ema: Any

    def start(self, config: Any, data: Any, n_val: int | None = None) -> None:
        """The run's generator (``config.seed``), its validation split (``config.val_fraction``
        of ``data.energy``'s showers unless ``n_val``; drawn with ``config.seed + 1``) and zeroed
        counters."""
        self.config, self.data = config, data
        self.gen = torch.Generator().manual_seed(config.seed)
        n = len(data.energy)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        n_val = round(config.val_fraction * n) if n_val is None else n_val
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

    def averaged(self) -> nn.Module:
        """The network whose weights the EMA averages (default ``model.net``)."""
        return self.model.net

    def device_modules(self) -> list[nn.Module]:
        """What lives on the training device (default the model and the EMA copy)."""
        return [self.model, self.ema.module]

    def inputs(self, idx: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        """The network inputs of the showers ``idx`` on the device, per shower along the first
        axis (rows put with ``self.place.put``, random numbers drawn with ``gen``)."""
        raise NotImplementedError

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> list[Term]:
        """The loss terms of ``net`` on ``inputs`` (a share of :meth:`inputs`)."""
        raise NotImplementedError

    def after_update(self) -> None:
        """What follows every update, made or skipped (default: the one-cycle schedule)."""
        self.one_cycle_step()

    def one_step(self) -> list[tuple[str, float | None]]:
        """One update of :meth:`averaged` on a batch of ``config.batch_size`` training showers
        (this rank's share of it), the terms logged, and the validation when due."""
        cfg = self.config
        pick = torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)
        net = self.averaged()
        net.train()
        batch = self.inputs(self.train_idx[pick], self.gen)
        mine = shard(cfg.batch_size)
        with self.place.autocast():
            terms = self.terms(net, {k: v[mine] for k, v in batch.items()})
        loss, logged = combine_terms(terms, mine.stop - mine.start)
        values: list[tuple[str, float | None]] = list(logged)
        if not self.update(loss, net):
            values = [(name, None) for name, _ in logged]
        self.after_update()
        if self.validation_due():
            values.append(("val", self.validation_loss()))
        return values

    def validation_loss(self) -> float:
        """The loss of the EMA network on the validation showers (the same noise every time)."""

        def loss(idx: Tensor, gen: torch.Generator) -> float:
            with self.place.autocast():
                terms = self.terms(self.ema.module, self.inputs(idx, gen))
            return float(sum(t.weight * t.value for t in terms).item())  # type: ignore[union-attr]

        return self.validation_mean(loss, self.validation_showers, self.validation_chunk)

    def parts(self) -> dict[str, Any]:
        """What else the checkpoint holds (default the optimiser ``opt`` and scheduler ``sched``)."""
        return {"opt": self.opt, "sched": self.sched}

    def update(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """:func:`optimizer_step` of ``module`` (``config.grad_clip``), then the EMA update; a
        refused step counts as skipped. True when the update was made."""
        if optimizer_step(loss, module, optimizer or self.opt, self.config.grad_clip):
            self.ema.update(module)
            return True
        self.skipped += 1
        return False

    @torch.no_grad()
    def validation_mean(
        self, loss: Callable[[Tensor, torch.Generator], float], limit: int, chunk: int
    ) -> float:
        """The mean over the first ``limit`` validation showers of ``loss(indices, gen)`` (a
        chunk's mean), ``chunk`` showers at a time, with the same noise at every validation
        (``gen`` seeded with ``config.seed + 2``)."""
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        n = min(len(self.val_idx), limit)
        total = 0.0
        for lo in range(0, n, chunk):
            idx = self.val_idx[lo : min(lo + chunk, n)]
            total += loss(idx, gen) * len(idx)
        return total / n

    def adamw_one_cycle(self, net: nn.Module) -> None:
        """Average ``net`` (``config.ema_decay``) and train it with AdamW under a one-cycle
        schedule peaking at ``config.lr`` over ``config.steps``: ``ema``, ``opt``, ``sched``."""
        self.ema = EMA(net, self.config.ema_decay)
        self.opt = torch.optim.AdamW(net.parameters(), lr=self.config.lr)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=self.config.lr, total_steps=self.config.steps
        )

    def one_cycle_step(self) -> None:
        """Advance a one-cycle schedule, which refuses a step past its total."""
        if self.step + 1 < self.config.steps:
            self.sched.step()

    def validation_due(self) -> bool:
        """Whether this step ends with a validation (every ``config.val_every`` steps)."""
        return bool(len(self.val_idx)) and (self.step + 1) % self.config.val_every == 0

    def state(self) -> dict[str, Any]:
        return ema_training_state(self, self.averaged(), self.live_key, self.parts())

    def restore(self, state: dict[str, Any], path: Path) -> None:
        restore_ema_training(self, state, path, self.averaged(), self.live_key, self.parts(), self.same_data)

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def check_resumable(ckpt: Path, saved_config: str, config: PresetConfig, verb: str = "trained") -> None:
    """Raise :class:`CheckpointError` unless the JSON config stored in ``ckpt`` equals ``config``."""
    try:
        saved = type(config).from_dict(json.loads(saved_config)).to_dict()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"'{ckpt}' holds an unreadable config: {exc}") from exc
    wanted = config.to_dict()
    if saved != wanted:
        diff = sorted(k for k in wanted if saved[k] != wanted[k])
        raise CheckpointError(
            f"'{ckpt}' was {verb} with a different config (fields {', '.join(diff)}): "
            "resume with the same config or start in a new directory"
        )


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag checked between steps (so the checkpoint is consistent);
    a second Ctrl-C interrupts at once. A repeat within :attr:`DEBOUNCE_S` counts as the same
    Ctrl-C: ``torchrun`` passes the terminal's Ctrl-C on to processes that already got it."""

    DEBOUNCE_S = 1.0

    def __init__(self) -> None:
        self.raised = False
        self._at = 0.0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _restore(self) -> None:
        # signal.signal() returns None for a handler not installed from Python.
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def _handle(self, signum: int, frame: object) -> None:
        if not self.raised:
            self.raised, self._at = True, time.monotonic()
        elif time.monotonic() - self._at > self.DEBOUNCE_S:
            self._restore()
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            self._restore()


def run_loop(
    trainer: Trainer,
    total_steps: int,
    ckpt: Path,
    log_every: int,
    checkpoint_minutes: float,
    progress: Progress | None,
    max_minutes: float | None,
    start: float,
) -> None:
    """Step ``trainer`` to ``total_steps``: logs, progress, periodic checkpoints, time budget, Ctrl-C.

    ``trainer`` has ``step``, ``skipped``, ``elapsed_s``, ``last_losses``,
    ``one_step() -> [(name, loss | None)]`` and ``save(path)``. Running means of the losses go
    to ``train_log.jsonl`` next to ``ckpt`` every ``log_every`` steps. Ctrl-C saves after the
    current step and re-raises. ``max_minutes``: None (no limit) or >= 0 (0: one step).

    Divergence guard: a step is *skipped* when one of its updates was (``trainer.skipped`` grew
    or a loss came back None: the loss or gradient norm was not finite). The loop raises
    :class:`TrainingDiverged`, without writing a checkpoint, when
    :data:`MAX_SKIPPED_IN_A_ROW` (10) steps in a row were skipped, or when more than
    :data:`MAX_SKIPPED_SHARE` (10 %) of the steps of this call were, once it made
    :data:`SKIPPED_SHARE_MIN_STEPS` (20). The checkpoint last written (periodically, or the one
    resumed from) is kept; periodic checkpoints are written after unskipped steps only, and
    never with non-finite weights (:func:`save_finite_checkpoint`).

    On several processes (a trainer with ``distributed = True``; see
    :mod:`caloforge.models._distributed`) every rank runs the loop; rank 0 logs, shows progress
    and writes checkpoints, and the ranks stop, save and end at the same step (Ctrl-C on any
    rank; rank 0's clock for checkpoints and the time budget). Other trainers refuse to run
    on several processes.
    """
    if max_minutes is not None and not max_minutes >= 0:  # NaN too; 0 stops after one step
        raise ValueError(f"the time budget must be a number of minutes >= 0, got {max_minutes}")
    w = world()
    # A torchrun start of a command that did not join the group would train N copies.
    size = w.size if w.size > 1 else int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size > 1 and not (w.size > 1 and getattr(trainer, "distributed", False)):
        raise ValueError(
            f"this model trains in one process, not {size}: start it without torchrun or --nproc"
        )
    if w.main:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    elapsed_before = trainer.elapsed_s
    log_path = ckpt.parent / "train_log.jsonl"
    sums: dict[str, list[float]] = {}
    last_save = time.monotonic()
    saved_step = trainer.step if ckpt.exists() else None  # the last good checkpoint on disk
    made = skipped_steps = in_a_row = 0

    def save() -> None:
        nonlocal saved_step
        trainer.elapsed_s = elapsed_before + time.monotonic() - start
        if w.main:  # the ranks hold the same state; one writes it
            trainer.save(ckpt)
        saved_step = trainer.step

    with _InterruptFlag() as interrupt:
        try:
            while trainer.step < total_steps:
                skipped_before = trainer.skipped
                losses = trainer.one_step()
                for name, value in losses:
                    total = sums.setdefault(name, [0.0, 0])
                    if value is not None:
                        total[0] += value
                        total[1] += 1
                trainer.step += 1
                made += 1
                if trainer.skipped > skipped_before or any(value is None for _, value in losses):
                    skipped_steps += 1
                    in_a_row += 1
                else:
                    in_a_row = 0
                if trainer.step % log_every == 0 or trainer.step == total_steps:
                    trainer.last_losses = {name: s / c for name, (s, c) in sums.items() if c}
                    sums = {}
                    record = {
                        "step": trainer.step,
                        **trainer.last_losses,
                        "skipped_steps": trainer.skipped,
                        "minutes": (elapsed_before + time.monotonic() - start) / 60,  # over all sessions
                    }
                    if w.main:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                if progress is not None and w.main:
                    progress("train", trainer.step, total_steps, info=_loss_info(trainer.last_losses))
                _check_divergence(trainer.step, made, skipped_steps, in_a_row, ckpt, saved_step)
                # Several processes stop, save and end together, on rank 0's clock.
                now = time.monotonic()
                stop, save_due, time_up = agree(
                    [interrupt.raised],
                    [
                        in_a_row == 0 and now - last_save > 60 * checkpoint_minutes,
                        max_minutes is not None and now - start > 60 * max_minutes,
                    ],
                )
                if stop:
                    raise KeyboardInterrupt
                # A periodic checkpoint waits for a step whose updates were all made.
                if save_due:
                    save()
                    last_save = time.monotonic()
                if time_up:
                    break
        except KeyboardInterrupt:
            save()
            raise
    trainer.elapsed_s = elapsed_before + time.monotonic() - start


def run_to_end(
    trainer: Any,
    config: Any,
    ckpt: Path,
    state: dict[str, Any] | None,
    progress: Progress | None,
    max_minutes: float | None,
    start: float,
) -> None:
    """The common middle of a family's ``train``: restore ``trainer`` from the resumed
    ``state`` (if any), :func:`run_loop` it to ``config.steps`` (``config.log_every``,
    ``config.checkpoint_minutes``) and mark its model complete when it got there."""
    if state is not None:
        trainer.restore(state, ckpt)
    if world().size > 1 and hasattr(trainer, "device_modules"):
        broadcast_module(*trainer.device_modules())  # identical replicas on every rank
    run_loop(
        trainer, config.steps, ckpt, config.log_every, config.checkpoint_minutes, progress, max_minutes, start
    )
    trainer.model.complete = trainer.step >= config.steps


def check_shares(config: Any) -> None:
    """Refuse more processes than ``config.batch_size`` showers (a rank would get none), in one
    line, before anything is trained."""
    n, batch = world().size, getattr(config, "batch_size", None)
    if batch is not None and n > batch:
        raise ValueError(f"{n} processes for batches of {batch}: use at most {batch} processes")


def placement_of(trainer: Any, config: Any, device: str = "cpu", precision: str = "auto") -> Placement:
    """Where ``trainer`` (a trainer or its class) runs for ``device``
    (:func:`caloforge.devices.resolve_device`; on several processes the rank's own GPU) and
    ``precision`` (``auto``: bfloat16 autocast on a CUDA device where the trainer allows it,
    ``amp = True``); a trainer without ``place_on`` runs on the CPU in float32 only. Also
    refuses more processes than showers in a batch (:func:`check_shares`). Called with the
    class before the data are read, so a refused setting costs nothing."""
    from caloforge.devices import resolve_device

    check_shares(config)

    what = f"{type(config).__name__.removesuffix('Config')} training"
    placeable = hasattr(trainer, "place_on")
    device = rank_device(resolve_device(device, cpu_only=None if placeable else what))
    return Placement(device, resolve_precision(precision, device, bool(getattr(trainer, "amp", False)), what))


def train_run(
    config: Any,
    data_path: str | Path,
    out_dir: str | Path,
    check_state: Callable[[dict[str, Any], Path], dict[str, Any]],
    load: Callable[[str | Path], Any],
    make_trainer: Callable[[Any, Any], Any],
    **run: Unpack[RunOptions],
) -> TrainResult:
    """One training run of a family, the shape every family's ``train`` shares: open the run in
    ``out_dir`` (:func:`open_run`: a fresh directory, or the checked state to resume), ``load``
    the data of ``data_path`` (progress stage ``load``), ``make_trainer(config, data)``, run it
    to ``config.steps`` (:func:`run_to_end`), write the final checkpoint and return the
    :class:`TrainResult` (parameters from ``trainer.model.n_parameters()``). ``run``: the
    :class:`RunOptions` (``device`` and ``precision``: :func:`placement_of`). On several
    processes every rank trains its share and rank 0 writes."""
    unknown = sorted(set(run) - set(RunOptions.__annotations__))
    if unknown:
        raise TypeError(f"train() got an unexpected keyword argument '{unknown[0]}'")
    with run_lock(out_dir):
        start = time.monotonic()
        progress, max_minutes = run.get("progress"), run.get("max_minutes")
        ckpt, state = open_run(out_dir, config, run.get("resume", False), check_state)
        place = placement_of(make_trainer, config, run.get("device", "cpu"), run.get("precision", "auto"))
        if progress is not None:
            progress("load", 0, 1)
        data = load(data_path)
        if progress is not None:
            progress("load", 1, 1)
        trainer = make_trainer(config, data)
        if hasattr(trainer, "place_on"):
            trainer.place_on(place)
        run_to_end(trainer, config, ckpt, state, progress, max_minutes, start)
        model = trainer.model
        if not world().main:  # rank 0 writes
            return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, {})
        trainer.save(ckpt)
        return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, model.n_parameters())


def _check_divergence(
    step: int, made: int, skipped: int, in_a_row: int, ckpt: Path, saved_step: int | None
) -> None:
    """Raise :class:`TrainingDiverged` if the skipped steps break the rule of :func:`run_loop`."""
    if in_a_row >= MAX_SKIPPED_IN_A_ROW:
        what = f"in {in_a_row} steps in a row"
    elif made >= SKIPPED_SHARE_MIN_STEPS and skipped > MAX_SKIPPED_SHARE * made:
        what = (
            f"in {skipped} of the {made} steps since the run (re)started (more than {MAX_SKIPPED_SHARE:.0%})"
        )
    else:
        return
    kept = (
        f"the last good checkpoint '{ckpt}' (step {saved_step}) is kept"
        if saved_step is not None
        else "no checkpoint had been written yet, so none is kept"
    )
    raise TrainingDiverged(
        f"training stopped at step {step}: the loss or gradient norm was not finite {what} "
        f"(those updates were skipped); {_LIKELY_CAUSE}; {kept}"
    )


def _loss_info(losses: dict[str, float]) -> str:
    """``edm 0.912 flow -0.21``: the last logged losses for a progress bar."""
    short = {"edm_loss": "edm", "flow_loss": "flow", "cd_loss": "cd"}
    return " ".join(f"{short.get(k, k)} {v:.3g}" for k, v in losses.items())


def run_checkpoint(out_dir: str | Path) -> Path:
    """``out_dir/checkpoint.pt``, refusing an ``out_dir`` that is a file (one line)."""
    out = Path(out_dir)
    check_output_dir(out, purpose="the training run")
    return out / RUN_CHECKPOINT


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold the lock of the run directory ``out_dir`` (``.NAME.lock`` beside it) for the block:
    a second run into the same directory, ``--resume`` included, is refused in one line while
    this one lives. Only the main rank of a data-parallel run takes it."""
    if not world().main:
        yield
        return
    out = Path(out_dir).resolve()  # one lock however the directory is spelled
    out.parent.mkdir(parents=True, exist_ok=True)  # the lock lives beside the run directory
    with output_lock(out):
        yield


def locked_run(train: Callable[..., T]) -> Callable[..., T]:
    """Decorate a family's ``train(config, data_path, out_dir, ...)`` (or any function with an
    ``out_dir`` run directory) to run under :func:`run_lock`."""

    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with run_lock(signature.bind(*args, **kwargs).arguments["out_dir"]):
            return train(*args, **kwargs)

    return wrapper


def open_run(
    out_dir: str | Path,
    config: PresetConfig,
    resume: bool,
    check: Callable[[dict[str, Any], Path], dict[str, Any]],
) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint path in ``out_dir`` and, with ``resume``, the checked saved state.

    ``check(state, path)`` validates the saved state (format, version). Without ``resume`` an
    existing checkpoint is an error rather than overwritten. The directory itself is made by
    :func:`run_loop`, once the data are loaded: a run refused on its inputs leaves nothing.
    """
    ckpt = run_checkpoint(out_dir)
    if resume:
        state = check(read_checkpoint(ckpt), ckpt)
        check_resumable(ckpt, state["config"], config)
        return ckpt, state
    if ckpt.exists():
        raise CheckpointError(f"'{ckpt}' exists: resume it, or train into another directory")
    return ckpt, None
