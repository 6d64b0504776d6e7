"""``caloforge train caloclouds1``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caloforge.cliutils import (
    MaxMinutesOption,
    ResumeOption,
    SeedOption,
    ThreadsOption,
    given,
    progress_bar,
    report_run,
    set_threads,
    stage_progress,
)
from caloforge.cliutils import widths as parse_widths


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add CaloClouds (I)'s command to the ``train`` group."""
    train_app.command("caloclouds1")(train_caloclouds1)


def train_caloclouds1(
    data: Annotated[Path, typer.Option(help="Training point-cloud file (e.g. from `caloforge simulate`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")],
    flow_from: Annotated[
        str,
        typer.Option(help="CaloClouds II model whose Shower Flow is used: 'caloclouds2' (shipped) or a run."),
    ] = "caloclouds2",
    preset: Annotated[str, typer.Option(help="cpu (under an hour on 2 cores), paper or smoke.")] = "cpu",
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the preset's).")] = None,
    max_showers: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N training showers.")
    ] = None,
    widths: Annotated[
        str | None,
        typer.Option(help="PointWise Net layer widths, e.g. 4,64,128,64,4 (default: the preset's)."),
    ] = None,
    latent_dim: Annotated[
        int | None, typer.Option(min=1, help="Latent size (default: the preset's).")
    ] = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train CaloClouds (I) (EPiC encoder + Latent Flow + DDPM PointWise Net + calibration)."""
    from caloforge.models.caloclouds1 import CaloClouds1Config, train

    set_threads(threads)
    overrides = given(
        steps=steps,
        max_showers=max_showers,
        net_widths=parse_widths(widths, "--widths"),
        latent_dim=latent_dim,
    )
    config = CaloClouds1Config.from_preset(preset, seed=seed, **overrides)
    with progress_bar() as bar:
        result = train(
            config,
            data,
            out,
            flow_from=flow_from,
            resume=resume,
            progress=stage_progress(bar),
            max_minutes=max_minutes,
        )
    report_run(result)
