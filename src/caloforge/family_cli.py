"""Commands built from what the families declare: ``caloforge train <command>`` from each
:class:`~caloforge.models.protocol.Training` (one command body for every family), and the
family options of ``caloforge calibrate`` from their :class:`~caloforge.models.protocol.Option` s.

Every training command takes ``--data``, ``--out``, ``--preset``, the family's own options
(typed, with their help text), ``--seed``, ``--resume``, ``--max-minutes``, ``--threads`` and
``--device``; a training that runs on GPUs also takes ``--precision``, one that runs on several
processes ``--nproc``. The run goes through the
family's train function and so through the shared loop of :mod:`caloforge.models._training`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from caloforge.cliutils import (
    DeviceOption,
    MaxMinutesOption,
    NprocOption,
    PrecisionOption,
    ResumeOption,
    SeedOption,
    ThreadsOption,
    console,
    progress_bar,
    report_run,
    set_threads,
    stage_progress,
)
from caloforge.cliutils import widths as parse_widths
from caloforge.models.protocol import Family, Option, Training

__all__ = ["PARSERS", "add_training_commands", "command_with_options", "option_parameter", "training_command"]

#: Text parsers an :class:`Option` can name (``parse=``): ``(text, flag) -> value``.
PARSERS: dict[str, Callable[[str, str], Any]] = {"widths": parse_widths}


def option_parameter(option: Option) -> inspect.Parameter:
    """The typer parameter of a family option: ``--name`` of its type (None: not given)."""
    kind: Any = str if option.parse else option.type
    if kind in (int, float):
        info = typer.Option(option.flag, help=option.help, min=option.min)
    elif kind is bool:  # --name/--no-name
        info = typer.Option(help=option.help)
    else:
        info = typer.Option(option.flag, help=option.help)
    annotation = Annotated[kind | None, info]  # type: ignore[valid-type]
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=annotation
    )


def command_with_options(
    body: Callable[..., None],
    base: dict[str, Any],
    defaults: dict[str, Any],
    declared: dict[str, tuple[Option, ...]],
) -> Callable[..., None]:
    """A typer command that calls ``body(**values)``: the ``base`` parameters (name → annotated
    type; ``defaults`` for the optional ones), then the options each family declares
    (``declared``: family description → options; an option two families share is one flag, its
    help naming both)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(n, keyword, default=defaults.get(n, inspect.Parameter.empty), annotation=a)
              for n, a in base.items()]  # fmt: skip
    merged: dict[str, tuple[Option, list[str]]] = {}
    for description, options in declared.items():
        for option in options:
            first, helps = merged.setdefault(option.name, (option, []))
            helps.append(f"{description}: {option.help}")
    for first, helps in merged.values():
        params.append(option_parameter(replace(first, help=" ".join(helps), default=None)))

    def command(**values: Any) -> None:
        body(**values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = body.__doc__
    command.__name__ = body.__name__.lstrip("_")
    return command


def _parameters(training: Training) -> list[inspect.Parameter]:
    keyword = inspect.Parameter.KEYWORD_ONLY
    data = Annotated[Path, typer.Option(help=training.data_help)]
    out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, train_log.jsonl).")]
    preset = Annotated[str, typer.Option(help=training.preset_help)]
    params = [
        inspect.Parameter("data", keyword, annotation=data),
        inspect.Parameter("out", keyword, annotation=out),
        inspect.Parameter("preset", keyword, default="cpu", annotation=preset),
        *(option_parameter(o) for o in training.options),
        inspect.Parameter("seed", keyword, default=0, annotation=SeedOption),
        inspect.Parameter("resume", keyword, default=False, annotation=ResumeOption),
        inspect.Parameter("max_minutes", keyword, default=None, annotation=MaxMinutesOption),
        inspect.Parameter("threads", keyword, default=None, annotation=ThreadsOption),
        inspect.Parameter("device", keyword, default="auto", annotation=DeviceOption),
    ]
    if training.gpu:
        params.append(inspect.Parameter("precision", keyword, default="auto", annotation=PrecisionOption))
    if training.distributed:
        params.append(inspect.Parameter("nproc", keyword, default=1, annotation=NprocOption))
    return params


def training_command(family: Family, training: Training) -> Callable[..., None]:
    """The typer command of ``training`` (its signature built from the declaration)."""

    def command(**values: Any) -> None:
        run_training_command(training, values)

    params = _parameters(training)
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = training.summary
    command.__name__ = f"train_{training.command.replace('-', '_')}"
    return command


def add_training_commands(train_app: typer.Typer, family: Family) -> None:
    """Add one ``caloforge train <command>`` per training ``family`` declares."""
    for training in family.trainings:
        train_app.command(training.command)(training_command(family, training))


def run_training_command(training: Training, values: dict[str, Any]) -> None:
    """The body of every ``caloforge train`` command: config from the preset and the options,
    then the run (on ``--nproc`` processes where the training allows), then its report."""
    from caloforge.devices import processes_device
    from caloforge.models._distributed import run_in_processes

    values = dict(values)
    data, out, preset, seed = values.pop("data"), values.pop("out"), values.pop("preset"), values.pop("seed")
    resume, max_minutes = values.pop("resume"), values.pop("max_minutes")
    threads, nproc = values.pop("threads"), values.pop("nproc", 1)
    spec, precision = values.pop("device"), values.pop("precision", None)
    device = processes_device(spec, training.device(spec), nproc if training.distributed else 1)
    for option in training.options:
        if option.parse and values.get(option.name) is not None:
            values[option.name] = PARSERS[option.parse](values[option.name], option.flag)
    config = training.make_config(preset, seed, values)
    kwargs = training.train_options(values)
    if training.gpu:
        kwargs |= {"device": device, "precision": precision}
    args = (training, config, data, out, resume, max_minutes, kwargs)
    if training.distributed:
        result = run_in_processes(_train_one, nproc, *args, threads=threads, device=device)
    else:
        set_threads(threads)
        result = _train_one(*args)
    if result is None:  # another rank of a data-parallel run: rank 0 reports
        return
    if result.parameters:
        n = sum(result.parameters.values())
        console.print(f"{training.title}: {n:,} parameters; last losses {result.losses}")
    report_run(result)


def _train_one(
    training: Training,
    config: Any,
    data: Path,
    out: Path,
    resume: bool,
    max_minutes: float | None,
    kwargs: dict[str, Any],
) -> Any:
    """One training process (of one or several; module level, so spawned processes can run
    it; ``training`` travels pickled, so a family registered at run time trains there too):
    rank 0 shows the progress."""
    from caloforge.models._distributed import world

    if not world().main:
        return training.run(config, data, out, resume=resume, max_minutes=max_minutes, **kwargs)
    with progress_bar() as bar:
        return training.run(
            config, data, out, resume=resume, progress=stage_progress(bar), max_minutes=max_minutes, **kwargs
        )
