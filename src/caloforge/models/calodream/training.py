"""CaloDREAM training: one part at a time, checkpointed and resumable."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from caloforge.models._distributed import world
from caloforge.models._placement import rand, randn
from caloforge.models._training import (
    EMATrainer,
    Progress,
    Term,
    TrainResult,
    locked_run,
    open_run,
    placement_of,
    run_to_end,
    seeded,
)
from caloforge.models.calodream.checkpoint import check_state, load_model, model_from_state
from caloforge.models.calodream.config import CaloDreamConfig
from caloforge.models.calodream.data import VoxelData, load_voxel_data
from caloforge.models.calodream.generation import (
    shape_condition,
)
from caloforge.models.calodream.model import (
    PARTS,
    CaloDream,
)
from caloforge.models.calodream.variables import (
    _logit,
    dequantize_fractions,
)
from caloforge.models.nn.ema import EMA
from caloforge.models.nn.vae import vae_terms

# --------------------------------------------------------------------------- training


def _cfm_pair(x1: Tensor, gen: torch.Generator, per_element: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, target velocity)`` of the straight path from noise to ``x1``."""
    x0 = randn(x1.shape, gen, x1.device)
    t = rand(x1.shape if per_element else (len(x1),), gen, x1.device)
    tb = t if per_element else t.view(-1, *([1] * (x1.dim() - 1)))
    return (1 - tb) * x0 + tb * x1, t, x1 - x0


