"""``caloforge train-solver`` (the ``caloforge train calodream-*`` commands are declared in the family's
``trainings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caloforge.cliutils import (
    DeviceOption,
    SeedOption,
    ThreadsOption,
    console,
    progress_bar,
    set_threads,
    stage_progress,
)


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add ``caloforge train-solver`` to the main app."""
    app.command("train-solver")(train_solver)


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
    device: DeviceOption = "auto",
) -> None:
    """Train a bespoke non-stationary (BNS) ODE solver for a frozen CaloDREAM shape network (on
    --device: the network, its dopri5 references and the solver's training)."""
    from caloforge.devices import resolve_device
    from caloforge.models.calodream import load_model, save_solver
    from caloforge.models.calodream import train_solver as run

    on = resolve_device(device)  # a CUDA device torch does not see: one line, before anything is read
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
            device=on,
        )
    target = save_solver(model, solver, out)
    times = ", ".join(f"{t:.3f}" for t in solver.times().tolist())
    console.print(
        f"BNS solver ({steps} steps, {loss} loss; times {times}) is now the shape sampler of {target}"
    )
