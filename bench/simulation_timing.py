"""Time the Geant4 reference simulation per shower at fixed energies, with 1 and 2 workers.

Usage: python bench/simulation_timing.py [--quick] > timing.md

Prints a markdown table (the one in docs/simulation.md): wall-clock ms per shower
including clustering and writing (worker start-up excluded: the clock starts when the first
block of showers arrives), the part spent inside Geant4, Geant4 steps in the silicon and
clustered points per shower.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from caloforge.simulate.driver import EnergySpec, SimulationConfig, simulate

SHOWERS = {10.0: 200, 50.0: 60, 90.0: 40}


def measure(energy: float, n: int, workers: int, directory: Path) -> dict[str, float]:
    """Simulate ``n`` photons of ``energy`` GeV; time from the first finished block to the end."""
    config = SimulationConfig(energy=EnergySpec("fixed", energy, energy), n_showers=n, seed=123)
    marks: list[tuple[float, int]] = []
    block = 5
    result = simulate(
        config,
        directory / f"t{energy:g}_{workers}.h5",
        workers=workers,
        block_size=block,
        progress=lambda done, total: marks.append((time.perf_counter(), done)),
    )
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    return {
        "ms_per_shower": 1000 * (t_last - t_first) / (n_last - n_first),
        "geant4_ms": 1000 * result.geant4_seconds / result.n_new,
        "ours_ms": 1000 * result.ours_seconds / result.n_new,
        "steps": result.steps / result.n_new,
        "points": result.points / result.n_new,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the showers")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; photons in ild-ecal\n")
    print("| E [GeV] | workers | wall ms/shower | in Geant4 ms/shower/worker | ours ms | steps | points |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for energy, n in SHOWERS.items():
            n = max(20, n // 4) if args.quick else n
            for workers in (1, 2):
                m = measure(energy, n, workers, Path(tmp))
                print(
                    f"| {energy:g} | {workers} | {m['ms_per_shower']:.0f} | {m['geant4_ms']:.0f} | "
                    f"{m['ours_ms']:.1f} | {m['steps']:.0f} | {m['points']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
