"""What every command of the command line shares: consoles, progress bars, option types and
the small helpers that turn options into library calls. The families' own commands
(``caloforge.models.<family>.cli``) use them too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = [
    "MaxMinutesOption",
    "ResumeOption",
    "SeedOption",
    "ThreadsOption",
    "console",
    "err_console",
    "given",
    "progress_bar",
    "report_run",
    "set_threads",
    "stage_progress",
    "widths",
]

console = Console()
err_console = Console(stderr=True)


def progress_bar() -> Progress:
    """The progress bar used by every long command (showers done, rate, ETA)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
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


ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")]
MaxMinutesOption = Annotated[
    float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes; --resume continues.")
]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="Torch CPU threads.")]
SeedOption = Annotated[int, typer.Option(help="Seed of initialisation, batches and noise.")]


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None), as config overrides."""
    return {k: v for k, v in values.items() if v is not None}


def report_run(result: Any) -> None:
    """How a training run ended (a :class:`~caloforge.models._training.TrainResult`)."""
    state = "complete" if result.complete else f"stopped at step {result.step} of {result.total_steps}"
    console.print(f"{state} after {result.minutes:.1f} min; checkpoint {result.checkpoint}")
    if not result.complete:
        console.print("continue with the same command and --resume")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def widths(text: str | None) -> tuple[int, ...] | None:
    """``4,64,128,64,4`` → a tuple of layer widths (None stays None)."""
    if text is None:
        return None
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(
            f"layer widths must be integers separated by commas, e.g. 4,64,128,64,4; got '{text}'"
        ) from None
