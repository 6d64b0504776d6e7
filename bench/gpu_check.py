"""The GPU check: every training of every family on one device, at the published sizes.

For each ``caloforge train`` command, and ``caloforge distill`` of the CaloClouds II run it
just made: 100 steps of its ``paper`` preset on synthetic data of
the paper's shapes (``caloforge.synthetic``: shower-like, not physics), timed after a warm-up
(steps per second, peak GPU memory, and the time of one epoch of the paper's training set at
that speed); then 1,000 showers (or jets) generated on the device with what it trained; then
``caloforge bench --quick`` with its GPU rows (batch sizes 1, 64 and 1,000, timed with
synchronisation, against the one-thread Geant4 CPU row of the same run). One Markdown table,
the device named. Made for one H100-class GPU in under 8 minutes:

    python bench/gpu_check.py --out gpu_check.md

The script itself is tested on the CPU (tests/test_gpu_check.py)::

    python bench/gpu_check.py --device cpu --preset smoke --steps 3 --showers 64 --generate 8 --no-bench
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: The data each training reads (``caloforge.synthetic`` kinds); a training not listed is skipped.
DATA = {
    "caloclouds2": "points",
    "caloclouds1": "points",
    "caloinn": "voxels",
    "calodream-energy": "voxels",
    "calodream-vae": "voxels",
    "calodream-shape": "voxels",
    "l2lflows": "images",
    "bibae": "images",
    "epic-fm": "jets",
    "epic-jedi": "jets",
    "epic-gan": "jets",
}
#: Showers (jets) in one epoch of the published training sets: ILD photons of the CaloClouds
#: papers (order 500k), the ILD photon images of the BIB-AE and L2LFlows papers (950k),
#: CaloChallenge dataset 2 (100k per file), JetNet top jets (178k). See ../shared/SPEC.md.
PAPER_EPOCH = {"points": 500_000, "images": 950_000, "voxels": 100_000, "jets": 178_000}


@dataclasses.dataclass
class Row:
    command: str
    batch: int
    steps_per_s: float | None = None
    memory_gb: float | None = None
    epoch_min: float | None = None
    generate_ms: float | None = None
    note: str = ""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timer(marks: list[tuple[int, float]]) -> Any:
    def progress(stage: str, done: int, total: int, info: str = "") -> None:
        if stage == "train":
            marks.append((done, time.perf_counter()))

    return progress


def _config(training: Any, preset: str, steps: int) -> Any:
    return _config_of(training.make_config(preset, 0, {}), steps)


def _config_of(config: Any, steps: int) -> Any:
    """``config`` for a timing run of ``steps`` steps: no checkpoints or validation on the way,
    a short calibration at the end."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {"steps": steps, "log_every": max(steps // 10, 1), "checkpoint_minutes": 1e6}
    defaults = (
        ("flow_steps", steps),
        ("post_steps", steps // 5),
        ("calibration_showers", 64),
        ("val_every", 10**9),
    )
    for name, value in defaults:
        if name in fields:
            changes[name] = value
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in fields})


def _data(kind: str, work: Path, showers: int, n_particles: int) -> Path:
    from caloforge.synthetic import write_synthetic

    path = work / f"{kind}-{n_particles}.h5" if kind == "jets" else work / f"{kind}.h5"
    if not path.exists():
        write_synthetic(path, kind, showers, n_particles=n_particles)  # type: ignore[arg-type]
    return path


def check_training(training: Any, args: argparse.Namespace, work: Path, runs: dict[str, Path]) -> Row:
    """Train ``training`` for ``args.steps`` steps on the device; then generate with the result."""
    config = _config(training, args.preset, args.steps)
    kind = DATA[training.command]
    batch = int(getattr(config, "batch_size", 0))
    showers = max(args.showers, 2 * batch + 64)
    data = _data(kind, work, showers, int(getattr(config, "n_particles", 30)))
    out = work / training.command
    kwargs = dict(training.train_fixed)
    if training.command == "caloclouds1":
        kwargs["flow_from"] = "caloclouds2"
    if training.command == "calodream-shape" and "calodream-energy" in runs:
        kwargs["energy_model"] = runs["calodream-energy"]
    marks: list[tuple[int, float]] = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
    training.run(config, data, out, device=args.device, precision="auto", progress=_timer(marks), **kwargs)
    _sync(args.device)
    runs[training.command] = out
    return _timed_row(training.command, kind, batch, marks, out, args)


