"""CaloDREAM training data: incident energies, layer-energy variables and voxel fractions."""

from __future__ import annotations

import contextlib
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
from caloforge.models.rows import DiskRows, RowsWriter

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
    """Incident energies, ``u`` variables and (optionally) voxel fractions of a voxel file, in
    one pass; the fractions of a file too large for memory (``in_memory`` None) are read from
    disk a batch at a time (:class:`~caloforge.models.rows.RowsWriter`)."""
    path = Path(path)
    with open_showers(path) as f, contextlib.ExitStack() as stack:
        det = f.detector
        if f.kind != "voxels":
            raise ValueError(
                f"'{path}' holds point clouds: CaloDREAM trains on voxel files (simulate --voxel-out)"
            )
        if not isinstance(det.readout, PolarGrid):
            raise ValueError(f"'{path}' is for detector '{det.name}' without a voxel readout")
        attrs = dict(f.attrs)
        n = len(f) if max_showers is None else min(len(f), max_showers)
        rows = None
        if with_fractions:
            rows = stack.enter_context(RowsWriter(path, "fractions", det.n_channels, n, in_memory))
        energies, us, e_layers = [], [], []
        for chunk in f.iter_chunks(2000, stop=n):
            v = torch.from_numpy(chunk.voxels.astype(np.float32))
            e = torch.from_numpy(chunk.energy.astype(np.float32))
            energies.append(e)
            e_layers.append(layer_energies(v, det.n_layers))
            us.append(u_from_layer_energies(e_layers[-1], e * 1000.0))
            if rows is not None:
                if rows.writing:
                    rows.append(fractions(v, det.n_layers).numpy())
                else:  # a scratch file written before holds them
                    rows.skip(len(v))
        if not energies:
            raise ValueError(f"'{path}' holds no showers")
        energy = torch.cat(energies)
        if len(energy) < min_showers:
            raise ValueError(f"'{path}' holds {len(energy)} showers: at least {min_showers} are needed")
        frac = rows.finish() if rows is not None else None
    # The simulated spectrum's range when the file records it, else the range of its showers.
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    return VoxelData(det, energy, torch.cat(us), torch.cat(e_layers), frac, (lo, hi))  # type: ignore[arg-type]
