"""L2LFlows training: all flows jointly by maximum likelihood with teacher forcing (each layer's
flow conditioned on the true previous layers), one-cycle schedule, EMA; checkpointed, resumable."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from caloforge.models._training import (
    EMATrainer,
    RunOptions,
    Term,
    TrainResult,
    seeded,
    train_run,
)
from caloforge.models.l2lflows.checkpoint import CHECKPOINTS
from caloforge.models.l2lflows.config import L2LFlowsConfig
from caloforge.models.l2lflows.model import L2LFlows
from caloforge.models.voxel_features import CONVERT_HINT, VoxelData, load_voxel_file

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Showers the standardisation is fitted on (the first of the training split).
STANDARDISATION_SHOWERS = 4000


#: A cell-image file in memory (the name L2LFlows's API has used).
Images = VoxelData


def load_images(path: str | Path, max_showers: int | None = None, min_showers: int = 20) -> VoxelData:
    """The showers of a cell-image file (its first ``max_showers``), refusing point files and
    polar-voxel files in one line."""
    return load_voxel_file(path, "cells", "L2LFlows", max_showers, min_showers)


class _Trainer(EMATrainer):
    """Mutable state of one L2LFlows training run, and one step of it (float32 only: the
    flows' log-determinants need more than bfloat16's 8 bits)."""

    def __init__(self, config: L2LFlowsConfig, data: Images) -> None:
        self.model = seeded(config.seed, lambda: L2LFlows(config, data.detector, data.energy_range))
        self.start(config, data)
        fit = self.train_idx[:STANDARDISATION_SHOWERS]
        self.model.fit_standardisation(data.voxels[fit], torch.Generator().manual_seed(config.seed + 3))
        self.adamw_one_cycle(self.model.net)

    validation_showers, validation_chunk = 512, 64

    def inputs(self, idx: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        put = self.place.put
        g, y = self.model.features(put(self.data.voxels[idx]), gen)
        return {"g": g, "y": y, "e": put(self.data.energy[idx])}

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> list[Term]:
        """Negative log-likelihood per feature of the layer energies (``nll_energy``) and of
        the cells (``nll_cells``), with teacher forcing."""
        g, y = inputs["g"], inputs["y"]
        lp_e, lp_y = self.model.log_prob(g, y, inputs["e"], net)
        return [
            Term("nll_energy", -lp_e.mean() / g[0].numel()),
            Term("nll_cells", -lp_y.mean() / y[0].numel()),
        ]


def train(
    config: L2LFlowsConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_showers: int | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train L2LFlows on the image file ``data_path`` (its first ``max_showers``); checkpoint in
    ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses (``nll_energy`` and
    ``nll_cells``: negative log-likelihood per feature of the training batches, ``val``: their
    sum for the EMA flows on the held-back validation showers).
    """
    load = partial(load_images, max_showers=max_showers)
    return train_run(config, data_path, out_dir, CHECKPOINTS.check_state, load, _Trainer, **run)


__all__ = ["CONVERT_HINT", "STANDARDISATION_SHOWERS", "Images", "load_images", "train"]
