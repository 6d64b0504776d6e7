"""CaloClouds II's number-of-points calibration: fitted with the model's own sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from caloforge.calibrate import NPointsCalibration, count_hits, fit_n_points_calibration
from caloforge.io import open_showers
from caloforge.models._training import (
    Progress,
)
from caloforge.models.caloclouds2.checkpoint import (
    model_from_state,
    read_model_checkpoint,
)
from caloforge.models.caloclouds2.generation import generate_batch, resolve_sampler
from caloforge.models.caloclouds2.model import CaloClouds2
from caloforge.models.checkpoint import save_checkpoint
from caloforge.models.protocol import GenerationError, refuse_options


def fit_calibration(
    model: CaloClouds2,
    energies: Tensor,
    n_points: np.ndarray,
    hits: np.ndarray,
    refinements: int = 1,
    seed: int = 0,
    progress: Progress | None = None,
) -> NPointsCalibration:
    """Fit the number-of-points calibration (SPEC 6.1) of ``model`` with its own sampler.

    Model showers at ``energies`` are generated so that their cell hits match the Geant4
    showers' (``n_points`` clustered points and ``hits`` cells above threshold each, any
    number of showers). A first run with the identity gives the cubic fit of
    :meth:`NPointsCalibration.fit`; each of the ``refinements`` further runs (same showers,
    same noise) corrects it with a secant step (:meth:`NPointsCalibration.refine`).
    ``model.calibration`` is left set to the result. The showers are made by the eager
    float32 path, so the fit does not depend on the machine (bfloat16 generation has the same
    hit counts within the W1 spreads, docs/results.md).
    """
    model.eval()

    def set_calibration(calibration: NPointsCalibration) -> None:
        model.calibration = calibration

    return fit_n_points_calibration(
        lambda energy, gen: generate_batch(model, energy, gen),
        set_calibration,
        model.detector,
        model.max_points,
        energies,
        n_points,
        hits,
        refinements,
        seed,
        progress,
    )


def calibration_energies(energy: Tensor, n: int, seed: int) -> Tensor:
    pick = torch.randperm(len(energy), generator=torch.Generator().manual_seed(seed + 3))
    return energy[pick[:n]]


def calibrate(
    model_path: str | Path,
    data_path: str | Path,
    out: str | Path | None = None,
    *,
    sampler: str | None = None,
    n_steps: int | None = None,
    sigma_max: float | None = None,
    showers: int | None = None,
    refinements: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> NPointsCalibration:
    """Refit the N calibration of the checkpoint ``model_path`` against the Geant4 file ``data_path``.

    ``sampler`` / ``n_steps`` / ``sigma_max`` change the model's default sampler (the
    calibration belongs to it, see :func:`resolve_sampler`). The checkpoint is rewritten
    atomically (or written to ``out``), everything else in it unchanged, so a training run can
    still be resumed.
    ``showers`` model showers (default: the model config's ``calibration_showers``) are
    drawn at energies of the data file.
    """
    path = Path(model_path)
    state = read_model_checkpoint(path)
    model = model_from_state(state, path)
    try:
        model.sampler = resolve_sampler(model, sampler, n_steps, sigma_max)
    except GenerationError as exc:
        raise ValueError(str(exc)) from exc
    cfg = model.config
    energy, n_points, hits = [], [], []
    with open_showers(data_path) as reader:
        if reader.kind != "points":
            raise ValueError(f"'{data_path}' holds {reader.kind}; the calibration needs point clouds")
        if reader.detector.name != model.detector.name:
            raise ValueError(
                f"'{data_path}' is for detector '{reader.detector.name}', "
                f"the model for '{model.detector.name}'"
            )
        for chunk in reader.iter_chunks(cfg.chunk_size):
            chunk = chunk[chunk.n_points > 0]
            energy.append(chunk.energy)
            n_points.append(chunk.n_points)
            hits.append(count_hits(chunk, model.detector))
            if progress is not None:
                progress("load", sum(len(e) for e in energy), len(reader))
    if not energy:
        raise ValueError(f"'{data_path}' holds no showers with points")
    all_energy = torch.from_numpy(np.concatenate(energy).astype(np.float32))
    count = cfg.calibration_showers if showers is None else showers
    calibration = fit_calibration(
        model,
        calibration_energies(all_energy, count, seed),
        np.concatenate(n_points).astype(np.float64),
        np.concatenate(hits),
        cfg.calibration_refinements if refinements is None else refinements,
        seed,
        progress,
    )
    state = state | {"calibration": calibration.to_dict(), "sampler": model.sampler.to_dict()}
    save_checkpoint(state, path if out is None else out)
    return calibration


def calibrate_command(
    path: Path,
    data: str | Path,
    out: str | Path | None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    showers: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    sigma_max: float | None = None,
    **unsupported: Any,
) -> str:
    """``caloforge calibrate`` for CaloClouds II: refit the N calibration (:func:`calibrate`);
    returns the line to print. Options of other families are refused by name."""
    refuse_options(unsupported, "a CaloClouds II calibration")
    result = calibrate(
        path,
        data,
        out,
        sampler=sampler,
        n_steps=steps,
        sigma_max=sigma_max,
        showers=showers,
        seed=seed,
        progress=progress,
    )
    ratio = ", ".join(f"{c:.4g}" for c in result.ratio_coeffs)
    return f"number-of-points calibration refitted (cubic coefficients {ratio}); wrote {out or path}"
