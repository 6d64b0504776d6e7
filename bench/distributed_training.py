"""One process against several at the same global batch: the loss curves of
``caloforge train caloclouds2`` with ``--nproc 1`` and ``--nproc N`` from the same seed, and
the training steps per second of each (the table in docs/distributed.md).

Usage: python bench/distributed_training.py --data FILE [--steps 2000] [--nproc 2] > table.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, "-m", "caloforge"]


def train(data: Path, out: Path, steps: int, nproc: int, threads: int, seed: int) -> list[dict]:
    """The train_log.jsonl records of one run."""
    args = ["train", "caloclouds2", "--data", str(data), "--out", str(out), "--preset", "cpu"]
    args += ["--steps", str(steps), "--flow-steps", str(steps // 5), "--seed", str(seed)]
    args += ["--nproc", str(nproc), "--threads", str(threads)]
    subprocess.run([*CLI, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a Geant4 point-cloud file")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp())
    runs = {
        f"1 process × {cores} threads": train(args.data, work / "a", args.steps, 1, cores, args.seed),
        f"{args.nproc} processes × {max(1, cores // args.nproc)} thread(s)": train(
            args.data, work / "b", args.steps, args.nproc, max(1, cores // args.nproc), args.seed
        ),
        "1 process × 1 thread": train(args.data, work / "c", args.steps, 1, 1, args.seed),
    }
    names = list(runs)
    print("| step | " + " | ".join(f"EDM loss, {n}" for n in names[:2]) + " |")
    print("|---:|---:|---:|")
    for a, b in zip(runs[names[0]], runs[names[1]], strict=True):
        print(f"| {a['step']} | {a['edm_loss']:.4f} | {b['edm_loss']:.4f} |")
    diffs = [abs(a["edm_loss"] - b["edm_loss"]) for a, b in zip(runs[names[0]], runs[names[1]], strict=True)]
    same = [abs(a["edm_loss"] - c["edm_loss"]) for a, c in zip(runs[names[0]], runs[names[2]], strict=True)]
    print(
        f"\nmean |difference| of the logged EDM losses: {args.nproc} processes vs 1: "
        f"{statistics.mean(diffs):.2e}; 1 thread vs {cores} threads (one process): "
        f"{statistics.mean(same):.2e}"
    )
    print("\n| run | start to last step, s | steps/s |\n|---|---:|---:|")
    for name, log in runs.items():
        seconds = 60 * log[-1]["minutes"]
        print(f"| {name} | {seconds:.1f} | {args.steps / seconds:.1f} |")


if __name__ == "__main__":
    main()
