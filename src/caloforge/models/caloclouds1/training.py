"""CaloClouds (I) training: EPiC encoder + DDPM PointWise Net (a VAE whose decoder is the
diffusion model) and the Latent Flow, in one checkpointed, resumable loop; the Shower Flow is
borrowed, frozen, from a CaloClouds II model trained on the same kind of showers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.calibrate import NPointsCalibration, fit_n_points_calibration
from caloforge.detector import Detector
from caloforge.models._distributed import shard, world
from caloforge.models._placement import HOST, Placement, rand, randn
from caloforge.models._training import (
    Progress,
    Term,
    TrainResult,
    combine_terms,
    distributed_step,
    locked_run,
    open_run,
    placement_of,
    run_to_end,
    save_finite_checkpoint,
    seeded,
)
from caloforge.models.caloclouds1.checkpoint import check_state
from caloforge.models.caloclouds1.config import CaloClouds1Config
from caloforge.models.caloclouds1.model import CaloClouds1
from caloforge.models.nn.ddpm import ddpm_loss, ddpm_noise
from caloforge.models.nn.ema import EMA
from caloforge.models.nn.pointwise import PointScaler, dequantize
from caloforge.models.nn.showerflow import ShowerFlow
from caloforge.models.pointdata import PointRunState, TrainingData, fit_point_scaler, load_training_data


def borrow_flow(model: str | Path, detector: Detector) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """The Shower Flow of the point-cloud model ``model`` (shipped name, run directory or file):
    its weights, its settings and where it came from. Its detector must be ``detector``."""
    from caloforge.models.registry import load_generator, resolve_model

    path = resolve_model(model)
    donor = getattr(load_generator(path), "model", None)
    flow = getattr(donor, "flow", None)
    if not isinstance(flow, ShowerFlow):
        raise ValueError(f"--flow-from '{model}' has no Shower Flow: give a CaloClouds II model")
    if donor.detector.to_dict() != detector.to_dict():  # type: ignore[union-attr]
        raise ValueError(
            f"--flow-from '{model}' was trained for detector '{donor.detector.name}', the data are "  # type: ignore[union-attr]
            f"'{detector.name}': give a Shower Flow of the same detector"
        )
    return {k: v.clone() for k, v in flow.state_dict().items()}, dict(flow.settings), str(path)


def point_batch(
    data: TrainingData,
    scaler: PointScaler,
    batch_size: int,
    points: int,
    encoder_points: int,
    gen: torch.Generator,
    place: Placement = HOST,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A training batch on ``place``'s device: ``points`` random cached points of
    ``batch_size`` random showers for the diffusion loss and an independent draw of
    ``encoder_points`` for the encoder, both dequantised and scaled with their real-point
    masks; the incident energies and N (random numbers drawn with ``gen`` on the host)."""
    idx = torch.randint(len(data.energy), (batch_size,), generator=gen)
    cached = place.put(data.points[idx])
    valid = cached[..., 3] > 0
    out = []
    for k in (points, encoder_points):
        keys = rand(valid.shape, gen, cached.device) + (~valid) * 2.0  # padding sorts last
        take = keys.argsort(dim=1)[:, :k]
        pts = dequantize(cached.gather(1, take.unsqueeze(-1).expand(-1, -1, 4)), data.point_pitch_mm, gen)
        mask = valid.gather(1, take)
        out += [torch.where(mask.unsqueeze(-1), scaler(pts), 0.0), mask]
    return (*out, place.put(data.energy[idx]), place.put(data.stats.n_points[idx]))  # type: ignore[return-value]


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the latent, averaged over the batch."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=-1).mean()


