"""CaloClouds II training: both parts in one interleaved, checkpointed, resumable loop."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from caloforge.calibrate import NPointsCalibration
from caloforge.models._distributed import shard, world
from caloforge.models._placement import HOST, Placement, rand
from caloforge.models._training import (
    Progress,
    TrainResult,
    distributed_step,
    locked_run,
    open_run,
    placement_of,
    run_to_end,
    save_finite_checkpoint,
    seeded,
)
from caloforge.models.caloclouds2.calibration import calibration_energies, fit_calibration
from caloforge.models.caloclouds2.checkpoint import (
    check_state,
)
from caloforge.models.caloclouds2.config import CaloClouds2Config, SamplerSpec
from caloforge.models.caloclouds2.model import CaloClouds2
from caloforge.models.nn.edm import EDMDenoiser, edm_loss, edm_noise
from caloforge.models.nn.ema import EMA
from caloforge.models.nn.pointwise import (
    PointScaler,
    dequantize,
)
from caloforge.models.pointdata import PointRunState, TrainingData, fit_point_scaler, load_training_data

# --------------------------------------------------------------------------- training


def point_batch(
    data: TrainingData,
    scaler: PointScaler,
    batch_size: int,
    points: int,
    gen: torch.Generator,
    place: Placement = HOST,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A training batch on ``place``'s device: ``points`` random cached points of ``batch_size``
    random showers, dequantised and scaled, ``(B, points, 4)``; the real-point mask; the
    conditioning (random numbers drawn with ``gen`` on the host)."""
    idx = torch.randint(len(data.energy), (batch_size,), generator=gen)
    cached = place.put(data.points[idx])
    valid = cached[..., 3] > 0
    keys = rand(valid.shape, gen, cached.device) + (~valid) * 2.0
    take = keys.argsort(dim=1)[:, :points]
    pts = cached.gather(1, take.unsqueeze(-1).expand(-1, -1, 4))
    mask = valid.gather(1, take)
    pts = dequantize(pts, data.point_pitch_mm, gen)
    x0 = torch.where(mask.unsqueeze(-1), scaler(pts), 0.0)
    return x0, mask, place.put({"energy": data.energy[idx], "n_points": data.stats.n_points[idx]})