class _Trainer(EMATrainer):
    """Mutable state of one CaloDREAM training run, and one step of it. The flow-matching
    networks and the VAE train under bfloat16 autocast on a GPU (``amp``): their losses are
    mean squared errors and cross entropies, the ODE is solved in float32 at generation."""

    amp = True

    same_data = "resume with the same data"

    def __init__(self, config: CaloDreamConfig, part: str, data: VoxelData, vae: CaloDream | None) -> None:
        self.part = part
        self.model = seeded(
            config.seed,
            lambda: CaloDream(config, data.detector, part, data.energy_range, latent=vae is not None),
        )
        self.model.vae_model = vae
        self.start(config, data)
        self.model.cond_standard.fit(_logit(data.u[self.train_idx]))
        if part == "shape":
            fit_gen = torch.Generator().manual_seed(config.seed + 3)
            self.model.standard.fit(self._shape_x(self.train_idx[:4000], fit_gen, fitted=False))
        self.ema = EMA(self.model.net, config.ema_decay)
        self.opt = torch.optim.AdamW(self.model.net.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, config.steps, eta_min=config.min_lr)

    def _frac(self, idx: Tensor) -> Tensor:
        assert self.data.frac is not None
        return self.data.frac[idx].reshape(-1, 1, *self.model.grid)

    def _shape_x(self, idx: Tensor, gen: torch.Generator, fitted: bool = True) -> Tensor:
        put = self.place.put
        frac, e_layer = put(self.data.frac[idx]), put(self.data.e_layer[idx])  # type: ignore[index]
        if self.config.dequantize and not self.model.latent:
            frac = dequantize_fractions(frac, e_layer, self.data.detector.threshold_mev, gen)
        with torch.no_grad():  # unfitted: the standardisation itself is being fitted
            features = self.model.shape_features if fitted else self.model.raw_shape_features
            return features(frac, e_layer, gen)

    def inputs(self, idx: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        m, data, put = self.model, self.data, self.place.put
        e = put(data.energy[idx])
        if self.part == "energy":
            z = m.u_features(put(data.u[idx]))
            x_t, t, target = _cfm_pair(z, gen, per_element=True)
            return {"x_t": x_t, "t": t, "target": target, "z": z, "c": m.energy_condition(e)}
        if self.part == "vae":
            frac = put(self._frac(idx))
            return {"frac": frac, "eps": randn((len(idx), *m.net.latent_shape), gen, frac.device)}
        x1 = self._shape_x(idx, gen)
        x_t, t, target = _cfm_pair(x1, gen, per_element=False)
        return {"x_t": x_t, "t": t, "target": target, "c": shape_condition(m, e, put(data.u[idx]))}

    def terms(self, net: nn.Module, inputs: dict[str, Tensor]) -> list[Term]:
        """The flow-matching loss (``cfm``), or the VAE's cross entropy per non-empty layer
        (``ce``) and KL (``kl``, weighted by ``vae_beta``)."""
        if self.part == "vae":
            ce, kl, filled = vae_terms(net, inputs["frac"], inputs["eps"])  # type: ignore[arg-type]
            return [Term("ce", ce, units=filled), Term("kl", kl, weight=self.config.vae_beta)]
        if self.part == "energy":
            pred = net(inputs["x_t"], inputs["t"], inputs["z"], inputs["c"])
        else:
            pred = net(inputs["x_t"], inputs["t"], inputs["c"])
        return [Term("cfm", (pred - inputs["target"]).pow(2).mean())]

    def after_update(self) -> None:
        self.sched.step()

    def device_modules(self) -> list[nn.Module]:
        """The model, the EMA copy and a laViT's VAE (held outside the module tree)."""
        vae = self.model.vae_model
        return [*super().device_modules(), *([vae] if vae is not None else [])]

    def finished_model(self) -> CaloDream:
        """The model with the EMA weights (what is saved for inference)."""
        self.model.net.load_state_dict(self.ema.module.state_dict())
        return self.model


@locked_run
def train(
    config: CaloDreamConfig,
    part: str,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    energy_model: str | Path | None = None,
    vae_model: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    max_minutes: float | None = None,
    device: str = "cpu",
    precision: str = "auto",
) -> TrainResult:
    """Train one CaloDREAM part on the voxel file ``data_path``; checkpoint in ``out_dir``.

    ``part`` is ``energy``, ``shape`` (with ``vae_model``: the latent laViT) or ``vae``.
    ``energy_model`` (a finished energy run) is embedded in a shape checkpoint so that it
    generates showers on its own; ``resume=True`` with ``energy_model`` on a finished run
    embeds (or replaces) it afterwards. Checkpoints every ``checkpoint_minutes``, on Ctrl-C and at
    the end; ``resume=True`` continues exactly; ``out_dir/train_log.jsonl`` gets the losses.
    ``device``, ``precision``: where it trains (:func:`~caloforge.models._training.placement_of`;
    every part allows bfloat16 autocast); data-parallel on several processes (``--nproc``,
    torchrun).
    """
    start = time.monotonic()
    if part not in PARTS:
        raise ValueError(f"unknown CaloDREAM part '{part}': use one of {', '.join(PARTS)}")
    if part != "shape" and (energy_model is not None or vae_model is not None):
        raise ValueError("--energy-model and --vae only apply to the shape network")
    if vae_model is not None and config.shape_target != "logit-fraction":
        raise ValueError(
            f"shape target '{config.shape_target}' is for the full-space ViT; "
            "laViT (--vae) learns the VAE's latents"
        )
    ckpt, state = open_run(out_dir, config, resume, check_state)
    vae = _load_part(vae_model, "vae") if vae_model is not None else None
    energy = _load_part(energy_model, "energy") if energy_model is not None else None
    if progress is not None:
        progress("load", 0, 1)
    place = placement_of(_Trainer, config, device, precision)  # refused settings cost no data pass
    data = load_voxel_data(data_path, with_fractions=part != "energy")
    if progress is not None:
        progress("load", 1, 1)
    for other in (vae, energy):
        if other is not None and other.detector.name != data.detector.name:
            raise ValueError(
                f"the {other.part} model is for detector '{other.detector.name}', "
                f"the data for '{data.detector.name}'"
            )
    trainer = _Trainer(config, part, data, vae)
    trainer.place_on(place)
    run_to_end(trainer, config, ckpt, state, progress, max_minutes, start)
    if not world().main:  # rank 0 writes
        return TrainResult.of(trainer, ckpt, config.steps, trainer.model.complete, start, {}, part)
    if energy is None and state is not None and state.get("energy_model") is not None:
        energy = model_from_state(state["energy_model"], str(ckpt))  # keep what an earlier call embedded
    trainer.model.energy_model = energy
    trainer.save(ckpt)
    model = trainer.model
    return TrainResult.of(trainer, ckpt, config.steps, model.complete, start, model.n_parameters(), part)


def _load_part(path: str | Path, part: str) -> CaloDream:
    model = load_model(path)
    if model.part != part:
        raise ValueError(f"'{path}' is a CaloDREAM {model.part} model, a {part} model is needed here")
    return model
