"""``caloforge train bibae``."""

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
    """Add BIB-AE's command to the ``train`` group."""
    train_app.command("bibae")(train_bibae)


def train_bibae(
    data: Annotated[
        Path, typer.Option(help="Training cell-image file (voxels on a cell grid, e.g. ild-ecal-30).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")],
    preset: Annotated[str, typer.Option(help="cpu (15-20 minutes on 2 cores), paper or smoke.")] = "cpu",
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=2, help="Batch size (default: the preset's).")] = None,
    max_showers: Annotated[
        int | None, typer.Option(min=20, help="Train on the first N showers of the file only.")
    ] = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train BIB-AE (3-d convolutional autoencoder with critics and a post-processor) on cell images."""
    from caloforge.models.bibae import BIBAEConfig, train

    set_threads(threads)
    config = BIBAEConfig.from_preset(preset, seed=seed, **given(steps=steps, batch_size=batch_size))
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
    console.print(f"BIB-AE: {result.parameters} parameters; last losses {result.losses}")
    report_run(result)
