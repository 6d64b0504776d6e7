"""Which known distortion can the SPEC 5 classifier see? (the table in docs/evaluation.md)

Splits a Geant4 file into two halves (even and odd showers), distorts the second half in
several ways (energy scale, transverse width, depth) and runs ``caloforge evaluate`` with the
first half as reference and every distorted copy as a candidate, in one run.

Usage::

    caloforge simulate -n 2000 --energy 10:90 --seed 11 --workers 2 --out g4_2k.h5
    python bench/distortion_yardsticks.py g4_2k.h5 --out yardsticks
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from caloforge.evaluate import EvaluationConfig, evaluate
from caloforge.io import PointShowers, read_showers, write_showers

#: name -> (energy factor, transverse factor, depth shift in layers)
VARIANTS = {
    "none": (1.0, 1.0, 0.0),
    "energies x 1.05": (1.05, 1.0, 0.0),
    "energies x 1.10": (1.10, 1.0, 0.0),
    "x, y x 1.05": (1.0, 1.05, 0.0),
    "x, y x 1.10": (1.0, 1.10, 0.0),
    "half a layer deeper": (1.0, 1.0, 0.5),
}


def distort(
    showers: PointShowers, energy: float, transverse: float, shift: float, n_layers: int
) -> PointShowers:
    """A copy of ``showers`` with its deposits scaled, widened and shifted in depth."""
    points = showers.points.copy()
    filled = points[..., 3] > 0
    points[..., 3] *= energy
    points[..., :2] *= transverse
    points[..., 2] = np.where(filled, np.clip(points[..., 2] + shift, 0.5, n_layers - 0.5), 0.0)
    return PointShowers(showers.energy, points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("geant4", type=Path, help="a Geant4 point-cloud file (ild-ecal)")
    parser.add_argument("--out", type=Path, default=Path("yardsticks"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    showers = read_showers(args.geant4)
    n = len(showers) // 2 * 2
    first, second = showers[np.arange(0, n, 2)], showers[np.arange(1, n, 2)]
    reference = args.out / "reference.h5"
    write_showers(reference, first, generator="geant4")
    candidates = []
    for i, (name, (energy, transverse, shift)) in enumerate(VARIANTS.items()):
        path = args.out / f"variant{i}.h5"
        write_showers(path, distort(second, energy, transverse, shift, 30), generator=name)
        candidates.append(path)
    result = evaluate(
        reference, candidates, args.out / "report", EvaluationConfig(plots=False), overwrite=True
    )
    print(f"| distortion of one half ({n // 2:,} vs {n // 2:,} showers) | SPEC 5 classifier AUC |")
    print("|---|---|")
    for cand in result["candidates"]:
        mean, std = cand["classifier_auc"]
        print(f"| {cand['label']} | {mean:.3f} ± {std:.3f} |")


if __name__ == "__main__":
    main()
