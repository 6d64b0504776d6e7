"""CaloINN training: maximum likelihood, one-cycle schedule, EMA; checkpointed and resumable."""

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
from caloforge.models.caloinn.checkpoint import CHECKPOINTS
from caloforge.models.caloinn.config import CaloINNConfig
from caloforge.models.caloinn.model import CaloINN
from caloforge.models.nn.coupling import gaussian_log_prob
from caloforge.models.voxel_features import VoxelData, load_voxel_file

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Showers the standardisation is fitted on (the first of the training split).
STANDARDISATION_SHOWERS = 4000


#: A voxel file in memory (the name CaloINN's API has used).
Voxels = VoxelData


def load_voxels(path: str | Path, max_showers: int | None = None, min_showers: int = 20) -> VoxelData:
    """The showers of a voxel file (the first ``max_showers``), checked for what CaloINN needs."""
    return load_voxel_file(path, "polar", "CaloINN", max_showers, min_showers)


class _Trainer(EMATrainer):
    """Mutable state of one CaloINN training run, and one step of it (float32 only: the
    spline flow's log-determinant sums thousands of terms, beyond bfloat16's 8 bits)."""

    live_key = "flow"

    def __init__(self, config: CaloINNConfig, data: Voxels) -> None:
        self.model = seeded(config.seed, lambda: CaloINN(config, data.detector, data.energy_range))
        self.start(config, data)
        fit = self.train_idx[:STANDARDISATION_SHOWERS]
        fit_gen = torch.Generator().manual_seed(config.seed + 3)
        self.model.fit_standardisation(data.voxels[fit], data.energy[fit], fit_gen)
        self.adamw_one_cycle(self.model.flow)

    def inputs(self, idx: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        m, put = self.model, self.place.put
        e = put(self.data.energy[idx])
        return {"x": m.features(put(self.data.voxels[idx]), e, gen), "c": m.energy_condition(e)}

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> list[Term]:
        """The negative log-likelihood per feature (``nll``)."""
        x = inputs["x"]
        z, ladj = net(x, inputs["c"])
        return [Term("nll", -(gaussian_log_prob(z) + ladj).mean() / x[0].numel())]

    def averaged(self) -> nn.Module:
        return self.model.flow


def train(
    config: CaloINNConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_showers: int | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train CaloINN on the voxel file ``data_path`` (its first ``max_showers``); checkpoint in
    ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses (``nll``: negative
    log-likelihood per feature of the training batches, ``val``: of the EMA flow on the
    held-back validation showers).
    """
    load = partial(load_voxels, max_showers=max_showers)
    return train_run(config, data_path, out_dir, CHECKPOINTS.check_state, load, _Trainer, **run)


__all__ = ["STANDARDISATION_SHOWERS", "Voxels", "load_voxels", "train"]
