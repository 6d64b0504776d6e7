"""``caloforge train calodream-energy | calodream-shape | calodream-vae`` and ``caloforge train-solver``."""

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
    """Add CaloDREAM's commands to the ``train`` group and the main app."""
    train_app.command("calodream-energy")(train_calodream_energy)
    train_app.command("calodream-shape")(train_calodream_shape)
    train_app.command("calodream-vae")(train_calodream_vae)
    app.command("train-solver")(train_solver)


def _train_calodream(
    part: str,
    data: Path,
    out: Path,
    preset: str,
    steps: int | None,
    batch_size: int | None,
    seed: int,
    resume: bool,
    max_minutes: float | None,
    threads: int | None,
    target: str | None = None,
    **links: Path | None,
) -> None:
    from caloforge.models.calodream import CaloDreamConfig, train

    set_threads(threads)
    config = CaloDreamConfig.from_preset(
        preset, seed=seed, **given(steps=steps, batch_size=batch_size, shape_target=target)
    )
    with progress_bar() as bar:
        result = train(
            config,
            part,
            data,
            out,
            resume=resume,
            progress=stage_progress(bar),
            max_minutes=max_minutes,
            **links,
        )
    n = sum(result.parameters.values())
    console.print(f"CaloDREAM {part} network: {n:,} parameters; last losses {result.losses}")
    report_run(result)


VoxelDataOption = Annotated[
    Path, typer.Option(help="Training voxel file (`caloforge simulate --voxel-out`).")
]
RunOption = Annotated[
    Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")
]
DreamPresetOption = Annotated[str, typer.Option(help="cpu (about an hour on 2 cores), paper (GPU) or smoke.")]
DreamStepsOption = Annotated[int | None, typer.Option(min=1, help="Training steps (default: the preset's).")]
BatchOption = Annotated[int | None, typer.Option(min=1, help="Batch size (default: the preset's).")]


def train_calodream_energy(
    data: VoxelDataOption,
    out: RunOption,
    preset: DreamPresetOption = "cpu",
    steps: DreamStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train CaloDREAM's energy network (transfusion CFM over the 45 layer-energy variables)."""
    _train_calodream("energy", data, out, preset, steps, batch_size, seed, resume, max_minutes, threads)


def train_calodream_shape(
    data: VoxelDataOption,
    out: RunOption,
    energy_model: Annotated[
        Path | None,
        typer.Option(help="A trained energy run, embedded so that the shape model generates on its own."),
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option(help="A trained VAE run: train the latent variant (laViT) in its latent space."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="What the ViT learns: logit-fraction (the paper's) or log-energy (log E/threshold, "
            "empty voxels on a slab under it). Default: the preset's."
        ),
    ] = None,
    preset: DreamPresetOption = "cpu",
    steps: DreamStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train CaloDREAM's shape network (3-d ViT CFM over voxel fractions, or laViT with --vae)."""
    _train_calodream(
        "shape",
        data,
        out,
        preset,
        steps,
        batch_size,
        seed,
        resume,
        max_minutes,
        threads,
        target,
        energy_model=energy_model,
        vae_model=vae,
    )


def train_calodream_vae(
    data: VoxelDataOption,
    out: RunOption,
    preset: DreamPresetOption = "cpu",
    steps: DreamStepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    max_minutes: MaxMinutesOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Train the VAE whose latent space the laViT shape network works in."""
    _train_calodream("vae", data, out, preset, steps, batch_size, seed, resume, max_minutes, threads)


def train_solver(
    model: Annotated[Path, typer.Option(help="A CaloDREAM shape run directory or checkpoint.")],
    data: Annotated[Path, typer.Option(help="Voxel file whose showers give the conditions (energies).")],
    steps: Annotated[int, typer.Option(min=1, help="Solver steps = network evaluations per shower.")] = 4,
    loss: Annotated[
        str, typer.Option(help="global (end points) or local (each step) truncation error.")
    ] = "global",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write a copy here instead of updating the checkpoint.")
    ] = None,
    n_train: Annotated[int, typer.Option(min=1, help="Showers with dopri5 reference trajectories.")] = 256,
    iterations: Annotated[int, typer.Option(min=1, help="Optimiser iterations.")] = 150,
    batch_size: Annotated[int, typer.Option(min=1, help="Showers per iteration.")] = 16,
    seed: SeedOption = 0,
    threads: ThreadsOption = None,
) -> None:
    """Train a bespoke non-stationary (BNS) ODE solver for a frozen CaloDREAM shape network."""
    from caloforge.models.calodream import load_model, save_solver
    from caloforge.models.calodream import train_solver as run

    set_threads(threads)
    net = load_model(model)
    with progress_bar() as bar:
        solver = run(
            net,
            data,
            steps,
            loss=loss,
            n_train=n_train,
            iterations=iterations,
            batch_size=batch_size,
            seed=seed,
            progress=stage_progress(bar),
        )
    target = save_solver(model, solver, out)
    times = ", ".join(f"{t:.3f}" for t in solver.times().tolist())
    console.print(
        f"BNS solver ({steps} steps, {loss} loss; times {times}) is now the shape sampler of {target}"
    )
