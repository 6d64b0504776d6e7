"""A tiny model family for tests and docs/architecture.md: analytic Gaussian point showers.

It has no network: its "checkpoint" holds a few numbers (points per GeV, transverse width,
depth of the shower maximum), and a shower is drawn from them. It implements the whole
family protocol, so it runs through ``caloforge generate`` (``--workers`` too), ``caloforge
bench`` and ``caloforge evaluate`` exactly like a trained family, and it trains through the
trainer contract (:class:`~caloforge.models.protocol.Training`): ``caloforge train gaussian``
fits its three numbers to a point file by gradient descent in the shared training loop
(checkpoints, ``--resume``, ``--max-minutes``, Ctrl-C). Register it with
``CALOFORGE_FAMILIES=gaussian_family:FAMILY`` (this directory on the Python path).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from caloforge.detector import get_detector
from caloforge.io import PointShowers, open_showers, read_showers
from caloforge.models._config import LoopConfig
from caloforge.models.checkpoint import check_format, save_checkpoint
from caloforge.models.protocol import (
    Capabilities,
    Family,
    GenerationError,
    GenerationRequest,
    Option,
    Plan,
    SamplerInfo,
    Training,
    batch_seed,
    energy_condition,
    steps_option,
)

FORMAT = "test-gaussian"
VERSION = 1

FAMILY = Family(
    name="gaussian",
    description="Gaussian test",
    formats=(FORMAT,),
    loader="gaussian_family:load_generator",
    capabilities=Capabilities(workers=True, precisions=("float32",)),
    trainings=(
        Training(
            command="gaussian",
            title="Gaussian test",
            summary="Fit the Gaussian test model to a point file.",
            config="gaussian_family:GaussianConfig",
            train="gaussian_family:train",
            data_help="Training point-cloud file.",
            options=(steps_option(), Option("lr", float, "Learning rate (default: the preset's).", min=0.0)),
        ),
    ),
)


@dataclass(frozen=True)
class GaussianConfig(LoopConfig):
    """Settings of a Gaussian fit: Adam steps over batches of showers (the loop's fields only,
    with this family's defaults)."""

    KIND: ClassVar[str] = "Gaussian"

    steps: int = 300
    batch_size: int = 16
    lr: float = 0.05
    log_every: int = 20


GaussianConfig.PRESETS = {"cpu": GaussianConfig(), "smoke": GaussianConfig(steps=200, lr=0.1, log_every=10)}


class _Model:
    """The three numbers as trainable tensors (log points per GeV, log width, depth)."""

    def __init__(self, detector: str, energy_range: list[float], config: GaussianConfig) -> None:
        import torch

        self.params = torch.nn.Parameter(torch.tensor([math.log(5.0), math.log(5.0), 3.0]))
        self.detector, self.energy_range, self.config = detector, energy_range, config
        self.complete = False

    def inference_state(self) -> dict[str, Any]:
        log_ppg, log_width, depth = self.params.detach().tolist()
        return {
            "format": FORMAT,
            "format_version": VERSION,
            "detector": self.detector,
            "energy_range": self.energy_range,
            "points_per_gev": math.exp(log_ppg),
            "width_mm": math.exp(log_width),
            "depth": depth,
            "config": json.dumps(self.config.to_dict()),
            "complete": self.complete,
        }

    def n_parameters(self) -> dict[str, int]:
        return {"gaussian": 3}


class _Trainer:
    """One Gaussian fit: each step matches the model's moments to a batch of showers'."""

    def __init__(self, config: GaussianConfig, data: dict[str, Any]) -> None:
        import torch

        self.config, self.data = config, data
        self.model = _Model(data["detector"], data["energy_range"], config)
        self.opt = torch.optim.Adam([self.model.params], lr=config.lr)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0
        self.last_losses: dict[str, float] = {}

    def one_step(self) -> list[tuple[str, float | None]]:
        import torch

        from caloforge.models._training import optimizer_step

        pick = torch.randint(len(self.data["ppg"]), (self.config.batch_size,), generator=self.gen)
        target = torch.stack(
            [self.data["ppg"][pick].log(), self.data["width"][pick].log(), self.data["depth"][pick]], 1
        )
        loss = ((self.model.params - target) ** 2).mean()
        if not optimizer_step(loss, torch.nn.ParameterList([self.model.params]), self.opt, 10.0):
            self.skipped += 1
            return [("moments", None)]
        return [("moments", loss.item())]

    def state(self) -> dict[str, Any]:
        return self.model.inference_state() | {
            "train": {
                "params": self.model.params.detach().clone(),
                "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(),
                "step": self.step,
                "skipped": self.skipped,
                "elapsed_s": self.elapsed_s,
            }
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        import torch

        tr = state["train"]
        with torch.no_grad():
            self.model.params.copy_(tr["params"])
        self.opt.load_state_dict(tr["opt"])
        self.gen.set_state(tr["gen"])
        self.step, self.skipped, self.elapsed_s = int(tr["step"]), int(tr["skipped"]), float(tr["elapsed_s"])

    def save(self, path: Path) -> None:
        from caloforge.models._training import save_finite_checkpoint

        save_finite_checkpoint(self.state(), path)


def _moments(path: str | Path) -> dict[str, Any]:
    """Per shower: points per GeV, transverse RMS per axis (mm) and the depth the model's
    layer distribution (Gamma(4, depth/3), mean 4 depth/3) would need."""
    import torch

    with open_showers(path) as f:
        detector = f.detector.name
    showers = read_showers(path)
    pts = showers.points
    n = np.maximum((pts[:, :, 3] > 0).sum(1), 1)
    real = pts[:, :, 3] > 0
    rms = np.sqrt((pts[:, :, :2] ** 2 * real[..., None]).sum((1, 2)) / (2 * n))
    depth = ((pts[:, :, 2] - 0.5) * real).sum(1) / n * 3.0 / 4.0
    energy = np.asarray(showers.energy, np.float64)
    as_tensor = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=torch.float32)  # noqa: E731
    return {
        "detector": detector,
        "energy_range": [float(energy.min()), float(energy.max())],
        "ppg": as_tensor(n / energy),
        "width": as_tensor(np.maximum(rms, 1e-3)),
        "depth": as_tensor(depth),
    }


def _check_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    return check_format(state, path, FORMAT, VERSION, ("detector", "config"), "Gaussian test")


def train(
    config: GaussianConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: Any = None,
    max_minutes: float | None = None,
) -> Any:
    """Fit the Gaussian model to the point file ``data_path`` in the shared training loop."""
    from caloforge.models._training import train_run

    return train_run(
        config,
        data_path,
        out_dir,
        check_state=_check_state,
        load=_moments,
        make_trainer=_Trainer,
        resume=resume,
        progress=progress,
        max_minutes=max_minutes,
    )


def save_model(path: Path, points_per_gev: float = 20.0, width_mm: float = 15.0, depth: float = 9.0) -> Path:
    """Write a Gaussian "checkpoint" for ild-ecal photons at 10-90 GeV."""
    state = {
        "format": FORMAT,
        "format_version": VERSION,
        "detector": "ild-ecal",
        "energy_range": [10.0, 90.0],
        "points_per_gev": points_per_gev,
        "width_mm": width_mm,
        "depth": depth,
    }
    save_checkpoint(state, path)
    return path


class GaussianGenerator:
    """Points with Gaussian x, y (width ``width_mm``) and depth (around layer ``depth``)."""

    family = "gaussian"
    label = "gaussian"
    output = "points"
    particle = "gamma"

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.complete = bool(state.get("complete", True))
        self.detector = get_detector(state["detector"])
        self.conditions = (energy_condition(state["energy_range"]),)

    def plan(self, request: GenerationRequest) -> Plan:
        if request.sampler not in (None, "exact"):
            raise GenerationError(f"unknown sampler '{request.sampler}': the Gaussian model samples 'exact'")
        if request.precision not in ("auto", "float32") or request.device != "cpu":
            raise GenerationError("the Gaussian model runs in float32 on the CPU")
        return Plan(SamplerInfo("exact", 1, 0), allow_extrapolation=request.allow_extrapolation)

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        rng = np.random.default_rng(batch_seed(seed, index))
        energy = np.asarray(conditions["energy"], np.float64)
        n = np.maximum(1, rng.poisson(self.state["points_per_gev"] * energy))
        points = np.zeros((len(energy), int(n.max()), 4), np.float32)
        n_layers = self.detector.n_layers
        for i, k in enumerate(n):
            points[i, :k, :2] = rng.normal(0.0, self.state["width_mm"], (k, 2))
            layer = np.clip(np.rint(rng.gamma(4.0, self.state["depth"] / 3.0, k)), 0, n_layers - 1)
            points[i, :k, 2] = layer + 0.5
            points[i, :k, 3] = rng.exponential(1.0, k) * energy[i] * 10.0 / k  # ~1 % sampling fraction, MeV
        return PointShowers(energy, points)

    def describe(self) -> dict[str, Any]:
        return {k: self.state[k] for k in ("points_per_gev", "width_mm", "depth")}


def load_generator(path: Path, state: dict[str, Any]) -> GaussianGenerator:
    return GaussianGenerator(check_format(state, path, FORMAT, VERSION, ("detector",), "Gaussian test"))
