"""CaloDREAM checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caloforge.detector import DetectorError, detector_from_dict
from caloforge.models.calodream.config import CaloDreamConfig
from caloforge.models.calodream.model import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CaloDream,
)
from caloforge.models.calodream.solver import SolverSpec
from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.nn.quantile_map import QuantileMap
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = ("part", "latent", "config", "detector", "energy_range", "complete", "sampler", "model")


def check_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` if it is a complete CaloDREAM checkpoint of this version (else :class:`CheckpointError`)."""
    return check_format(state, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, REQUIRED_KEYS, "CaloDREAM")


def read_state(path: str | Path) -> dict[str, Any]:
    """Read and check a CaloDREAM checkpoint (file or run directory; tensors and plain data only)."""
    path = checkpoint_file(path)
    return check_state(read_checkpoint(path, require_format=False), path)


def model_from_state(state: dict[str, Any], where: str | Path) -> CaloDream:
    """The part a checkpoint ``state`` describes (embedded energy network and VAE included)."""
    check_state(state, where)
    try:
        config = CaloDreamConfig.from_dict(json.loads(state["config"]))
        det = detector_from_dict(json.loads(state["detector"]))
        model = CaloDream(config, det, state["part"], tuple(state["energy_range"]), bool(state["latent"]))
        if state.get("vae_model") is not None:
            model.vae_model = model_from_state(state["vae_model"], where)
        if state.get("energy_model") is not None:
            model.energy_model = model_from_state(state["energy_model"], where)
        model.load_state_dict(state["model"])
        model.sampler = {k: SolverSpec.from_dict(v) for k, v in state["sampler"].items()}
        if state.get("calibration") is not None:
            model.calibration = QuantileMap.from_dict(state["calibration"])
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(
            f"'{where}': the checkpoint does not describe a valid CaloDREAM model: {exc}"
        ) from exc
    model.complete = bool(state["complete"])
    return model.eval().requires_grad_(False)


def load_model(path: str | Path) -> CaloDream:
    """A CaloDREAM part (energy, shape or VAE) from a checkpoint or run directory, ready to sample."""
    path = checkpoint_file(path)
    return model_from_state(read_state(path), path)


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a run's checkpoint without its training state (optimiser, live weights, RNG)."""
    path = checkpoint_file(checkpoint)
    state = read_state(path)
    model_from_state(state, path)  # refuse anything that would not load
    state.pop("train", None)
    save_checkpoint(state, out)
    return Path(out)
