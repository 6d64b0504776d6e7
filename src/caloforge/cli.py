"""The ``caloforge`` command line: a thin typer layer over the library functions."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from caloforge import __version__
from caloforge.cliutils import (
    DeviceOption,
    EngineOption,
    SchedulerOption,
    ThreadsOption,
    console,
    err_console,
    progress_bar,
    seed_option,
    set_threads,
    stage_progress,
)
from caloforge.detector import (
    CellGrid,
    DetectorError,
    available_detectors,
    get_detector,
    layer_depth_table,
)
from caloforge.evaluate import EvaluationError
from caloforge.io import ShowerFileError, open_showers
from caloforge.observables import feature_names, observables_from_file
from caloforge.simulate.fastsim import DEFAULT_MAX_ANGLE_DEG

app = typer.Typer(
    name="caloforge",
    help="Fast calorimeter shower simulation with generative models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": os.environ.get("CALOFORGE_DEBUG", "") not in ("", "0")}

#: Exceptions that are the user's input being wrong: reported as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ShowerFileError,
    DetectorError,
    EvaluationError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    FileExistsError,
    ImportError,  # a missing optional extra: the message names what to install
)


def _version(value: bool) -> None:
    if value:
        console.print(f"caloforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """caloforge: simulate, train, sample and evaluate calorimeter showers."""
    _state["debug"] = _state["debug"] or debug


def _file_table(path: Path, detector: str | None) -> Table:
    """What ``caloforge info`` shows of a file: the rows of its kind (:mod:`caloforge.kinds`;
    a file no kind recognises gets the shower reader's one-line reason)."""
    from caloforge.kinds import file_kind

    rows = file_kind(path).info_rows(path, detector)
    table = Table(title=str(path), show_header=False, title_justify="left")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _is_model(path: Path) -> bool:
    """Whether an ``info`` argument names a model (shipped name, run directory, ``.pt`` file)."""
    from caloforge.models.registry import shipped_models

    name = str(path)
    return name == "default" or name in shipped_models() or path.is_dir() or path.suffix == ".pt"


def _model_table(model: Path) -> Table:
    """What ``caloforge info`` shows of a model: family, detector, output, conditions, capabilities."""
    from caloforge.kinds import get_kind
    from caloforge.models.registry import family_of

    family, path, state = family_of(model)
    generator = family.load(path, state)
    caps = family.capabilities
    table = Table(title=f"{model} ({path.name})", show_header=False, title_justify="left")
    table.add_row("family", f"{family.name} ({family.description}); checkpoint format {state['format']}")
    table.add_row("generates", get_kind(generator.output).describe_generator(generator))
    table.add_row("generator label", generator.label)
    for cond in generator.conditions:
        table.add_row(
            f"condition {cond.name}", f"{cond.low:.4g} – {cond.high:.4g} {cond.unit} (trained range)"
        )
    table.add_row("training", "complete" if generator.complete else "stopped early (resume to finish)")
    for key, value in generator.describe().items():
        table.add_row(key, str(value))
    supported = [
        name
        for name, ok in (("calibrate", caps.calibrate), ("workers", caps.workers), ("gpu", caps.gpu))
        if ok
    ]
    if caps.export:
        supported.append(f"export ({', '.join(caps.export)})")
    table.add_row("supports", ", ".join(supported) or "generation only")
    table.add_row("precisions", ", ".join(caps.precisions))
    for command in ("generate", "calibrate", "train"):
        spelled = (
            f"--option {o.name}=…" if command == "generate" else o.flag for o in family.options(command)
        )
        names = dict.fromkeys(spelled)  # trainings of one family share options: each once
        if names:
            table.add_row(f"{command} options", ", ".join(names))
    return table


@app.command()
def info(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Shower files (HDF5) or models (a shipped name, run directory or .pt) to summarise."
        ),
    ] = None,
    detector: Annotated[
        str | None,
        typer.Option(help="Detector name or .toml/.yaml file, overriding the files' own."),
    ] = None,
) -> None:
    """Version, built-in detectors and model families, and a summary of shower files or models."""
    console.print(f"caloforge {__version__}")
    table = Table(title="detectors", title_justify="left")
    for col in ("name", "layers", "readout", "channels", "threshold"):
        table.add_column(col)
    for name in available_detectors():
        det = get_detector(name)
        ro = det.readout
        readout = (
            f"{ro.n_cells}×{ro.n_cells} cells of {ro.cell_size_mm} mm"
            if isinstance(ro, CellGrid)
            else f"{ro.n_alpha} angular × {ro.n_radial} radial voxels"
        )
        table.add_row(name, str(det.n_layers), readout, f"{det.n_channels:,}", f"{det.threshold_mev} MeV")
    console.print(table)
    from caloforge.models.registry import families

    fams = Table(title="model families", title_justify="left")
    for col in ("family", "checkpoint formats", "shipped models"):
        fams.add_column(col)
    for family in families():
        fams.add_row(
            f"{family.name} ({family.description})", ", ".join(family.formats), ", ".join(family.shipped)
        )
    console.print(fams)
    for path in files or []:
        console.print(_model_table(path) if _is_model(path) else _file_table(path, detector))


