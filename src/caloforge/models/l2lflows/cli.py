"""``caloforge train l2lflows``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caloforge.cliutils import (
    MaxMinutesOption,
    ResumeOption,
    SeedOption,
    ThreadsOption,
    console,
    given,
    progress_bar,
    report_run,
    set_threads,
    stage_progress,
)


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add the L2LFlows command to the ``train`` group."""
    train_app.command("l2lflows")(train_l2lflows)


def train_l2lflows(
    data: Annotated[
        Path,
        typer.Option(
            help="Training image file on a cell-grid detector (`caloforge convert --detector ild-ecal-30`)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")],
    preset: Annotated[str, typer.Option(help="cpu (15-20 minutes on 2 cores), paper or smoke.")] = "cpu",
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size (default: the preset's).")] = None,
    max_showers: Annotated[
        int | None, typer.Option(min=20, help="Train on the first N showers of the file only.")
    ] = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train L2LFlows (a layer-energy flow and one convolutional flow per layer) on cell images."""
    from caloforge.models.l2lflows import L2LFlowsConfig, train

    set_threads(threads)
    config = L2LFlowsConfig.from_preset(preset, seed=seed, **given(steps=steps, batch_size=batch_size))
    with progress_bar() as bar:
        result = train(
            config,
            data,
            out,
            max_showers=max_showers,
            resume=resume,
            progress=stage_progress(bar),
            max_minutes=max_minutes,
        )
    n = sum(result.parameters.values())
    console.print(f"L2LFlows flows: {n:,} parameters; last losses {result.losses}")
    report_run(result)
