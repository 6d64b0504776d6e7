"""CaloDREAM training data: incident energies, layer-energy variables and voxel fractions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from caloforge.detector import Detector, PolarGrid
from caloforge.io import open_showers
from caloforge.models.calodream.variables import (
    fractions,
    layer_energies,
    u_from_layer_energies,
)
from caloforge.models.rows import DiskRows, in_memory_bytes, shower_rows

# --------------------------------------------------------------------------- data


@dataclass
class VoxelData:
    detector: Detector
    energy: Tensor  # GeV, (n,)
    u: Tensor  # (n, L)
    e_layer: Tensor  # MeV, (n, L)
    frac: Tensor | DiskRows | None  # (n, n_voxels); rows[idx] either way
    energy_range: tuple[float, float]


def load_voxel_data(
    path: str | Path,
    with_fractions: bool = True,
    max_showers: int | None = None,
    min_showers: int = 20,
    in_memory: bool | None = None,
) -> VoxelData:
    """Incident energies, ``u`` variables and (optionally) voxel fractions of a voxel file; the
    fractions of a file too large for memory (``in_memory`` None) are read from disk a batch
    at a time (:func:`~caloforge.models.rows.shower_rows`)."""
    path = Path(path)
    with open_showers(path) as f:
        det = f.detector
        if f.kind != "voxels":
            raise ValueError(
                f"'{path}' holds point clouds: CaloDREAM trains on voxel files (simulate --voxel-out)"
            )
        if not isinstance(det.readout, PolarGrid):
            raise ValueError(f"'{path}' is for detector '{det.name}' without a voxel readout")
        attrs = dict(f.attrs)
        n = len(f) if max_showers is None else min(len(f), max_showers)
        keep = in_memory or (in_memory is None and n * det.n_channels * 4 <= in_memory_bytes())
        energies, us, fracs, e_layers = [], [], [], []
        for chunk in f.iter_chunks(2000, stop=n):
            v = torch.from_numpy(chunk.voxels.astype(np.float32))
            e = torch.from_numpy(chunk.energy.astype(np.float32))
            energies.append(e)
            e_layers.append(layer_energies(v, det.n_layers))
            us.append(u_from_layer_energies(e_layers[-1], e * 1000.0))
            if with_fractions and keep:
                fracs.append(fractions(v, det.n_layers))
    if not energies:
        raise ValueError(f"'{path}' holds no showers")
    energy = torch.cat(energies)
    if len(energy) < min_showers:
        raise ValueError(f"'{path}' holds {len(energy)} showers: at least {min_showers} are needed")
    # The simulated spectrum's range when the file records it, else the range of its showers.
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    frac: Tensor | DiskRows | None = None
    if with_fractions and keep:
        frac = torch.cat(fracs)
    elif with_fractions:

        def chunks() -> Iterator[np.ndarray]:
            with open_showers(path) as f:
                for chunk in f.iter_chunks(2000, stop=n):
                    yield fractions(torch.from_numpy(chunk.voxels.astype(np.float32)), det.n_layers).numpy()

        frac = shower_rows(path, "fractions", n, det.n_channels, chunks, in_memory=False)
    return VoxelData(det, energy, torch.cat(us), torch.cat(e_layers), frac, (lo, hi))  # type: ignore[arg-type]
