"""``caloforge train epic-gan``, ``epic-fm`` and ``epic-jedi``."""

from __future__ import annotations

from collections.abc import Callable
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

_NAMES = {"gan": "EPiC-GAN", "fm": "EPiC-FM", "jedi": "EPiC-JeDi"}


def add_commands(train_app: typer.Typer, app: typer.Typer) -> None:
    """Add the three EPiC commands to the ``train`` group."""
    for variant in _NAMES:
        train_app.command(f"epic-{variant}")(_command(variant))


def _command(variant: str) -> Callable[..., None]:
    def train_epic(
        data: Annotated[
            Path, typer.Option(help="Training jet file (`caloforge simulate-jets`, or JetNet's).")
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")
        ],
        preset: Annotated[
            str, typer.Option(help="cpu (about 15 minutes on 2 cores), paper or smoke.")
        ] = "cpu",
        particles: Annotated[int, typer.Option(min=1, help="Leading particles per jet (30 or 150).")] = 30,
        conditional: Annotated[
            bool | None,
            typer.Option(help="Condition on jet pT, mass and multiplicity (default: FM, JeDi yes; GAN no)."),
        ] = None,
        steps: Annotated[
            int | None, typer.Option(min=1, help="Training steps (default: the preset's).")
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option(min=1, help="Batch size (default: the preset's).")
        ] = None,
        max_jets: Annotated[int | None, typer.Option(min=20, help="Train on the first N jets only.")] = None,
        seed: SeedOption = 0,
        resume: ResumeOption = False,
        max_minutes: MaxMinutesOption = None,
        threads: ThreadsOption = None,
    ) -> None:
        from caloforge.models.epic import EPiCConfig, train

        set_threads(threads)
        overrides = given(steps=steps, batch_size=batch_size, conditional=conditional)
        config = EPiCConfig.for_variant(variant, preset, seed=seed, n_particles=particles, **overrides)
        with progress_bar() as bar:
            result = train(
                config, data, out, max_jets=max_jets, resume=resume, progress=stage_progress(bar),
                max_minutes=max_minutes,
            )  # fmt: skip
        console.print(f"{_NAMES[variant]}: {result.parameters} parameters; last losses {result.losses}")
        report_run(result)

    train_epic.__doc__ = f"Train {_NAMES[variant]} (EPiC layers) on jets as particle clouds."
    return train_epic