@app.command("detector")
def detector_cmd(
    name: Annotated[str, typer.Argument(help="Built-in detector name or a .toml/.yaml file.")],
    save: Annotated[
        Path | None,
        typer.Option(help="Write the description to this YAML file (a template for your own)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --save file.")] = False,
) -> None:
    """Show a detector's geometry layer by layer (and optionally save it as YAML)."""
    from caloforge.safety import check_outputs, refuse_existing

    if save is not None:
        if save.suffix.lower() not in (".yaml", ".yml"):
            raise ValueError(f"--save '{save}' must end in .yaml or .yml (it is written as YAML)")
        check_outputs({"--save": save}, {"NAME": name})
        refuse_existing(save, overwrite)
    det = get_detector(name)
    console.print(f"[bold]{det.name}[/bold]: {det.description}")
    if det.source:
        console.print(f"source: {det.source}")
    table = Table(title="layers (depth in mm)", title_justify="left")
    for col in ("layer", "absorber front", "active front", "active back"):
        table.add_column(col, justify="right")
    for row in layer_depth_table(det):
        table.add_row(str(row[0]), *(f"{v:.3f}" for v in row[1:]))
    console.print(table)
    console.print(
        f"absorber {det.absorber_material} total {sum(det.absorber_thicknesses_mm):.2f} mm; "
        f"active {det.active_material} {det.active_thickness_mm} mm; threshold {det.threshold_mev} MeV"
    )
    if save is not None:
        import yaml

        from caloforge.io import atomic_write_text

        atomic_write_text(save, yaml.safe_dump(det.to_dict(), sort_keys=False))
        console.print(f"wrote {save}")


@app.command()
def observables(
    file: Annotated[Path, typer.Argument(help="Shower file (HDF5, points or voxels).")],
    detector: Annotated[
        str | None, typer.Option(help="Detector name or file, overriding the file's own.")
    ] = None,
    max_showers: Annotated[int | None, typer.Option(min=1, help="Use only the first N showers.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Showers read into memory at once.")] = 2000,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --json file.")] = False,
) -> None:
    """Summary of the SPEC 4 observables of a shower file (projected on cells, thresholded)."""
    from caloforge.safety import check_outputs, output_lock, refuse_existing

    if json_out is not None:
        check_outputs({"--json": json_out}, {"shower file": file, "--detector": detector})
        refuse_existing(json_out, overwrite)
    with output_lock(json_out):  # a second run writing the same --json is refused
        if json_out is not None:
            refuse_existing(json_out, overwrite)  # another run may have written it meanwhile
        _observables(file, detector, max_showers, chunk_size, json_out)


