"""Training machinery shared by every model: optimiser step, atomic checkpoints, resume checks
and the step loop (progress, periodic checkpoints, time budget, Ctrl-C)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from caloforge.models._config import PresetConfig
from caloforge.models.checkpoint import read_checkpoint, save_checkpoint
from caloforge.models.protocol import CheckpointError

__all__ = [
    "CheckpointError",
    "Progress",
    "TrainResult",
    "Trainer",
    "check_resumable",
    "open_run",
    "optimizer_step",
    "run_loop",
    "save_checkpoint",
]

#: ``progress(stage, done, total)``; training stages add ``info=`` (the running losses).
Progress = Callable[..., None]


@dataclass
class TrainResult:
    """What a training run did: the checkpoint, how far it got, the last logged losses and the
    trainable parameters of each network (``part``: which part of a multi-part family)."""

    checkpoint: Path
    step: int
    total_steps: int
    complete: bool
    minutes: float
    losses: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    part: str | None = None

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
            checkpoint, trainer.step, total_steps, complete, minutes, trainer.last_losses, parameters, part
        )


class Trainer(Protocol):
    """What :func:`run_loop` drives: the state of one training run and one step of it."""

    step: int
    skipped: int
    elapsed_s: float
    last_losses: dict[str, float]

    def one_step(self) -> list[tuple[str, float | None]]:
        """One optimisation step; the losses it computed (None: the step was skipped)."""
        ...

    def save(self, path: Path) -> None:
        """Write a resumable checkpoint to ``path``."""
        ...


def optimizer_step(
    loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float
) -> bool:
    """Backpropagate ``loss``, clip ``module``'s gradient norm to ``grad_clip`` and step.

    Returns False, without stepping, when the loss or the gradient is not finite, so one bad
    batch cannot poison a long run.
    """
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    norm = nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


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
    a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
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
        self.raised = True
        self._restore()

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

    ``trainer`` has ``step``, ``elapsed_s``, ``last_losses``, ``one_step() -> [(name, loss | None)]``
    and ``save(path)``. Running means of the losses go to ``train_log.jsonl`` next to ``ckpt``
    every ``log_every`` steps. Ctrl-C saves after the current step and re-raises.
    """
    elapsed_before = trainer.elapsed_s
    log_path = ckpt.parent / "train_log.jsonl"
    sums: dict[str, list[float]] = {}
    last_save = time.monotonic()

    def save() -> None:
        trainer.elapsed_s = elapsed_before + time.monotonic() - start
        trainer.save(ckpt)

    with _InterruptFlag() as interrupt:
        try:
            while trainer.step < total_steps:
                for name, value in trainer.one_step():
                    total = sums.setdefault(name, [0.0, 0])
                    if value is not None:
                        total[0] += value
                        total[1] += 1
                trainer.step += 1
                if trainer.step % log_every == 0 or trainer.step == total_steps:
                    trainer.last_losses = {name: s / c for name, (s, c) in sums.items() if c}
                    sums = {}
                    record = {
                        "step": trainer.step,
                        **trainer.last_losses,
                        "skipped_steps": trainer.skipped,
                        "minutes": (elapsed_before + time.monotonic() - start) / 60,  # over all sessions
                    }
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                if progress is not None:
                    progress("train", trainer.step, total_steps, info=_loss_info(trainer.last_losses))
                if interrupt.raised:
                    raise KeyboardInterrupt
                if time.monotonic() - last_save > 60 * checkpoint_minutes:
                    save()
                    last_save = time.monotonic()
                if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
                    break
        except KeyboardInterrupt:
            save()
            raise
    trainer.elapsed_s = elapsed_before + time.monotonic() - start


def _loss_info(losses: dict[str, float]) -> str:
    """``edm 0.912 flow -0.21``: the last logged losses for a progress bar."""
    short = {"edm_loss": "edm", "flow_loss": "flow", "cd_loss": "cd"}
    return " ".join(f"{short.get(k, k)} {v:.3g}" for k, v in losses.items())


def open_run(
    out_dir: str | Path,
    config: PresetConfig,
    resume: bool,
    check: Callable[[dict[str, Any], Path], dict[str, Any]],
) -> tuple[Path, dict[str, Any] | None]:
    """Create ``out_dir``; return its checkpoint path and, with ``resume``, the checked saved state.

    ``check(state, path)`` validates the saved state (format, version). Without ``resume`` an
    existing checkpoint is an error rather than overwritten.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if resume:
        state = check(read_checkpoint(ckpt), ckpt)
        check_resumable(ckpt, state["config"], config)
        return ckpt, state
    if ckpt.exists():
        raise CheckpointError(f"'{ckpt}' exists: resume it, or train into another directory")
    return ckpt, None
