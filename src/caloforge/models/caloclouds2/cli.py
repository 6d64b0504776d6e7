"""``caloforge distill`` (``caloforge train caloclouds2`` is declared in the family's ``trainings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from caloforge.cliutils import (
    DeviceOption,
    MaxMinutesOption,
    NprocOption,
    PrecisionOption,
    ResumeOption,
    ThreadsOption,
    given,
    progress_bar,
    report_run,
    seed_option,
    stage_progress,
)
from caloforge.cliutils import (
    widths as parse_widths,
)


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add ``caloforge distill`` to the main app."""
    app.command("distill")(distill)


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
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    nproc: NprocOption = 1,
) -> None:
    """Distil a CaloClouds II model into a one-step consistency model, CaloClouds II (CM)."""
    from caloforge.devices import processes_device, resolve_device
    from caloforge.models._distributed import run_in_processes
    from caloforge.models.caloclouds2.distillation import DistillConfig
    from caloforge.models.registry import resolve_model

    device = processes_device(device, resolve_device(device), nproc)
    overrides = given(
        steps=steps,
        n_levels=levels,
        student_widths=parse_widths(student_widths, "--student-widths"),
        loss=loss,
    )
    config = DistillConfig.from_preset(preset, seed=seed, **overrides)
    path = None if resume else resolve_model(teacher)
    options = {"resume": resume, "max_minutes": max_minutes, "device": device, "precision": precision}
    result = run_in_processes(
        _distill_one, nproc, path, data, out, config, options, threads=threads, device=device
    )
    if result is not None:  # rank 0 reports
        report_run(result)


def _distill_one(path: Path | None, data: Path, out: Path, config: Any, options: dict[str, Any]) -> Any:
    """One distillation process (of one or several; module level, so spawned processes can run
    it): rank 0 shows the progress."""
    from caloforge.models._distributed import world
    from caloforge.models.caloclouds2.distillation import distill as run_distill

    if not world().main:
        return run_distill(path, data, out, config, **options)
    with progress_bar() as bar:
        return run_distill(path, data, out, config, progress=stage_progress(bar), **options)
