"""CaloDREAM's hit-energy calibration of shape models (log-energy ViT, laViT, logit-fraction ViT)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from caloforge.models._training import (
    Progress,
)
from caloforge.models.calodream.checkpoint import load_model, model_from_state, read_state
from caloforge.models.calodream.data import load_voxel_data
from caloforge.models.calodream.generation import (
    place,
    sample_shape_features,
    sample_u,
)
from caloforge.models.calodream.model import (
    CaloDream,
)
from caloforge.models.calodream.variables import (
    hit_log_fractions,
    layer_energies_from_u,
    log_energy_features,
)
from caloforge.models.checkpoint import checkpoint_file, save_checkpoint
from caloforge.models.nn.quantile_map import QuantileMap

# --------------------------------------------------------------------------- calibration


def fit_calibration(
    model: CaloDream,
    data_path: str | Path,
    *,
    n_showers: int = 4000,
    n_bins: int = 8,
    drop_hits: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    progress: Progress | None = None,
    device: str | torch.device | None = None,
) -> QuantileMap:
    """Fit (and set) ``model.calibration`` against the first ``n_showers`` Geant4 showers of a
    training voxel file.

    The model generates one shower per training incident energy (its energy network and
    stored sampler); per layer, radial ring and incident-energy bin (``n_bins`` log-uniform
    over the training range, interpolated in between), the quantiles of its hits'
    ``log(E / E_layer)`` are matched to Geant4's. With ``drop_hits`` the hit rates are matched
    too: where the model hits a group's voxels more often than Geant4, its smallest hits
    there become empty (:class:`QuantileMap` ``rates``). Use training showers, never the test set.

    The networks run on ``device`` (the model and its energy network are moved there; None:
    where the model is), as in generation: every random number is drawn on the host and the
    model's hits come back to it, so the map is fitted on the CPU and holds CPU tensors.
    """
    if model.part != "shape" or model.energy_model is None:
        raise ValueError("only a shape model with an energy network can be calibrated")
    if model.latent and model.vae_model is None:
        raise ValueError("this laViT has no VAE to decode its latents: train it with --vae RUN")
    data = load_voxel_data(data_path, max_showers=n_showers, in_memory=True)  # the fit reads them all at once
    if data.detector.to_dict() != model.detector.to_dict():
        raise ValueError(
            f"'{data_path}' is for detector '{data.detector.name}', the model for '{model.detector.name}'"
        )
    assert data.frac is not None
    threshold, n = model.detector.threshold_mev, len(data.energy)
    # Geant4's own voxel energies (fraction × layer energy, not rescaled), empty ones under the cut
    g4_voxels = (data.frac.reshape(n, data.e_layer.shape[1], -1) * data.e_layer.unsqueeze(-1)).reshape(n, -1)
    target = hit_log_fractions(log_energy_features(g4_voxels, threshold), data.e_layer, threshold, model.grid)
    on = model.standard.mean.device if device is None else torch.device(device)
    place(model, on)  # the energy network beside the shape network
    gen = torch.Generator().manual_seed(seed)
    sources = []
    for lo in range(0, n, batch_size):
        e = data.energy[lo : lo + batch_size].to(on)
        u = sample_u(model.energy_model, e, model.energy_model.sampler["energy"], gen)
        x1 = sample_shape_features(model, e, u, model.sampler["shape"], gen)
        e_layer = layer_energies_from_u(u, e * 1000.0)
        hits = hit_log_fractions(model.hit_values(x1, e_layer), e_layer, threshold, model.grid)
        sources.append(hits.cpu())
        if progress is not None:
            progress("calibration showers", min(lo + batch_size, n), n)
    log_e = torch.log(data.energy.double())
    lo_e, hi_e = (math.log(v) for v in model.energy_range)
    model.calibration = QuantileMap.fit(
        torch.cat(sources), log_e, target, log_e, (lo_e, hi_e), n_bins=n_bins, drop=drop_hits
    )
    return model.calibration


def save_calibration(
    path: str | Path, calibration: QuantileMap | None, out: str | Path | None = None
) -> Path:
    """Write ``calibration`` into the checkpoint at ``path`` (file or run directory), or into a
    copy at ``out``; everything else in the checkpoint is kept. ``None`` removes it."""
    path = checkpoint_file(path)
    state = read_state(path)
    model = model_from_state(state, str(path))  # refuse anything that would not load
    if calibration is not None:
        groups = model.grid[0] * model.grid[2]
        if model.part != "shape" or calibration.n_groups != groups:
            raise ValueError(f"'{path}' is not a shape model with {calibration.n_groups} layer-ring groups")
    state["calibration"] = calibration.to_dict() if calibration is not None else None
    target = Path(out) if out is not None else path
    save_checkpoint(state, target)
    return target


def calibrate_command(
    path: Path,
    data: str | Path,
    out: str | Path | None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    showers: int | None = None,
    bins: int | None = None,
    device: str = "cpu",
) -> str:
    """``caloforge calibrate`` for CaloDREAM: fit and store the hit-energy calibration of a
    shape model, its networks on ``device``; returns the line to print. It takes no
    sampler options: the calibration belongs to the model's stored sampler."""
    n_showers = 4000 if showers is None else showers
    n_bins = 8 if bins is None else bins
    model = load_model(path)
    calibration = fit_calibration(
        model, data, n_showers=n_showers, n_bins=n_bins, seed=seed, progress=progress, device=device
    )
    written = save_calibration(path, calibration, out)
    return (
        f"hit-energy calibration fitted on the first {n_showers:,} showers (at most) of {Path(data).name} "
        f"({n_bins} energy bins, {calibration.n_groups} layer-ring groups); wrote {written}"
    )
