"""BIB-AE checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caloforge.detector import DetectorError, detector_from_dict
from caloforge.models.bibae.config import BIBAEConfig
from caloforge.models.bibae.model import BIBAE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = ("config", "detector", "energy_range", "complete", "model")

__all__ = ["check_state", "load_model", "model_from_state", "save_for_inference"]


def check_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` if it is a complete BIB-AE checkpoint of this version (else :class:`CheckpointError`)."""
    return check_format(state, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, REQUIRED_KEYS, "BIB-AE")


def model_from_state(state: dict[str, Any], where: str | Path) -> BIBAE:
    """The model a checkpoint ``state`` describes (its EMA weights), in evaluation mode."""
    check_state(state, where)
    try:
        config = BIBAEConfig.from_dict(json.loads(state["config"]))
        det = detector_from_dict(json.loads(state["detector"]))
        model = BIBAE(config, det, tuple(state["energy_range"]))
        model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(
            f"'{where}': the checkpoint does not describe a valid BIB-AE model: {exc}"
        ) from exc
    model.complete = bool(state["complete"])
    return model.eval().requires_grad_(False)


def load_model(path: str | Path) -> BIBAE:
    """A BIB-AE model from a checkpoint or run directory, ready to sample."""
    path = checkpoint_file(path)
    return model_from_state(check_state(read_checkpoint(path), path), path)


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a run's checkpoint without its training state (critics, optimisers, live weights, RNG)."""
    path = checkpoint_file(checkpoint)
    state = check_state(read_checkpoint(path), path)
    model_from_state(state, path)  # refuse anything that would not load
    state.pop("train", None)
    save_checkpoint(state, out)
    return Path(out)