class _Trainer(PointRunState):
    """The mutable state of a training run, and one step of it.

    Data-parallel on several processes (``distributed``): every rank draws the same global
    batch and noise from the same streams and computes the loss of its share
    (:func:`caloforge.models._distributed.shard`), weighted so the shares sum to the global
    loss; the gradients are summed (:func:`distributed_step`). One process is the case of one
    share, bit for bit the same as before.

    On a device (:meth:`place_on`) the PointWise Net trains under bfloat16 autocast where the
    placement asks for it (``amp``: a mean-squared denoising loss); the Shower Flow always
    trains in float32 (its log-determinants need the precision).
    """

    distributed = True
    amp = True

    def __init__(self, config: CaloClouds2Config, data: TrainingData) -> None:
        self.config, self.data = config, data
        self.model = seeded(
            config.seed,
            lambda: CaloClouds2(config, data.detector, int(data.stats.n_points.max()), data.energy_range),
        )
        self.model.sampler = SamplerSpec(
            "heun", config.calibration_sampler_steps, sigma_max=config.sampler_sigma_max
        )
        self.gen = torch.Generator().manual_seed(config.seed)
        self._fit_standardisation()
        self.train_net = self.model.net
        self.ema = EMA(self.train_net, config.ema_max_decay)
        self.model.net = self.ema.module  # the container samples with the averaged weights
        self.opt_net = torch.optim.RAdam(self.train_net.parameters(), lr=config.lr)
        self.opt_flow = torch.optim.Adam(self.model.flow.parameters(), lr=config.flow_lr)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.skipped = 0
        self.elapsed_s = 0.0
        self.last_losses: dict[str, float] = {}

    def _fit_standardisation(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        data = self.data
        self.model.flow.fit_standardisation(self.model.flow.features_from_stats(data.stats, data.energy, gen))
        fit_point_scaler(self.model.scaler, data, gen)

    def flow_steps_before(self, step: int) -> int:
        """Flow updates done in the first ``step`` iterations (spread evenly over the loop)."""
        return step * self.config.flow_steps // self.config.steps

    def _update(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> float | None:
        """:func:`distributed_step`; returns the global loss, or None (and counts a skip)."""
        value = distributed_step(loss, module, optimizer, self.config.grad_clip)
        if value is None:
            self.skipped += 1
        return value

    def net_step(self) -> float | None:
        cfg = self.config
        x0, mask, cond = point_batch(
            self.data, self.model.scaler, cfg.batch_size, cfg.points_per_shower, self.gen, self.place
        )
        sigma, noise = edm_noise(x0, cfg.p_mean, cfg.p_std, self.noise_gen)
        mine = shard(len(x0))
        with self.place.autocast():
            loss = edm_loss(
                EDMDenoiser(self.train_net, cfg.sigma_data),
                x0[mine],
                {k: v[mine] for k, v in cond.items()},
                mask=mask[mine],
                noise=(sigma[mine], noise[mine]),
            )
        if world().size > 1:  # this share's part of the mean over the global batch's points
            loss = loss * (mask[mine].sum() / mask.sum().clamp_min(1))
        value = self._update(loss, self.train_net, self.opt_net)
        if value is not None:
            self.ema.update(self.train_net)
        return value

    def one_step(self) -> list[tuple[str, float | None]]:
        """One PointWise Net update and the flow updates that fall on this step."""
        k = self.step
        losses = [("edm_loss", self.net_step())]
        for j in range(self.flow_steps_before(k), self.flow_steps_before(k + 1)):
            losses.append(("flow_loss", self.flow_step(j)))
        return losses

    def flow_step(self, flow_step: int) -> float | None:
        cfg, data = self.config, self.data
        # Cosine decay to 1 % of the initial rate over the flow's share of the loop.
        progress = min(flow_step / max(cfg.flow_steps, 1), 1.0)
        for group in self.opt_flow.param_groups:
            group["lr"] = cfg.flow_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
        idx = torch.randint(len(data.energy), (cfg.flow_batch_size,), generator=self.gen)
        flow = self.model.flow
        feats = self.place.put(flow.features_from_stats(data.stats[idx], data.energy[idx], self.gen))
        mine = shard(len(idx))
        energy = self.place.put(data.energy[idx][mine])
        loss = -flow.log_prob(feats[mine], energy).mean() / flow.n_features
        if world().size > 1:
            loss = loss * ((mine.stop - mine.start) / len(idx))
        return self._update(loss, flow, self.opt_flow)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt_net, "flow": self.opt_flow}

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def _fit_calibration(trainer: _Trainer, progress: Progress | None) -> NPointsCalibration:
    """The calibration at the end of training, on the training showers."""
    model, data, cfg = trainer.model, trainer.data, trainer.config
    energies = calibration_energies(data.energy, cfg.calibration_showers, cfg.seed)
    return fit_calibration(
        model,
        energies,
        data.stats.n_points.numpy(),
        data.hits,
        cfg.calibration_refinements,
        cfg.seed,
        progress,
    )


@locked_run
def train(
    config: CaloClouds2Config,
    data_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
    device: str = "cpu",
    precision: str = "auto",
) -> TrainResult:
    """Train CaloClouds II on the point-cloud file ``data_path``; checkpoint in ``out_dir``.

    ``progress(stage, done, total)`` is called with stages ``load``, ``train`` (every step)
    and ``calibrate``. ``max_minutes`` stops the loop (counted from the call) with a
    resumable checkpoint; the calibration is still fitted so the checkpoint can generate.
    Ctrl-C writes a checkpoint after the current step and re-raises ``KeyboardInterrupt``.
    ``out_dir/train_log.jsonl`` receives running losses every ``log_every`` steps.
    ``resume=True`` continues ``out_dir/checkpoint.pt`` exactly (same data and config needed);
    without it an existing checkpoint is an error rather than overwritten. ``device``,
    ``precision``: where it trains (:func:`~caloforge.models._training.placement_of`).
    """
    start = time.monotonic()
    ckpt, state = open_run(out_dir, config, resume, check_state)

    if world().size > min(config.batch_size, config.flow_batch_size):
        raise ValueError(
            f"{world().size} processes for batches of {config.batch_size} showers and "
            f"{config.flow_batch_size} flow samples: use at most "
            f"{min(config.batch_size, config.flow_batch_size)} processes"
        )
    place = placement_of(_Trainer, config, device, precision)  # refused settings cost no data pass
    data = load_training_data(Path(data_path), config, progress)
    trainer = _Trainer(config, data)
    trainer.place_on(place)
    run_to_end(trainer, config, ckpt, state, progress, max_minutes, start)
    if not world().main:  # rank 0 writes and calibrates
        return TrainResult.of(trainer, ckpt, config.steps, trainer.model.complete, start, {})
    trainer.save(ckpt)  # the weights are safe even if the calibration below is interrupted
    # Generation runs the PointWise Net on the training device and the rest on the CPU.
    trainer.model.to("cpu")
    trainer.model.net.to(trainer.place.device)
    trainer.model.calibration = _fit_calibration(trainer, progress)
    trainer.save(ckpt)
    model = trainer.model
    return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, model.n_parameters())