def check_distillation(teacher: Path, args: argparse.Namespace, work: Path) -> Row:
    """``caloforge distill`` of the CaloClouds II run just trained, timed like a training."""
    from caloforge.models.caloclouds2.distillation import DistillConfig, distill

    config = _config_of(DistillConfig.from_preset(args.preset), args.steps)
    data = _data("points", work, max(args.showers, 2 * config.batch_size + 64), 30)
    marks: list[tuple[int, float]] = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
    out = work / "distill"
    distill(teacher, data, out, config, progress=_timer(marks), device=args.device, precision="auto")
    _sync(args.device)
    return _timed_row("distill", "points", config.batch_size, marks, out, args)


def _timed_row(
    command: str, kind: str, batch: int, marks: list[tuple[int, float]], out: Path, args: argparse.Namespace
) -> Row:
    """The row of a run that ``marks`` timed (steps after the first tenth) and wrote to ``out``."""
    row = Row(command, batch)
    warm = [m for m in marks if m[0] > args.steps // 10] or marks
    if len(warm) >= 2:
        row.steps_per_s = (warm[-1][0] - warm[0][0]) / (warm[-1][1] - warm[0][1])
        if batch:
            row.epoch_min = PAPER_EPOCH[kind] / batch / row.steps_per_s / 60
    if args.device.startswith("cuda"):
        row.memory_gb = torch.cuda.max_memory_allocated(args.device) / 2**30
    row.generate_ms, row.note = _generate(out, args)
    return row


def _generate(model: Path, args: argparse.Namespace) -> tuple[float | None, str]:
    """Milliseconds per shower (jet) of generating ``args.generate`` with ``model``."""
    from caloforge.api import generate

    try:
        generate(model, n=min(args.generate, 8), device=args.device, batch_size=args.batch)  # warm-up
        _sync(args.device)
        start = time.perf_counter()
        generate(model, n=args.generate, device=args.device, batch_size=args.batch, seed=1)
        _sync(args.device)
    except (ValueError, RuntimeError) as exc:  # a part that does not generate alone (an energy network)
        return None, str(exc).split(":")[0][:60]
    return (time.perf_counter() - start) / args.generate * 1000, ""


def _f(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def table(rows: list[Row], device: str, args: argparse.Namespace) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    lines = [
        f"Device: {name} ({device}); torch {torch.__version__}; preset `{args.preset}`, {args.steps} "
        f"steps per training on synthetic data; generation of {args.generate} at batch {args.batch}.",
        "",
        "| training | batch | steps/s | peak GPU memory [GB] | paper epoch | time per epoch [min] "
        "| generate, ms each | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        epoch = f"{PAPER_EPOCH[DATA.get(r.command, 'points')]:,}"  # distill: the teacher's data
        lines.append(
            f"| {r.command} | {r.batch} | {_f(r.steps_per_s, '.2f')} | {_f(r.memory_gb, '.2f')} "
            f"| {epoch} | {_f(r.epoch_min, '.1f')} | {_f(r.generate_ms, '.3f')} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (or cpu: to test this script)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--showers", type=int, default=4096, help="synthetic showers (jets) per file")
    parser.add_argument("--generate", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000, help="generation batch size")
    parser.add_argument("--only", help="comma-separated training commands (default: all)")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"))
    args = parser.parse_args(argv)
    from caloforge.devices import resolve_device
    from caloforge.models.registry import families

    args.device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    trainings = [t for f in families() for t in f.trainings if t.command in DATA]
    order = list(DATA)
    trainings.sort(key=lambda t: order.index(t.command))  # the energy network before the shape network
    if args.only:
        wanted = set(args.only.split(","))
        trainings = [t for t in trainings if t.command in wanted]
    rows: list[Row] = []
    runs: dict[str, Path] = {}
    for training in trainings:
        print(f"{training.command} ...", file=sys.stderr, flush=True)
        try:
            rows.append(check_training(training, args, work, runs))
        except Exception as exc:  # one failing family must not hide the others' figures
            rows.append(Row(training.command, 0, note=f"failed: {type(exc).__name__}: {exc}"[:120]))
        if training.command == "caloclouds2" and "caloclouds2" in runs:
            print("distill ...", file=sys.stderr, flush=True)
            try:
                rows.append(check_distillation(runs["caloclouds2"], args, work))
            except Exception as exc:
                rows.append(Row("distill", 0, note=f"failed: {type(exc).__name__}: {exc}"[:120]))
    text = table(rows, args.device, args)
    if args.bench:
        bench = work / "bench"
        cmd = [sys.executable, "-m", "caloforge", "bench", "--quick", "--device", args.device]
        cmd += ["--threads", "1", "--out", str(bench)]  # GPU rows at batches 1, 64 and 1,000
        subprocess.run(cmd, check=False)
        if (bench / "bench.md").exists():
            text += "\n## caloforge bench --quick (GPU rows against one-thread Geant4)\n\n"
            text += (bench / "bench.md").read_text()
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