def _observables(
    file: Path, detector: str | None, max_showers: int | None, chunk_size: int, json_out: Path | None
) -> None:
    with open_showers(file, detector) as reader:
        det = reader.detector
        total = min(len(reader), max_showers or len(reader))
    if total == 0:
        raise ShowerFileError(f"'{file}' holds no showers")
    with progress_bar() as bar:
        task = bar.add_task("observables", total=total, rate="")
        obs = observables_from_file(
            file,
            det,
            chunk_size=chunk_size,
            max_showers=max_showers,
            progress=lambda k: bar.advance(task, k),
        )
    summary = obs.summary()
    table = Table(title=f"{file} — {len(obs):,} showers on {det.name}", title_justify="left")
    for col in ("observable", "mean", "std"):
        table.add_column(col, justify="right")
    for name, (mean, std) in summary.items():
        table.add_row(name, f"{mean:.4g}", f"{std:.4g}")
    hl = obs.high_level()
    for i, name in enumerate(feature_names(det)[:-5]):
        table.add_row(name + " [MeV]", f"{hl[:, i].mean():.4g}", f"{hl[:, i].std():.4g}")
    console.print(table)
    layer_max = int(np.argmax(obs.e_layer.mean(axis=0)))
    console.print(f"longitudinal profile peaks in layer {layer_max} (0-based)")
    if json_out is not None:
        from caloforge.io import atomic_write_text

        payload = {
            "file": str(file),
            "detector": det.name,
            "n_showers": len(obs),
            "summary": {k: {"mean": m, "std": s} for k, (m, s) in summary.items()},
            "features": {
                name: {"mean": float(hl[:, i].mean()), "std": float(hl[:, i].std())}
                for i, name in enumerate(feature_names(det))
            },
            "mean_layer_profile_mev": obs.e_layer.mean(axis=0).tolist(),
        }
        atomic_write_text(json_out, json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")


def _voxel_outs(values: list[str] | None) -> list[str | tuple[str, str]] | None:
    """``--voxel-out`` values: ``PATH``, or ``READOUT=PATH`` where READOUT names a built-in
    detector or a detector file (a path that merely contains '=' stays a path).

    >>> _voxel_outs(["a.h5", "calochallenge-ds3=b.h5", "odd=name.h5"])
    ['a.h5', ('b.h5', 'calochallenge-ds3'), 'odd=name.h5']
    """
    if not values:
        return None
    out: list[str | tuple[str, str]] = []
    for value in values:
        readout, sep, path = value.partition("=")
        known = readout in available_detectors() or (
            Path(readout).suffix.lower() in (".toml", ".yaml", ".yml") and Path(readout).is_file()
        )
        out.append((path, readout) if sep and known and path else value)
    return out


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output point-cloud file (HDF5).")],
    n: Annotated[int, typer.Option("-n", "--n-showers", min=1, help="Number of showers.")] = 100,
    detector: Annotated[
        str, typer.Option(help="ild-ecal, calochallenge-ds2 or a .toml/.yaml file.")
    ] = "ild-ecal",
    particle: Annotated[str, typer.Option(help="gamma, e- or e+.")] = "gamma",
    energy: Annotated[
        str | None, typer.Option(help="Incident energy in GeV: 50 (fixed) or 10:90 (uniform). Default 10:90.")
    ] = None,
    energy_log: Annotated[
        str | None, typer.Option("--energy-log", help="Log-uniform incident energy range LO:HI in GeV.")
    ] = None,
    seed: Annotated[int, seed_option("Seed: the same seed gives the same file.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one Geant4 each).")] = 1,
    voxel_out: Annotated[
        list[str] | None,
        typer.Option(
            help="Also write CaloChallenge voxels here (polar-readout detectors); READOUT=PATH for "
            "another readout of the same stack (calochallenge-ds3=ds3.h5 beside a ds2 run). Repeatable."
        ),
    ] = None,
    physics: Annotated[
        str, typer.Option(help="datafree (no Geant4 data sets needed) or standard (FTFP_BERT, needs data).")
    ] = "datafree",
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted file with the same settings.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    engine: EngineOption = "local",
    scheduler: SchedulerOption = None,
    fast_sim: Annotated[
        str | None,
        typer.Option(
            "--fast-sim",
            help="Fast simulation inside the run: this model (shipped name or checkpoint) deposits "
            "the showers of the tracks the trigger takes.",
        ),
    ] = None,
    trigger_particles: Annotated[
        str | None, typer.Option(help="Fast-sim trigger: comma-separated particles (default: the model's).")
    ] = None,
    trigger_min_energy: Annotated[
        float | None,
        typer.Option(help="Fast-sim trigger: minimum energy in GeV (default: the model's lowest)."),
    ] = None,
    max_angle: Annotated[
        float,
        typer.Option(help="Fast sim: warn when tracks enter more than this many degrees off the normal."),
    ] = DEFAULT_MAX_ANGLE_DEG,
    pair_separation: Annotated[
        float | None,
        typer.Option(help="Two particles per event, this many mm apart (along x) at the front face."),
    ] = None,
    gun_offset: Annotated[
        str | None, typer.Option(help="X,Y in mm: where the gun hits the front face (default 0,0).")
    ] = None,
    gun_angle: Annotated[
        float, typer.Option(help="Gun angle from the detector normal, degrees (in the x-z plane).")
    ] = 0.0,
    device: Annotated[
        str,
        typer.Option(
            help="Fast sim: device of the model's networks, auto (a CUDA device where the model "
            "generates on one, else the CPU), cpu, cuda or cuda:N."
        ),
    ] = "auto",
) -> None:
    """Simulate showers with Geant4 and write them as clustered point clouds (and voxels)."""
    from caloforge.pieces import pieces_dir
    from caloforge.simulate.driver import SimulationConfig, energy_spectrum
    from caloforge.simulate.driver import simulate as run_simulation
    from caloforge.simulate.fastsim import off_normal_warning

    spec = energy_spectrum(energy, energy_log)
    det = get_detector(detector)
    config = SimulationConfig(
        detector=detector if detector in available_detectors() else det,
        particle=particle,
        energy=spec,
        n_showers=n,
        seed=seed,
        physics=physics,
        gun=_gun(gun_offset, gun_angle, pair_separation),
        fast_sim=_fast_sim_spec(
            fast_sim,
            trigger_particles,
            trigger_min_energy,
            max_angle,
            device,
            workers > 1 or engine != "local",
        ),
    )
    what = "events of two" if pair_separation is not None else ""
    mode = f", fast simulation with '{fast_sim}'" if fast_sim else ""
    console.print(
        f"simulating {n} {what + ' ' if what else ''}{particle} showers, {spec}, in {det.name} "
        f"(seed {seed}, {workers} worker(s){mode})"
    )
    with progress_bar() as bar:
        task = bar.add_task("geant4", total=n, rate="")
        start = {"t": None, "done": None}

        def advance(done: int, total: int) -> None:
            now = time.perf_counter()
            if start["t"] is None:
                start["t"], start["done"] = now, done
            elif now > start["t"]:
                bar.update(task, rate=f"{(done - start['done']) / (now - start['t']):.2f} showers/s")
            bar.update(task, completed=done)

        result = run_simulation(
            config,
            out,
            voxel_out=_voxel_outs(voxel_out),
            workers=workers,
            resume=resume,
            overwrite=overwrite,
            progress=advance,
            engine=engine,
            scheduler=scheduler,
        )
    if result.interrupted:
        pieces = pieces_dir(out)
        kept = f" (saved in '{pieces}')" if pieces.exists() else ""
        err_console.print(
            f"interrupted: {result.n_done} of {n} showers done{kept}; '{out}' is unchanged. "
            "Rerun the same command with --resume to finish."
        )
        _state["interrupt_said"] = True
        raise typer.Exit(130)
    if result.n_new == 0:
        console.print(f"{out} holds {result.n_done} showers: nothing left to simulate")
        return
    if fast_sim:
        console.print(
            f"fast simulation: {result.fast_showers} model showers, "
            f"{result.model_seconds / result.n_new * 1000:.1f} ms per event in the model (per worker)"
        )
        warning = off_normal_warning(result.off_normal, result.fast_showers, max_angle)
        if warning:
            err_console.print(f"warning: {warning}")
    per = result.wall_seconds / result.n_new
    console.print(
        f"wrote {result.n_new} showers ({result.n_done} in total) to {out}"
        + "".join(f" and {p}" for p in result.voxel_paths)
        + f" in {result.wall_seconds:.1f} s: {per * 1000:.0f} ms/shower wall; per worker "
        f"{result.geant4_seconds / result.n_new * 1000:.0f} ms in Geant4, "
        f"{result.ours_seconds / result.n_new * 1000:.0f} ms clustering/writing; "
        f"{result.steps / result.n_new:.0f} steps and {result.points / result.n_new:.0f} points per shower"
    )


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Point-cloud shower file (caloforge simulate).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output image (voxel) file.")],
    detector: Annotated[
        str, typer.Option(help="Readout to project onto: ild-ecal-30 (30 × 30 × 30 cell images).")
    ] = "ild-ecal-30",
    max_outside: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Refuse a shower with more than this share outside the readout."),
    ] = 0.5,
    chunk_size: Annotated[int, typer.Option(min=1, help="Showers per chunk read and written.")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Project point clouds onto a readout (cell images for BIB-AE, L2LFlows); reports the energy outside."""
    from caloforge.convert import convert_showers

    with progress_bar() as bar:
        task = bar.add_task("convert", total=None, rate="")
        result = convert_showers(
            source,
            out,
            detector,
            chunk_size=chunk_size,
            max_outside=max_outside,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"wrote {result.n_showers:,} showers on {result.detector} to {out}; energy outside the readout: "
        f"{result.outside_fraction_mean:.2%} on average, {result.outside_fraction_max:.2%} at most "
        f"({result.outside_mev_total / 1000:.3g} GeV in all)",
        markup=False,
    )


@app.command("simulate-jets")
def simulate_jets(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output jet file (HDF5, JetNet layout).")],
    n: Annotated[int, typer.Option("-n", "--n-jets", min=1, help="Number of jets.")] = 1000,
    jet_type: Annotated[
        str, typer.Option("--type", help="t (top quarks, from tt̄), g (gluons) or q (light quarks, QCD 2→2).")
    ] = "t",
    particles: Annotated[
        int, typer.Option(min=1, help="Leading constituents stored per jet (150 serves 30 too).")
    ] = 150,
    seed: Annotated[int, seed_option("Seed: the same seed gives the same file.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Pythia processes (same file for any number).")] = 1,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its finished pieces.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Simulate reference jets: Pythia 8 at 13 TeV (pT-hat 950-1050 GeV), anti-kT R = 0.8 with FastJet."""
    from caloforge.jets.pythia import JetSimulationConfig
    from caloforge.jets.pythia import simulate_jets as run

    config = JetSimulationConfig(jet_type=jet_type, n_particles=particles)
    with progress_bar() as bar:
        task = bar.add_task("simulate jets", total=n, rate="")
        result = run(
            out, n, config, seed=seed, workers=workers, resume=resume, overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done),
        )  # fmt: skip
    console.print(
        f"wrote {result['n_jets']} {jet_type} jets to {out} in {result['seconds']:.1f} s "
        f"({result['cpu_ms_per_jet']:.1f} ms of CPU per jet)"
    )


