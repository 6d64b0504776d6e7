"""``caloforge train caloinn``."""

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
    """Add CaloINN's command to the ``train`` group."""
    train_app.command("caloinn")(train_caloinn)


def train_caloinn(
    data: Annotated[Path, typer.Option(help="Training voxel file (`caloforge simulate --voxel-out`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")],
    preset: Annotated[str, typer.Option(help="cpu (under an hour on 2 cores), paper or smoke.")] = "cpu",
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
    """Train CaloINN (spline coupling flow over layer and voxel log energies) on voxel showers."""
    from caloforge.models.caloinn import CaloINNConfig, train

    set_threads(threads)
    config = CaloINNConfig.from_preset(preset, seed=seed, **given(steps=steps, batch_size=batch_size))
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
    console.print(f"CaloINN flow: {n:,} parameters; last losses {result.losses}")
    report_run(result)