class _Trainer(PointRunState):
    """The mutable state of a training run, and one step of it.

    Data-parallel as CaloClouds II (every rank draws the global batch and its noise, the
    terms of its share weighted by :func:`combine_terms`). On a device the encoder and the
    PointWise Net run under bfloat16 autocast where the placement asks for it (``amp``: a
    denoising loss; the KL term is taken in float32), the Latent Flow in float32."""

    distributed = True
    amp = True

    def __init__(
        self,
        config: CaloClouds1Config,
        data: TrainingData,
        flow_config: dict[str, Any],
        flow_state: dict[str, Tensor] | None,
        flow_source: str = "",
    ) -> None:
        self.config, self.data, self.flow_source = config, data, flow_source
        self.model = seeded(
            config.seed,
            lambda: CaloClouds1(
                config, data.detector, int(data.stats.n_points.max()), data.energy_range, flow_config
            ),
        )
        if flow_state is not None:
            self.model.flow.load_state_dict(flow_state)
        self.model.flow.requires_grad_(False)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        fit_point_scaler(self.model.scaler, data, torch.Generator().manual_seed(config.seed + 2))
        self.train_net = self.model.net
        self.ema = EMA(self.train_net, config.ema_max_decay)
        self.model.net = self.ema.module  # the container samples with the averaged weights
        self.vae = nn.ModuleList([self.train_net, self.model.encoder])  # trained together
        self.opt = torch.optim.RAdam(self.vae.parameters(), lr=config.lr)
        self.opt_latent = torch.optim.Adam(self.model.latent_flow.parameters(), lr=config.latent_flow_lr)
        self.step = 0
        self.skipped = 0
        self.elapsed_s = 0.0
        self.last_losses: dict[str, float] = {}

    def one_step(self) -> list[tuple[str, float | None]]:
        """One update of encoder + PointWise Net (DDPM loss + KL) and one of the Latent Flow."""
        cfg, model = self.config, self.model
        x, mask, xe, mask_e, energy, n = point_batch(
            self.data,
            model.scaler,
            cfg.batch_size,
            cfg.points_per_shower,
            cfg.encoder_points,
            self.gen,
            self.place,
        )
        eps = randn((len(x), cfg.latent_dim), self.noise_gen, x.device)  # the global batch's draws
        t, noise = ddpm_noise(x, model.schedule, self.noise_gen)
        mine = shard(len(x))
        showers = mine.stop - mine.start
        energy, n, mask = energy[mine], n[mine], mask[mine]
        cond = model.condition(energy, n)
        with self.place.autocast():
            mu, logvar = model.encoder(xe[mine], mask_e[mine], cond)
            mu, logvar = mu.float(), logvar.float()
            latent = mu + (0.5 * logvar).exp() * eps[mine]
            kl = kl_divergence(mu, logvar)
            rec = ddpm_loss(
                self.train_net,
                x[mine],
                {"energy": energy, "n_points": n, "latent": latent},
                model.schedule,
                t[mine],
                noise[mine],
                mask,
            )
        terms = [Term("ddpm_loss", rec.float(), units=mask.sum()), Term("kl", kl, weight=cfg.kl_weight)]
        loss, logged = combine_terms(terms, showers)
        value = self._update(loss, self.vae, self.opt)
        if value is not None:
            self.ema.update(self.train_net)
        flow_nll = -model.latent_flow(cond).log_prob(latent.detach()).mean() / cfg.latent_dim
        flow_loss, _ = combine_terms([Term("latent_flow_loss", flow_nll)], showers)
        flow_value = self._update(flow_loss, model.latent_flow, self.opt_latent)
        ok = value is not None
        return [*((name, v if ok else None) for name, v in logged), ("latent_flow_loss", flow_value)]

    def _update(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> float | None:
        value = distributed_step(loss, module, optimizer, self.config.grad_clip)
        if value is None:
            self.skipped += 1
        return value

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": self.opt, "latent_flow": self.opt_latent}

    def state(self) -> dict[str, Any]:
        return super().state() | {"flow_source": self.flow_source}

    def save(self, path: Path) -> None:
        save_finite_checkpoint(self.state(), path)


def fit_calibration(
    model: CaloClouds1,
    data: TrainingData,
    showers: int,
    refinements: int,
    seed: int,
    progress: Progress | None,
) -> NPointsCalibration:
    """The number-of-points calibration of ``model`` on ``showers`` training showers' energies."""
    from caloforge.models.caloclouds1.generation import generate_batch

    pick = torch.randperm(len(data.energy), generator=torch.Generator().manual_seed(seed + 3))[:showers]
    model.eval()

    def set_calibration(calibration: NPointsCalibration) -> None:
        model.calibration = calibration

    return fit_n_points_calibration(
        lambda energy, gen: generate_batch(model, energy, gen),
        set_calibration,
        model.detector,
        model.max_points,
        data.energy[pick],
        data.stats.n_points.numpy(),
        data.hits,
        refinements,
        seed,
        progress,
    )


@locked_run
def train(
    config: CaloClouds1Config,
    data_path: str | Path,
    out_dir: str | Path,
    flow_from: str | Path = "caloclouds2",
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
    device: str = "cpu",
    precision: str = "auto",
) -> TrainResult:
    """Train CaloClouds (I) on the point-cloud file ``data_path``; checkpoint in ``out_dir``.

    ``flow_from``: the CaloClouds II model whose Shower Flow is used (frozen; default the
    shipped one). Stages ``load``, ``train`` and ``calibrate`` go to ``progress``;
    ``max_minutes``, Ctrl-C, ``resume``, ``train_log.jsonl``, ``device``, ``precision`` and
    data-parallel runs as for CaloClouds II; the calibration runs on the CPU.
    """
    start = time.monotonic()
    ckpt, state = open_run(out_dir, config, resume, check_state)
    place = placement_of(_Trainer, config, device, precision)  # refused settings cost no data pass
    data = load_training_data(Path(data_path), config, progress, model="CaloClouds")
    if state is None:
        flow_state, flow_config, source = borrow_flow(flow_from, data.detector)
    else:
        flow_state, flow_config, source = None, json.loads(state["flow_config"]), state.get("flow_source", "")
    trainer = _Trainer(config, data, flow_config, flow_state, source)
    trainer.place_on(place)
    run_to_end(trainer, config, ckpt, state, progress, max_minutes, start)
    model = trainer.model
    if not world().main:  # rank 0 writes and calibrates
        return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, {})
    trainer.save(ckpt)  # the weights are safe even if the calibration below is interrupted
    model.to("cpu")
    fit_calibration(
        model, data, config.calibration_showers, config.calibration_refinements, config.seed, progress
    )
    trainer.save(ckpt)
    return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, model.n_parameters())
