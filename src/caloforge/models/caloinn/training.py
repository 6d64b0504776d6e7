"""CaloINN training: maximum likelihood, one-cycle schedule, EMA; checkpointed and resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.detector import Detector, PolarGrid
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
from caloforge.models.caloinn.checkpoint import check_state
from caloforge.models.caloinn.config import CaloINNConfig
from caloforge.models.caloinn.model import CaloINN
from caloforge.models.nn.coupling import gaussian_log_prob
from caloforge.models.nn.ema import EMA

#: Showers the standardisation is fitted on (the first of the training split).
STANDARDISATION_SHOWERS = 4000


@dataclass
class Voxels:
    """A voxel file in memory: detector, incident energies (GeV), voxels (MeV), energy range."""

    detector: Detector
    energy: Tensor
    voxels: Tensor
    energy_range: tuple[float, float]


def load_voxels(path: str | Path, max_showers: int | None = None, min_showers: int = 20) -> Voxels:
    """The showers of a voxel file (the first ``max_showers``), checked for what CaloINN needs
    (the reader refuses non-finite values itself)."""
    path = Path(path)
    with open_showers(path) as f:
        det = f.detector
        if f.kind != "voxels":
            raise ValueError(f"'{path}' holds {f.kind}: CaloINN trains on voxel files (simulate --voxel-out)")
        if not isinstance(det.readout, PolarGrid):
            raise ValueError(f"'{path}' is for detector '{det.name}' without a voxel readout")
        attrs = dict(f.attrs)
        chunks = list(f.iter_chunks(2000, stop=max_showers))
    if not chunks:
        raise ValueError(f"'{path}' holds no showers")
    energy = torch.from_numpy(np.concatenate([c.energy for c in chunks]).astype(np.float32))
    voxels = torch.from_numpy(np.concatenate([c.voxels for c in chunks]).astype(np.float32))
    if len(energy) < min_showers:
        raise ValueError(f"'{path}' holds {len(energy)} showers: at least {min_showers} are needed")
    lo = float(attrs.get("energy_min_gev", energy.min()))
    hi = float(attrs.get("energy_max_gev", energy.max()))
    return Voxels(det, energy, voxels, (lo, hi))


class _Trainer:
    """Mutable state of one CaloINN training run, and one step of it."""

    def __init__(self, config: CaloINNConfig, data: Voxels) -> None:
        self.config, self.data = config, data
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = CaloINN(config, data.detector, data.energy_range)
        self.gen = torch.Generator().manual_seed(config.seed)
        n = len(data.energy)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 1))
        n_val = round(config.val_fraction * n)
        self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        fit = self.train_idx[:STANDARDISATION_SHOWERS]
        fit_gen = torch.Generator().manual_seed(config.seed + 3)
        self.model.fit_standardisation(data.voxels[fit], data.energy[fit], fit_gen)
        self.ema = EMA(self.model.flow, config.ema_decay)
        self.opt = torch.optim.AdamW(self.model.flow.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=config.lr, total_steps=config.steps)
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

    def _loss(self, flow: nn.Module, idx: Tensor, gen: torch.Generator) -> Tensor:
        m = self.model
        e = self.data.energy[idx]
        x = m.features(self.data.voxels[idx], e, gen)
        z, ladj = flow(x, m.energy_condition(e))
        return -(gaussian_log_prob(z) + ladj).mean() / x[0].numel()

    def one_step(self) -> list[tuple[str, float | None]]:
        cfg = self.config
        pick = torch.randint(len(self.train_idx), (cfg.batch_size,), generator=self.gen)
        self.model.flow.train()
        loss = self._loss(self.model.flow, self.train_idx[pick], self.gen)
        value: float | None = loss.item()
        if optimizer_step(loss, self.model.flow, self.opt, cfg.grad_clip):
            self.ema.update(self.model.flow)
        else:
            self.skipped += 1
            value = None
        if self.step + 1 < cfg.steps:  # OneCycleLR refuses a step past its total
            self.sched.step()
        out: list[tuple[str, float | None]] = [("nll", value)]
        if len(self.val_idx) and (self.step + 1) % cfg.val_every == 0:
            out.append(("val", self.validation_loss()))
        return out

    @torch.no_grad()
    def validation_loss(self) -> float:
        """NLL per feature of the EMA flow on the validation showers (fixed slab noise)."""
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        n = min(len(self.val_idx), 2048)
        total = 0.0
        for lo in range(0, n, 256):
            idx = self.val_idx[lo : min(lo + 256, n)]
            total += self._loss(self.ema.module, idx, gen).item() * len(idx)
        return total / n

    def _parts(self) -> dict[str, Any]:
        return {"opt": self.opt, "sched": self.sched}

    def state(self) -> dict[str, Any]:
        return ema_training_state(self, self.model.flow, "flow", self._parts())

    def restore(self, state: dict[str, Any], path: Path) -> None:
        restore_ema_training(self, state, path, self.model.flow, "flow", self._parts())

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def train(
    config: CaloINNConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    max_showers: int | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train CaloINN on the voxel file ``data_path`` (its first ``max_showers``); checkpoint in
    ``out_dir``.

    Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at the end; ``resume=True``
    continues exactly; ``out_dir/train_log.jsonl`` gets the losses (``nll``: negative
    log-likelihood per feature of the training batches, ``val``: of the EMA flow on the
    held-back validation showers).
    """
    return train_run(
        config,
        data_path,
        out_dir,
        check_state=check_state,
        load=lambda path: load_voxels(path, max_showers),
        make_trainer=_Trainer,
        resume=resume,
        progress=progress,
        max_minutes=max_minutes,
    )


__all__ = ["STANDARDISATION_SHOWERS", "Voxels", "load_voxels", "train"]