def _gun(offset: str | None, angle: float, separation: float | None) -> Any:
    from caloforge.simulate.gun import Gun

    xy = (0.0, 0.0)
    if offset is not None:
        try:
            x, y = (float(v) for v in offset.split(","))
        except ValueError:
            raise typer.BadParameter(
                f"'{offset}' is not X,Y in mm (e.g. 10,-5)", param_hint="--gun-offset"
            ) from None
        xy = (x, y)
    try:
        return Gun(xy, angle, separation)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _fast_sim_spec(
    model: str | None,
    particles: str | None,
    min_energy: float | None,
    max_angle: float,
    device: str,
    spread: bool,
) -> Any:
    from caloforge.devices import resolve_device
    from caloforge.generation import generation_device
    from caloforge.models.registry import load_generator
    from caloforge.simulate.driver import FastSimSpec

    if model is None:
        if particles is not None or min_energy is not None:
            raise typer.BadParameter("the trigger options need --fast-sim MODEL", param_hint="--trigger-*")
        resolve_device(device, cpu_only="Geant4")  # without a fast simulation no network runs
        return None
    names = tuple(p.strip() for p in particles.split(",") if p.strip()) if particles is not None else None
    on = generation_device(load_generator(model), device, spread)
    try:
        return FastSimSpec(model, names, min_energy, max_angle, device=on)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def evaluate(
    reference: Annotated[Path, typer.Argument(help="Reference shower or jet file (Geant4, Pythia 8).")],
    candidates: Annotated[list[Path], typer.Argument(help="One or more candidate shower (or jet) files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for report.md, metrics.json, plots/.")],
    draws: Annotated[
        int | None,
        typer.Option(
            min=1, help="W1 draws or batches (mean ± std over them; default 10, jetnet protocol 5)."
        ),
    ] = None,
    draw_size: Annotated[
        int | None, typer.Option(min=1, help="Showers per W1 draw (default: 50k or what the data allow).")
    ] = None,
    splits: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10,
            help="Classifier splits (caloforge: folds, default 10; calochallenge: independent runs, "
            "default 3; jets: 5).",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Classifier training epochs (caloforge 10, calochallenge 50).")
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="Whose definitions the published metrics follow: caloforge (default; floors, several "
            "splits), calochallenge (the CaloChallenge's evaluate.py, voxel showers) or jetnet (jetnet "
            "0.2.5, jets). docs/evaluation.md compares them.",
        ),
    ] = "caloforge",
    jet_type: Annotated[
        str | None,
        typer.Option(
            help="Jet files only: the type (t, g, q, w, z) of files that do not say theirs (no "
            "jet_type attribute, no type in the name).",
        ),
    ] = None,
    low_level: Annotated[
        bool,
        typer.Option(
            help="Also train a low-level classifier: per voxel (voxel data) or on the 13 x 13 cells "
            "around the axis per layer (points and cell images)."
        ),
    ] = False,
    plots: Annotated[bool, typer.Option(help="Write the figures (PNG and PDF).")] = True,
    max_showers: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N showers of each file.")
    ] = None,
    seed: Annotated[int, seed_option("Seed of the draws and the classifier.")] = 0,
    engine: EngineOption = "local",
    workers: Annotated[
        int, typer.Option(min=1, help="Processes of the local Dask cluster (--engine dask).")
    ] = 2,
    scheduler: SchedulerOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a report already in --out (refused otherwise).")
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Compare candidates with a reference: W1 and its floor, classifier AUC, CaloChallenge metrics, plots.

    Jet files get the JetNet metrics instead (W1m, W1p, W1efp, FPD, KPD, KL, classifier AUC).
    """
    from caloforge.devices import resolve_device
    from caloforge.evaluate import EvaluationConfig
    from caloforge.evaluate import evaluate as run_evaluation
    from caloforge.evaluate.report import print_summary

    config = EvaluationConfig(
        n_draws=draws,
        draw_size=draw_size,
        classifier_splits=splits,
        classifier_epochs=epochs,
        low_level=low_level,
        plots=plots,
        max_showers=max_showers,
        seed=seed,
        engine=engine,
        workers=workers,
        scheduler=scheduler,
        device=resolve_device(device),
        protocol=protocol,
        jet_type=jet_type,
    )
    with progress_bar() as bar:
        progress = stage_progress(bar)
        result = run_evaluation(reference, candidates, out, config, progress=progress, overwrite=overwrite)
    print_summary(result, out, console)


train_app = typer.Typer(help="Train a generative model.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _add_family_commands() -> None:
    """Every family's own commands (``caloforge train <family>``, …)."""
    from caloforge.family_cli import add_training_commands
    from caloforge.models.registry import families

    for family in families():
        add_training_commands(train_app, family)
        if family.commands is not None:
            family.part("commands")(train_app, app)


