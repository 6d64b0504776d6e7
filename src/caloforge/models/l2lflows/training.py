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
    """Mutable state of one L2LFlows training run, and one step of it."""

    def __init__(self, config: L2LFlowsConfig, data: Images) -> None:
        self.model = seeded(config.seed, lambda: L2LFlows(config, data.detector, data.energy_range))
        self.start(config, data)
        fit = self.train_idx[:STANDARDISATION_SHOWERS]
        self.model.fit_standardisation(data.voxels[fit], torch.Generator().manual_seed(config.seed + 3))
        self.adamw_one_cycle(self.model.net)

    def _losses(self, net: nn.Module, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """NLL per feature of the layer energies and of the cells, batch means."""
        m = self.model
        g, y = m.features(self.data.voxels[idx], gen)
        lp_e, lp_y = m.log_prob(g, y, self.data.energy[idx], net)
        return -lp_e.mean() / g[0].numel(), -lp_y.mean() / y[0].numel()

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        pick = torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)
        net = self.model.net
        net.train()
        nll_e, nll_y = self._losses(net, self.train_idx[pick], self.gen)
        values: tuple[float | None, float | None] = (nll_e.item(), nll_y.item())
        if not self.update(nll_e + nll_y, net):
            values = (None, None)
        self.one_cycle_step()
        out: list[tuple[str, float | None]] = [("nll_energy", values[0]), ("nll_cells", values[1])]
        if self.validation_due():
            out.append(("val", self.validation_loss()))
        return out

    def validation_loss(self) -> float:
        """Summed NLL per feature (energy + cells) of the EMA flows on the validation showers."""

        def loss(idx: Tensor, gen: torch.Generator) -> float:
            nll_e, nll_y = self._losses(self.ema.module, idx, gen)
            return (nll_e + nll_y).item()

        return self.validation_mean(loss, 512, 64)


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
