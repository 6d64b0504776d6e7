"""``caloforge train caloclouds2`` and ``caloforge distill``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from caloforge.cliutils import (
    MaxMinutesOption,
    NprocOption,
    ResumeOption,
    SeedOption,
    ThreadsOption,
    given,
    progress_bar,
    report_run,
    seed_option,
    set_threads,
    stage_progress,
    train_in_processes,
)
from caloforge.cliutils import (
    widths as parse_widths,
)


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add CaloClouds II's commands to the ``train`` group and the main app."""
    train_app.command("caloclouds2")(train_caloclouds2)
    app.command("distill")(distill)


def train_caloclouds2(
    data: Annotated[Path, typer.Option(help="Training point-cloud file (e.g. from `caloforge simulate`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, MODEL card data).")],
    preset: Annotated[
        str, typer.Option(help="cpu (minutes on a laptop) or paper (published sizes, GPU).")
    ] = "cpu",
    steps: Annotated[
        int | None, typer.Option(min=1, help="PointWise Net steps (default: the preset's).")
    ] = None,
    flow_steps: Annotated[
        int | None, typer.Option(min=0, help="Shower Flow steps (default: the preset's).")
    ] = None,
    max_showers: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N training showers.")
    ] = None,
    widths: Annotated[
        str | None,
        typer.Option(help="PointWise Net layer widths, e.g. 4,64,128,64,4 (default: the preset's)."),
    ] = None,
    cluster_per_cell: Annotated[
        int | None,
        typer.Option(
            min=1, help="Re-cluster the points on N squares per cell side (a divisor of 6; fewer points)."
        ),
    ] = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
    nproc: NprocOption = 1,
) -> None:
    """Train CaloClouds II (Shower Flow + EDM PointWise Net + calibration) on a point-cloud file."""
    from caloforge.models.caloclouds2 import CaloClouds2Config

    shape = parse_widths(widths, "--widths")
    overrides = given(
        steps=steps,
        flow_steps=flow_steps,
        max_showers=max_showers,
        net_widths=shape,
        cluster_per_cell=cluster_per_cell,
    )
    config = CaloClouds2Config.from_preset(preset, seed=seed, **overrides)
    result = train_in_processes(_train, nproc, config, data, out, resume, max_minutes, threads=threads)
    if result is not None:
        report_run(result)


def _train(config: Any, data: Path, out: Path, resume: bool, max_minutes: float | None) -> Any:
    """One training process (of one or several): rank 0 shows the progress."""
    from caloforge.models._distributed import world
    from caloforge.models.caloclouds2 import train

    if not world().main:
        return train(config, data, out, resume=resume, max_minutes=max_minutes)
    with progress_bar() as bar:
        return train(config, data, out, resume=resume, progress=stage_progress(bar), max_minutes=max_minutes)


def distill(
    teacher: Annotated[
        str,
        typer.Option(help="The EDM model to distil: a run directory, checkpoint or 'caloclouds2' (shipped)."),
    ],
    data: Annotated[Path, typer.Option(help="The teacher's training point-cloud file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory of the consistency model.")],
    preset: Annotated[str, typer.Option(help="cpu, paper or smoke.")] = "cpu",
    steps: Annotated[
        int | None, typer.Option(min=1, help="Distillation steps (default: the preset's).")
    ] = None,
    levels: Annotated[
        int | None, typer.Option(min=2, help="Karras noise levels N of the teacher's steps (default 18).")
    ] = None,
    student_widths: Annotated[
        str | None,
        typer.Option(help="A narrower student, e.g. 4,32,64,32,4 (random start); default: the teacher's."),
    ] = None,
    loss: Annotated[str | None, typer.Option(help="l2 (default) or pseudo-huber.")] = None,
    seed: Annotated[int, seed_option("Seed of batches and noise.")] = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Distil a CaloClouds II model into a one-step consistency model, CaloClouds II (CM)."""
    from caloforge.models.caloclouds2.distillation import DistillConfig
    from caloforge.models.caloclouds2.distillation import distill as run_distill
    from caloforge.models.registry import resolve_model

    set_threads(threads)
    overrides = given(
        steps=steps,
        n_levels=levels,
        student_widths=parse_widths(student_widths, "--student-widths"),
        loss=loss,
    )
    config = DistillConfig.from_preset(preset, seed=seed, **overrides)
    path = None if resume else resolve_model(teacher)
    with progress_bar() as bar:
        result = run_distill(
            path, data, out, config, resume=resume, progress=stage_progress(bar), max_minutes=max_minutes
        )
    report_run(result)