_add_family_commands()


def _calibrate(
    model: str,
    data: Path,
    out: Path | None,
    seed: int,
    threads: int | None,
    device: str,
    overwrite: bool,
    **options: Any,
) -> None:
    """Refit a model's calibration: CaloClouds II's number of points (SPEC 6.1) for its (or a new)
    sampler, or a CaloDREAM log-energy model's hit energies (per layer, ring and energy); the
    options are the families' own (caloforge info MODEL lists a model's); the model's networks
    run on --device."""
    from caloforge.calibrate import calibrate_model
    from caloforge.devices import resolve_device

    resolve_device(device)  # a CUDA device torch does not see: one line, before anything is read
    set_threads(threads)
    with progress_bar() as bar:
        line = calibrate_model(
            model,
            data,
            out,
            overwrite=overwrite,
            seed=seed,
            progress=stage_progress(bar),
            options=options,
            device=device,
        )
    console.print(line)


def _add_calibrate_command() -> None:
    """``caloforge calibrate``, with every family's calibration options."""
    from caloforge.family_cli import command_with_options
    from caloforge.models.registry import families

    base = {
        "model": Annotated[str, typer.Option(help="A run directory or checkpoint ('default' needs --out).")],
        "data": Annotated[
            Path,
            typer.Option(help="Geant4 training file to calibrate against (points; voxels for CaloDREAM)."),
        ],
        "out": Annotated[
            Path | None, typer.Option("--out", "-o", help="Write here instead of updating the checkpoint.")
        ],
        "seed": Annotated[int, seed_option("Seed of the energies and noise used.")],
        "threads": ThreadsOption,
        "device": DeviceOption,
        "overwrite": Annotated[bool, typer.Option(help="Replace an existing --out file.")],
    }
    defaults = {"out": None, "seed": 0, "threads": None, "device": "auto", "overwrite": False}
    declared = {f.description: f.calibrate_options for f in families() if f.calibrate_options}
    app.command("calibrate")(command_with_options(_calibrate, base, defaults, declared))


