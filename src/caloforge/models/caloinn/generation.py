"""CaloINN generation: Gaussian noise through the inverted flow, then the voxel decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from caloforge.io import VoxelShowers
from caloforge.models.caloinn.checkpoint import CHECKPOINTS
from caloforge.models.caloinn.model import CaloINN
from caloforge.models.onepass import OnePassGenerator, one_pass_batch

#: The one sampler of a flow: a single pass through the inverted network.
SAMPLER = "inverse"


def voxel_batch(
    model: CaloINN, energies: np.ndarray, seed: int, index: int, temperature: float | None = None
) -> VoxelShowers:
    """Batch ``index`` of a run with ``seed`` (its own random stream, :func:`batch_seed`), made
    on the model's device."""
    t = model.config.temperature if temperature is None else temperature
    return one_pass_batch(model, energies, seed, index, t, str(model.mean.device))


class CaloINNGenerator(OnePassGenerator):
    """A CaloINN checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`: one
    inverse pass, float32 on the CPU or a CUDA device; generation option ``temperature``
    (default: the model's, 1.0) scales the base noise."""

    family = "caloinn"
    particle = "e-"
    label = "caloinn"
    name = "CaloINN"
    sampler = SAMPLER
    how = "a flow samples in one pass"
    option = "temperature"
    model: CaloINN

    def describe(self) -> dict[str, Any]:
        """Blocks, conditioner and parameters of the flow."""
        c = self.model.config
        bins = f", {c.bins} bins" if c.coupling == "rqs" else ""
        kernel = f", kernel {c.kernel}" if c.conditioner == "conv" else ""
        layer = "layer share" if c.layer_variable == "shares" else "layer log energy"
        return {
            "parameters": self.model.n_parameters()["flow"],
            "coupling blocks": f"{c.n_blocks} × {c.coupling}{bins}",
            "conditioner": f"{c.conditioner}, {c.depth} × {c.hidden}{kernel}",
            "features": f"{self.model.shape[0]} layers × (1 {layer} + {self.model.shape[1] - 1} voxels)",
            "sampler": f"{SAMPLER} (one pass), temperature {c.temperature:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> CaloINNGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return CaloINNGenerator(CHECKPOINTS.model_from_state(state, path), path)
