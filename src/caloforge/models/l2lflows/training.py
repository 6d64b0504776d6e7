"""L2LFlows training: all flows jointly by maximum likelihood with teacher forcing (each layer's
flow conditioned on the true previous layers), one-cycle schedule, EMA; checkpointed, resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.detector import CellGrid, Detector
from caloforge.io import open_showers
from caloforge.models._training import (
    Progress,
    TrainResult,
    ema_training_state,
    optimizer_step,
    restore_ema_training,
    save_finite_checkpoint,
    train_run,
)
from caloforge.models.l2lflows.checkpoint import check_state
from caloforge.models.l2lflows.config import L2LFlowsConfig
from caloforge.models.l2lflows.model import L2LFlows
from caloforge.models.nn.ema import EMA

#: Showers the standardisation is fitted on (the first of the training split).
STANDARDISATION_SHOWERS = 4000
#: What to tell the owner of a file L2LFlows cannot train on.
CONVERT_HINT = "convert it with `caloforge convert --detector ild-ecal-30`"


@dataclass
class Images:
    """An image file in memory: detector, incident energies (GeV), cells (MeV), energy range."""

    detector: Detector
    energy: Tensor
    voxels: Tensor
    energy_range: tuple[float, float]


def load_images(path: str | Path, max_showers: int | None = None, min_showers: int = 20) -> Images:
    """The showers of an image file on a cell-grid detector (the first ``max_showers``)."""
    path = Path(path)
    with open_showers(path) as f:
        det = f.detector
        if f.kind != "voxels":
            raise ValueError(f"'{path}' holds {f.kind}, not cell images: {CONVERT_HINT}")
        if not isinstance(det.readout, CellGrid):
            raise ValueError(
                f"'{path}' holds polar voxels of detector '{det.name}', not cell images: {CONVERT_HINT}"
            )
        attrs = dict(f.attrs)
        chunks = list(f.iter_chunks(1000, stop=max_showers))
    if not chunks:
        raise ValueError(f"'{path}' holds no showers")
    energy = torch.from_numpy(np.concatenate([c.energy for c in chunks]).astype(np.float32))
    voxels = torch.from_numpy(np.concatenate([c.voxels for c in chunks]).astype(np.float32, copy=False))
    if len(energy) < min_showers:
        raise ValueError(f"'{path}' holds {len(energy)} showers: at least {min_showers} are needed")
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    return Images(det, energy, voxels, (lo, hi))


class _Trainer:
    """Mutable state of one L2LFlows training run, and one step of it."""

    def __init__(self, config: L2LFlowsConfig, data: Images) -> None:
        self.config, self.data = config, data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = L2LFlows(config, data.detector, data.energy_range)
        self.gen = torch.Generator().manual_seed(config.seed)
        n = len(data.energy)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        n_val = round(config.val_fraction * n)
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        fit = self.train_idx[:STANDARDISATION_SHOWERS]
        self.model.fit_standardisation(data.voxels[fit], torch.Generator().manual_seed(config.seed + 3))
        net = self.model.net
        self.ema = EMA(net, config.ema_decay)
        self.opt = torch.optim.AdamW(net.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=config.lr, total_steps=config.steps)
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

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
        if optimizer_step(nll_e + nll_y, net, self.opt, cfg.grad_clip):
            self.ema.update(net)
        else:
            self.skipped += 1
            values = (None, None)
        if self.step + 1 < cfg.steps:  # OneCycleLR refuses a step past its total
            self.sched.step()
        out: list[tuple[str, float | None]] = [("nll_energy", values[0]), ("nll_cells", values[1])]
        if len(self.val_idx) and (self.step + 1) % cfg.val_every == 0:
            out.append(("val", self.validation_loss()))
        return out

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Summed NLL per feature (energy + cells) of the EMA flows on the validation showers."""
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        n = min(len(self.val_idx), 512)
        total = 0.0
        for lo in range(0, n, 64):
            idx = self.val_idx[lo : min(lo + 64, n)]
            nll_e, nll_y = self._losses(self.ema.module, idx, gen)
            total += (nll_e + nll_y).item() * len(idx)
        return total / n

    def _parts(self) -> dict[str, Any]:
        return {"opt": self.opt, "sched": self.sched}

    def state(self) -> dict[str, Any]:
        return ema_training_state(self, self.model.net, "net", self._parts())

    def restore(self, state: dict[str, Any], path: Path) -> None:
        restore_ema_training(self, state, path, self.model.net, "net", self._parts())

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def train(
    config: L2LFlowsConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_showers: int | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train L2LFlows on the image file ``data_path`` (its first ``max_showers``); checkpoint in
    ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses (``nll_energy`` and
    ``nll_cells``: negative log-likelihood per feature of the training batches, ``val``: their
    sum for the EMA flows on the held-back validation showers).
    """
    return train_run(
        config,
        data_path,
        out_dir,
        check_state=check_state,
        load=lambda path: load_images(path, max_showers),
        make_trainer=_Trainer,
        resume=resume,
        progress=progress,
        max_minutes=max_minutes,
    )


__all__ = ["CONVERT_HINT", "STANDARDISATION_SHOWERS", "Images", "load_images", "train"]