_add_calibrate_command()


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output point-cloud file (HDF5).")],
    n: Annotated[
        int | None,
        typer.Option(
            "-n", "--n-showers", min=1, help="Number of showers (default 100; with --energies-file: all)."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="'default' (shipped), a run directory or a checkpoint.")
    ] = "default",
    energy: Annotated[
        str | None, typer.Option(help="Incident energy in GeV: 50 (fixed) or 10:90 (uniform). Default 10:90.")
    ] = None,
    energy_log: Annotated[
        str | None, typer.Option("--energy-log", help="Log-uniform incident energy range LO:HI in GeV.")
    ] = None,
    energies_file: Annotated[
        Path | None, typer.Option(help="Take the incident energies of this shower file (one shower each).")
    ] = None,
    conditions_file: Annotated[
        Path | None,
        typer.Option(
            help="Jet models: take the jet features (pT, eta, mass, multiplicity) of this jet file "
            "(default: drawn from the training jets)."
        ),
    ] = None,
    seed: Annotated[int, seed_option("Seed: the same seed gives the same showers.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Showers generated at once.")] = 64,
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Sampler steps (default: the model's; 13 Heun steps = 25 evaluations)."),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="heun or euler (diffusion models), consistency (distilled); euler, midpoint, rk4 or bns "
            "(CaloDREAM); default: the model's."
        ),
    ] = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    allow_extrapolation: Annotated[
        bool, typer.Option(help="Allow energies outside the model's training range (with a warning).")
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="PointWise Net precision: auto (bfloat16 where the CPU computes it natively, "
            "e.g. AMX; else float32), float32 or bfloat16."
        ),
    ] = "auto",
    compression: Annotated[
        str, typer.Option(help="File compression: gzip (level 1), lzf (faster, h5py filter) or none.")
    ] = "gzip",
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="CaloClouds II: single-threaded processes sharing the batches (same showers)."
        ),
    ] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    engine: EngineOption = "local",
    scheduler: SchedulerOption = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted --engine dask run from its finished pieces.")
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="A family's own generation option KEY=VALUE, repeatable (e.g. CaloINN temperature=0.9, "
            "CaloClouds points_per_call=20000); caloforge info MODEL lists a model's.",
        ),
    ] = None,
) -> None:
    """Generate showers (or jets) with a trained model into the file kind its family writes."""
    from caloforge.generation import generate_file, generation_device, run_conditions
    from caloforge.kinds import get_kind
    from caloforge.models.registry import load_generator
    from caloforge.safety import check_outputs

    check_outputs({"--out": out}, {"--energies-file": energies_file, "--conditions-file": conditions_file})
    set_threads(threads)  # after the refusals: a refused run prints its one line and nothing else
    generator = load_generator(model)  # loaded once: generation takes the same one
    on = generation_device(generator, device, workers > 1 or engine != "local")
    options = _generation_options(option or [])
    energies = run_conditions(
        generator,
        n,
        seed,
        energy=energy,
        energy_log=energy_log,
        energies_file=energies_file,
        conditions_file=conditions_file,
        options=options,
    )
    total = len(next(iter(energies.values()))) if isinstance(energies, dict) else len(energies)
    with progress_bar() as bar:
        task = bar.add_task("generate", total=total, rate="")
        result = generate_file(
            model,
            energies,
            out,
            seed=seed,
            batch_size=batch_size,
            n_steps=steps,
            sampler=sampler,
            allow_extrapolation=allow_extrapolation,
            precision=precision,
            compression=compression,
            workers=workers,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done),
            engine=engine,
            scheduler=scheduler,
            resume=resume,
            options=options,
            device=on,
        )
    kind = get_kind(generator.output)
    console.print(
        f"wrote {result.n_showers} {kind.noun} to {out} in {result.seconds:.1f} s "
        f"({result.ms_per_shower:.1f} ms/{kind.noun_one})"
    )


