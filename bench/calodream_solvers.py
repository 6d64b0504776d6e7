"""CaloDREAM sampler study (the CaloDREAM paper's Fig. 9): AUC against network evaluations.

For one trained shape model, generates the same showers (same incident energies, same
layer energies from the energy network, same noise) with Euler, midpoint and RK4 at several
numbers of function evaluations (NFE), with BNS solvers trained for the model (global and
local truncation error) and with the adaptive dopri5 reference, and scores each against a
Geant4 voxel sample with the CaloChallenge high-level classifier AUC and FPD. Time per
shower covers the shape network's sampling only (the energy network is shared).

    python bench/calodream_solvers.py --model RUN_SHAPE --train TRAIN.h5 --test TEST.h5 \\
        --out docs/results/calodream/solvers -n 2000

Writes ``solvers.json``, ``solvers.md`` and ``solvers.png`` in ``--out``; trained BNS
solvers are cached in ``--out/bns_<loss>_<n>.json`` (delete them to retrain).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from caloforge import calochallenge, metrics
from caloforge.io import VoxelShowers, atomic_write_text, open_showers
from caloforge.models.calodream import (
    SolverSpec,
    layer_energies_from_u,
    load_model,
    sample_u,
    shape_condition,
    shape_noise,
    shape_velocity,
    train_solver,
)
from caloforge.odesolvers import BNSSolver, count_evaluations, solve_dopri5, steps_for_nfe

FIXED = {"euler": (2, 4, 8, 16, 32), "midpoint": (2, 4, 8, 16), "rk4": (4, 8, 16)}
BNS_NFE = (2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="CaloDREAM shape run (with embedded energy network)")
    ap.add_argument("--train", required=True, help="voxel file for BNS conditions")
    ap.add_argument("--test", required=True, help="held-out Geant4 voxel file (reference)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("-n", type=int, default=2000, help="showers per solver")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bns-showers", type=int, default=256, help="showers with dopri5 references for BNS")
    ap.add_argument("--bns-iterations", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.model)
    with open_showers(args.test) as f:
        ref = f.read(0, args.n)
    det = model.detector
    ref_feat = calochallenge.high_level_inputs(ref, det)
    ref_x = np.column_stack([np.log10(ref.energy), ref_feat])

    # Shared inputs: incident energies of the reference, layer energies from the energy net, noise.
    e = torch.from_numpy(ref.energy).float()
    gen = torch.Generator().manual_seed(args.seed)
    u = torch.cat(
        [
            sample_u(model.energy_model, e[i : i + 500], model.energy_model.sampler["energy"], gen)
            for i in range(0, len(e), 500)
        ]
    )
    x0 = shape_noise(model, len(e), gen)
    cond = shape_condition(model, e, u)
    e_layer = layer_energies_from_u(u, e * 1000.0)

    def run(solve, batch: int = 250) -> tuple[VoxelShowers, float, int, torch.Tensor]:
        outs, calls = [], 0
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(e), batch):
                v, counter = count_evaluations(shape_velocity(model, cond[i : i + batch]))
                outs.append(solve(v, x0[i : i + batch]))
                calls = max(calls, counter[0])
        x1 = torch.cat(outs)
        vox = model.voxels_from_features(x1, e_layer)
        ms = 1000 * (time.perf_counter() - start) / len(e)
        return VoxelShowers(ref.energy, vox.numpy()), ms, calls, x1

    def score(sample: VoxelShowers) -> dict[str, list[float]]:
        feat = calochallenge.high_level_inputs(sample, det)
        x = np.column_stack([np.log10(sample.energy), feat])
        return {
            "auc": list(metrics.classifier_auc(ref_x, x, n_splits=args.splits, seed=args.seed).as_tuple()),
            "fpd": list(metrics.fpd(ref_feat, feat, seed=args.seed)),
        }

    rows = []

    precise: list[torch.Tensor] = []

    def record(name: str, nfe: int, sample: VoxelShowers, ms: float, x1: torch.Tensor) -> None:
        row = {"solver": name, "nfe": nfe, "ms_per_shower": ms} | score(sample)
        if precise:  # the solver's own error: same noise, relative RMS distance to the dopri5 solution
            row["error_vs_dopri5"] = float(
                (x1 - precise[0]).pow(2).mean().sqrt() / precise[0].pow(2).mean().sqrt()
            )
        else:
            precise.append(x1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    sample, ms, calls, x1 = run(lambda v, x: solve_dopri5(v, x, rtol=1e-5, atol=1e-5))
    record("dopri5", calls, sample, ms, x1)
    for method, nfes in FIXED.items():
        for nfe in nfes:
            spec = SolverSpec(method, steps_for_nfe(method, nfe))
            sample, ms, _, x1 = run(spec.solver())
            record(method, nfe, sample, ms, x1)
    for loss in ("global", "local"):
        for nfe in BNS_NFE:
            cache = args.out / f"bns_{loss}_{nfe}.json"
            if cache.exists():
                solver = BNSSolver.from_dict(json.loads(cache.read_text()))
            else:
                t0 = time.perf_counter()
                solver = train_solver(
                    model,
                    args.train,
                    nfe,
                    loss=loss,
                    seed=args.seed,
                    n_train=args.bns_showers,
                    iterations=args.bns_iterations,
                )
                print(f"trained BNS {loss} {nfe} in {time.perf_counter() - t0:.0f} s", flush=True)
                atomic_write_text(cache, json.dumps(solver.to_dict()))
            solver.requires_grad_(False)
            sample, ms, _, x1 = run(lambda v, x, s=solver: s(v, x))
            record(f"bns-{loss}", nfe, sample, ms, x1)

    meta = {
        "model": str(args.model),
        "n_showers": len(e),
        "reference": str(args.test),
        "threads": args.threads,
    }
    atomic_write_text(args.out / "solvers.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"Shape-network solvers, {len(e)} showers vs Geant4 ({args.test}), {args.threads} threads.",
        "",
        "| solver | NFE | AUC vs Geant4 | error vs dopri5 (same noise) | FPD vs Geant4 "
        "| ms/shower (shape sampling) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['solver']} | {r['nfe']} | {r['auc'][0]:.3f} ± {r['auc'][1]:.3f} | {_auc(r)} | "
            f"{r['fpd'][0]:.3g} ± {r['fpd'][1]:.2g} | {r['ms_per_shower']:.2f} |"
        )
    atomic_write_text(args.out / "solvers.md", "\n".join(lines) + "\n")
    _plot(rows, args.out / "solvers.png")


def _auc(row: dict) -> str:
    a = row.get("error_vs_dopri5")
    return f"{a:.4f}" if a is not None else "—"


def _value(v: float | list[float]) -> tuple[float, float]:
    return (float(v[0]), float(v[1])) if isinstance(v, list) else (float(v), 0.0)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (
        ("auc", "AUC vs Geant4"),
        ("error_vs_dopri5", "relative error vs dopri5 (same noise)"),
        ("fpd", "FPD vs Geant4"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name in ("euler", "midpoint", "rk4", "bns-global", "bns-local"):
            pts = sorted((r["nfe"], *_value(r[key])) for r in rows if r["solver"] == name and key in r)
            if pts:
                n, a, s = map(np.array, zip(*pts, strict=True))
                ax.errorbar(n, a, yerr=s, marker="o", capsize=2, label=name)
        ref = [r for r in rows if r["solver"] == "dopri5" and key in r]
        if ref:
            ax.axhline(_value(ref[0][key])[0], color="k", ls="--", label=f"dopri5 ({ref[0]['nfe']} NFE)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(label)
        if key != "auc":
            ax.set_yscale("log")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
