"""Host memory of training on a paper-size data set: a CaloChallenge-dataset-2-like file of N
showers (synthetic: a Gamma longitudinal profile, an exponential radial fall-off, Gamma
fluctuations per voxel; the content does not matter for memory), then ``caloforge train``
of the chosen families for a few steps, each in its own process, with the peak resident
memory of that process (the table in docs/distributed.md, "Data larger than memory").

Usage: python bench/training_memory.py [--showers 200000] [--steps 20] [--keep FILE] > table.md
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "caloforge"]
DETECTOR = "calochallenge-ds2"


def write_file(path: Path, n: int, seed: int = 0) -> None:
    """``n`` synthetic dataset-2 showers (1–1000 GeV, log-uniform), written in blocks."""
    from caloforge.detector import get_detector
    from caloforge.io import VoxelShowers, write_showers

    det = get_detector(DETECTOR)
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(np.log(1.0), np.log(1000.0), n))
    voxels = np.empty((n, det.n_channels), np.float32)
    layer, ring = np.arange(45), np.arange(9)
    for lo in range(0, n, 5000):
        e = energy[lo : lo + 5000]
        k = len(e)
        peak = 6 + 2 * np.log(e) + rng.normal(0, 1, k)
        prof = (layer + 1) ** 2 * np.exp(-(layer + 1) / np.maximum(peak[:, None] / 2, 1.0))
        prof *= (e * 1000 * 0.015 * rng.uniform(0.9, 1.1, k) / prof.sum(1))[:, None]
        radial = np.exp(-ring / rng.uniform(0.8, 1.5, (k, 1)))
        shape = radial[:, None, None, :] * rng.gamma(4.0, 1.0, (k, 45, 16, 9)).astype(np.float32)
        shape /= shape.sum(axis=(2, 3), keepdims=True)
        block = (prof[:, :, None, None] * shape).reshape(k, -1).astype(np.float32)
        block[block < det.threshold_mev] = 0.0
        voxels[lo : lo + k] = block
    attrs = {"energy_min_gev": 1.0, "energy_max_gev": 1000.0}
    write_showers(path, VoxelShowers(energy, voxels), det, generator="synthetic", attrs=attrs)


def peak_rss_gb(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Peak resident memory (GB) and wall time (s) of ``caloforge ARGS`` in a child process."""
    start = time.monotonic()
    code = os.fork()
    if code == 0:  # the child, quiet
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.execvpe(CLI[0], [*CLI, *args], env)
    _, status, usage = os.wait4(code, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"caloforge {' '.join(args)} failed")
    return usage.ru_maxrss / 2**20, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--showers", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="write (or reuse) the data file here")
    parser.add_argument("--families", default="caloinn,calodream-shape")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the child that writes the file
    args = parser.parse_args()
    if args.write:
        write_file(args.write, args.showers)
        return
    work = Path(tempfile.mkdtemp())
    data = args.keep or work / "ds2.h5"
    if not data.exists():  # in a child process: this one stays small for the measurements
        subprocess.run(
            [sys.executable, __file__, "--write", str(data), "--showers", str(args.showers)], check=True
        )
    env = dict(os.environ, CALOFORGE_CACHE_DIR=str(work / "cache"))
    size = os.path.getsize(data) / 1e9
    print(
        f"Data: {args.showers:,} synthetic dataset-2 showers ({size:.1f} GB compressed, "
        f"{args.showers * 6480 * 4 / 1e9:.1f} GB as float32); {args.steps} steps of the cpu preset.\n"
    )
    print("| training | peak resident memory | wall time (incl. the first pass over the file) |")
    print("|---|---|---|")
    for family in args.families.split(","):
        cmd = ["train", family, "--data", str(data), "--out", str(work / family), "--preset", "cpu"]
        cmd += ["--steps", str(args.steps), "--device", "cpu"]
        gb, seconds = peak_rss_gb(cmd, env)
        print(f"| {family} | {gb:.2f} GB | {seconds:.0f} s |", flush=True)
    print(
        f"\nPeak of this script (the synthetic file in memory): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GB"
    )


if __name__ == "__main__":
    main()
