"""What every command of the command line shares: consoles, progress bars, option types and
the small helpers that turn options into library calls. The families' own commands
(``caloforge.models.<family>.cli``) use them too."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from caloforge.devices import DEVICE_HELP

__all__ = [
    "MAX_SEED",
    "DeviceOption",
    "EngineOption",
    "LogProgress",
    "MaxMinutesOption",
    "PrecisionOption",
    "ResumeOption",
    "SchedulerOption",
    "SeedOption",
    "ThreadsOption",
    "console",
    "err_console",
    "given",
    "positive_minutes",
    "progress_bar",
    "report_run",
    "seed_option",
    "set_threads",
    "stage_progress",
    "widths",
]

#: Width of a console that writes to a file or pipe (a log): wide enough that tables and
#: sentences are not wrapped or cut at 80 columns (``COLUMNS`` still decides where set).
LOG_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty() or "COLUMNS" in os.environ
    return Console(stderr=stderr, width=None if terminal else LOG_WIDTH)


console = _console()
err_console = _console(stderr=True)


class LogProgress:
    """Progress for a log file (stderr not a terminal): one plain line per task every
    ``every`` seconds (``CALOFORGE_LOG_EVERY``, default 5) and, for a task that lasted that
    long, when it finishes — ``geant4: 120/2,000 (6 %), 3.2/s, ETA 9.8 min``; quick tasks
    and runs that fail print nothing. The calls are those of rich's ``Progress``
    that the commands use (``add_task``, ``update``, ``advance``)."""

    def __init__(self, every: float | None = None) -> None:
        self.every = float(os.environ.get("CALOFORGE_LOG_EVERY", "5")) if every is None else every
        self._tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            return
        for task in self._tasks.values():
            if task["printed"] != task["done"] and self._long(task):
                self._print(task)

    def _long(self, task: dict[str, Any]) -> bool:
        return time.monotonic() - task["start"] >= self.every

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        now = time.monotonic()
        key = len(self._tasks)
        self._tasks[key] = {
            "description": description, "total": total, "done": 0, "start": now, "last": now,
            "printed": 0, "info": fields.get("rate", ""),
        }  # fmt: skip
        return key

    def advance(self, key: int, advance: float = 1) -> None:
        self.update(key, completed=self._tasks[key]["done"] + advance)

    def update(
        self, key: int, completed: float | None = None, total: float | None = None, **fields: Any
    ) -> None:
        task = self._tasks[key]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["done"] = completed
        if "rate" in fields:
            task["info"] = fields["rate"]
        now = time.monotonic()
        finished = task["total"] is not None and task["done"] >= task["total"]
        if now - task["last"] >= self.every or (
            finished and task["printed"] != task["done"] and self._long(task)
        ):
            self._print(task)
            task["last"] = now

    @staticmethod
    def _print(task: dict[str, Any]) -> None:
        done, total = task["done"], task["total"]
        line = f"{task['description']}: {done:,.0f}"
        elapsed = time.monotonic() - task["start"]
        rate = done / elapsed if elapsed > 0 else 0.0
        if total:
            line += f"/{total:,.0f} ({100 * done / total:.0f} %)"
        line += f", {rate:.3g}/s"
        if total and rate > 0 and done < total:
            line += f", ETA {(total - done) / rate / 60:.1f} min"
        if task["info"]:
            line += f", {task['info']}"
        print(line, file=sys.stderr, flush=True)
        task["printed"] = done


def progress_bar() -> Progress | LogProgress:
    """The progress of every long command (showers done, rate, ETA): a bar on a terminal, a
    line every few seconds in a log (:class:`LogProgress`)."""
    if not err_console.is_terminal:
        return LogProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def stage_progress(bar: Progress) -> Callable[..., None]:
    """A ``progress(stage, done, total, info="")`` callback showing one bar per stage;
    ``info`` (e.g. the running loss) is shown next to the bar."""
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int, info: str = "") -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, rate="")
        bar.update(tasks[stage], completed=done, rate=info)

    return progress


#: The largest seed a command accepts (the largest signed 64-bit integer: what HDF5 attributes,
#: ``torch.manual_seed`` and NumPy take, with room for the small offsets added to it).
MAX_SEED = 2**63 - 1


def positive_minutes(value: float | None) -> float | None:
    """Typer callback of :data:`MaxMinutesOption`: None, or a number of minutes above 0."""
    if value is not None and not value > 0:  # NaN too
        raise typer.BadParameter(f"must be more than 0 minutes, got {value}")
    return value


def seed_option(help: str = "Seed of initialisation, batches and noise.") -> Any:
    """A ``--seed`` option limited to 0 ≤ seed ≤ :data:`MAX_SEED` (a usage error outside):
    ``seed: Annotated[int, seed_option("Seed of the draws.")] = 0``."""
    return typer.Option(min=0, max=MAX_SEED, help=help)


EngineOption = Annotated[
    str,
    typer.Option(
        help="Where the pieces run: local (--workers processes here) or dask (a Dask cluster: "
        "--scheduler, or a local cluster of --workers processes; docs/distributed.md)."
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(help="Address of a running Dask scheduler, e.g. tcp://host:8786 (--engine dask)."),
]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")]
MaxMinutesOption = Annotated[
    float | None,
    typer.Option(
        callback=positive_minutes,
        help="Stop (with a checkpoint) after this many minutes; --resume continues.",
    ),
]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="Torch CPU threads.")]
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
NprocOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Data-parallel training processes on this machine (torch.distributed: gloo on CPUs, "
        "NCCL and one GPU each with --device cuda); the global batch stays the preset's. For "
        "several machines start the command with torchrun.",
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="Forward-pass precision: auto (bfloat16 autocast on a GPU where the family allows "
        "it, else float32), float32 or bfloat16.",
    ),
]
SeedOption = Annotated[int, seed_option()]


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None), as config overrides."""
    return {k: v for k, v in values.items() if v is not None}


def report_run(result: Any) -> None:
    """How a training run ended (a :class:`~caloforge.models._training.TrainResult`)."""
    state = "complete" if result.complete else f"stopped at step {result.step} of {result.total_steps}"
    console.print(f"{state} after {result.minutes:.1f} min; checkpoint {result.checkpoint}")
    skipped = getattr(result, "skipped", 0)
    if skipped:
        console.print(
            f"{skipped} optimiser update(s) skipped for a non-finite loss or gradient (train_log.jsonl)"
        )
    if not result.complete:
        console.print("continue with the same command and --resume")


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads: ``threads`` (``--threads``), or where not given the CPUs other work
    does not keep busy (:func:`caloforge.hardware.default_threads`; said on stderr when that is
    fewer than all of them); with ``OMP_NUM_THREADS`` set, torch's own count (it read it)."""
    import torch

    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return  # the user's (or a launcher's) choice: torch read it when it started
        from caloforge.hardware import default_threads, usable_cpus

        threads, why = default_threads()
        if threads < usable_cpus():
            err_console.print(f"threads: {why}; --threads N to choose", markup=False)
    torch.set_num_threads(threads)


def widths(text: str | None, option: str = "--widths") -> tuple[int, ...] | None:
    """``4,64,128,64,4`` → a tuple of layer widths (None stays None); anything but positive
    integers separated by commas is a one-line ``ValueError`` naming ``option``."""
    if text is None:
        return None
    try:
        shape = tuple(int(w) for w in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(w < 1 for w in shape):
        raise ValueError(
            f"{option}: layer widths must be positive integers, e.g. 4,64,128,64,4; got '{text}'"
        )
    return shape
