"""Wall-clock of ``simulate`` and ``generate`` with the local engine (``--workers``) and the
Dask engine (a LocalCluster of the same number of processes), everything included (start-up
of the workers or the cluster, writing the file): the table in docs/distributed.md.

Usage: python bench/engine_scaling.py [--showers 80] [--generated 6000] > scaling.md
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "caloforge.cli"]


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--showers", type=int, default=80, help="Geant4 showers (50 GeV photons)")
    parser.add_argument("--generated", type=int, default=6000, help="showers of the default model")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    rows = []
    for n_workers in (int(w) for w in args.workers.split(",")):
        for engine in ("local", "dask"):
            common = ["--workers", str(n_workers), "--engine", engine, "--seed", "1", "--overwrite"]
            sim = timed(
                ["simulate", "-n", str(args.showers), "--energy", "50", *common, "--out", str(work / "s.h5")]
            )
            gen_args = ["generate", "-n", str(args.generated), "--energy", "50", *common]
            if engine == "local" and n_workers == 1:
                gen_args += ["--threads", "1"]
            gen = timed([*gen_args, "--out", str(work / "g.h5")])
            rows.append((engine, n_workers, sim, gen))
    print(f"| engine | processes | simulate {args.showers} × 50 GeV γ [s] | generate {args.generated} [s] |")
    print("|---|---|---|---|")
    for engine, n_workers, sim, gen in rows:
        print(f"| {engine} | {n_workers} | {sim:.1f} ({1000 * sim / args.showers:.0f} ms/shower) | "
              f"{gen:.1f} ({1000 * gen / args.generated:.2f} ms/shower) |")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