def _generation_options(entries: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` entries as a mapping; values that read as numbers or true/false become them."""
    out: dict[str, Any] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"'{entry}' is not KEY=VALUE", param_hint="--option")
        value: Any = raw.strip()
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(value)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (.onnx or TorchScript .pt).")],
    model: Annotated[
        str, typer.Option(help="'default', a shipped model name, a run directory or checkpoint.")
    ] = ("default"),
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    max_points: Annotated[
        int | None,
        typer.Option(min=1, help="Points per shower in the graph (default: the most it can make)."),
    ] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler (default: the model's).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampler steps (default: the model's).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Export a model as one self-contained ONNX / TorchScript graph for C++ frameworks (docs/export.md)."""
    from caloforge.export import export_model
    from caloforge.models.registry import resolve_model
    from caloforge.safety import check_outputs, output_lock, refuse_existing

    check_outputs({"--out": out}, {"--model": resolve_model(model)})
    refuse_existing(out, overwrite)
    with output_lock(out):
        path = export_model(model, out, format, max_points=max_points, sampler=sampler, n_steps=steps)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); contract in docs/export.md")


def _numbers(text: str, option: str, kind: type = float) -> tuple:
    """``10,50,90`` → positive finite numbers (whole numbers with ``kind=int``) of ``option``."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        example = "1,64" if kind is int else "10,50,90"
        raise ValueError(
            f"{option} expects positive {'whole ' if kind is int else ''}numbers separated by commas, "
            f"e.g. {example}; got '{text}'"
        )
    return values


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for bench.md and bench.json.")] = Path(
        "bench-results"
    ),
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="LABEL=PATH (or a shipped name) of any family's model (repeat); default: the shipped ones."
        ),
    ] = None,
    onnx: Annotated[
        bool, typer.Option(help="Also time the ONNX Runtime export of the (last) consistency model.")
    ] = True,
    energies: Annotated[str, typer.Option(help="Incident energies in GeV.")] = "10,50,90",
    threads: Annotated[str | None, typer.Option(help="Thread counts (default: 1 and all cores).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Model batch sizes.")] = "1,64",
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per row (mean ± std).")] = 3,
    quick: Annotated[bool, typer.Option(help="A few showers per row: checks every row runs.")] = False,
    geant4: Annotated[
        bool,
        typer.Option(
            help="Time the references of the speed-ups (Geant4; Pythia 8 + FastJet for jet models)."
        ),
    ] = True,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            help="PointWise Net precision(s) to time (repeat): auto (what generate uses), float32, bfloat16."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace bench.md and bench.json in --out.")] = False,
    fast_sim: Annotated[
        str | None,
        typer.Option(
            "--fast-sim",
            help="Also time the full chain: simulate with full Geant4 and with this model as its fast "
            "simulation, same events (ms/event).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="GPU rows: auto (on the first CUDA device torch sees, if any), cuda or cuda:N (on "
            "that one), cpu (none)."
        ),
    ] = "auto",
    loaded: Annotated[
        bool | None,
        typer.Option(
            help="Also time the default model on a machine loaded by one busy process: default "
            "threads, 1 thread, all cores (default: yes, but not with --quick)."
        ),
    ] = None,
) -> None:
    """Time the generative models and their references (Geant4, or Pythia 8 + FastJet for jets) in one run."""
    import dataclasses

    from caloforge.bench import BenchConfig, default_models, run_bench, to_markdown, write_results
    from caloforge.devices import resolve_device
    from caloforge.safety import output_lock, refuse_existing

    config = BenchConfig.quick() if quick else BenchConfig()
    changes: dict[str, object] = {"repeats": 1 if quick else repeats}
    asked = {
        "energies": _numbers(energies, "--energies"),
        "batch_sizes": _numbers(batch_sizes, "--batch-sizes", int),
    }
    if not quick:
        changes |= asked
    if threads is not None:
        changes["threads"] = _numbers(threads, "--threads", int)
    if loaded is not None:
        changes["loaded"] = loaded
    for name in ("bench.json", "bench.md"):
        refuse_existing(out / name, overwrite)
    config = dataclasses.replace(config, **changes)
    resolve_device(device)  # a CUDA device torch does not see: one line, before anything is made
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "bench.json"):
        specs = default_models(model, onnx=onnx, workdir=out, precisions=precision or ["auto"])
        with err_console.status("benchmarking") as status:
            result = run_bench(
                specs,
                config,
                progress=lambda what: status.update(f"timing {what}"),
                geant4=geant4,
                fast_sim=fast_sim,
                device=device,
            )
        json_path, md_path = write_results(result, out)
    console.print(to_markdown(result))
    console.print(f"wrote {md_path} and {json_path}")


INTERRUPTED = "interrupted: no output was replaced or left half-written"


def _stopping() -> None:
    """The run is over: further Ctrl-C / SIGTERM while it prints and exits change nothing."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


try:  # typer >= 0.23 carries its own click
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import UsageError as _UsageError

#: ``errno`` values of a write the machine refused (not a defect) that no other rule of
#: :func:`_user_message` takes: a full disk, quota or size limit is a DiskFullError
#: (``atomic.is_no_space``), missing permissions a PermissionError (a user error).
_RESOURCE_ERRNOS = frozenset({errno.EROFS})


def _user_message(exc: BaseException) -> str | None:
    """The one line of an error that is the user's or the machine's to fix, else None."""
    from caloforge.atomic import DiskFullError, disk_full, is_no_space

    if isinstance(exc, (*USER_ERRORS, DiskFullError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        what = str(exc) or "an allocation failed"
        return f"not enough memory: {what} (ask for fewer showers, or a smaller --batch-size)"
    if is_no_space(exc):
        return str(disk_full(getattr(exc, "filename", None) or "the output"))
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        where = f" in '{Path(exc.filename).parent}'" if exc.filename else ""
        return f"cannot write{where}: {exc.strerror or exc} (check its permissions or write elsewhere)"
    return None


def _exit(code: int) -> None:
    """``sys.exit(code)``; after an HDF5 write that failed for lack of space, ``os._exit``
    (the message is out, no file is open for writing, and HDF5 may crash at shutdown)."""
    from caloforge.atomic import hdf5_failed

    if hdf5_failed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main() -> None:
    """Entry point: run the app, turning errors into one line and a non-zero exit code."""
    from caloforge.safety import stop_signals

    try:
        with stop_signals():  # SIGTERM stops every command like Ctrl-C; a second one is harmless
            # Not standalone: usage errors come here, to be one line like every other error.
            code = app(standalone_mode=False)
    except KeyboardInterrupt:
        _stopping()
        err_console.print(INTERRUPTED)
        sys.exit(130)
    except SystemExit as exc:
        # typer turns Ctrl-C / SIGTERM inside a command into a silent exit 130.
        if exc.code == 130 and _caused_by_interrupt(exc):
            _stopping()
            err_console.print(INTERRUPTED)
        raise
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a command group without arguments
            console.print(exc.format_message(), highlight=False, markup=False)
            sys.exit(exc.exit_code)
        err_console.print(f"[red]error:[/red] {escape(_usage_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if _state["debug"]:
            raise
        message = _user_message(exc)
        if message is not None:
            err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            _exit(2)
        err_console.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} "
            "(rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        _exit(1)
    if isinstance(code, int) and code:  # an Exit: 130 is typer's word for a Ctrl-C in a command
        if code == 130:
            _stopping()
            if not _state.get("interrupt_said"):  # a command may have said what it kept
                err_console.print(INTERRUPTED)
        sys.exit(code)


def _usage_line(exc: Any) -> str:
    """A usage error as one line: the message, the command and where its help is."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "caloforge"
    return f"{exc.format_message()} (see {command} --help)"


if __name__ == "__main__":
    main()
