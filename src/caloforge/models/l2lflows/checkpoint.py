"""L2LFlows checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caloforge.detector import DetectorError, detector_from_dict
from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.l2lflows.config import L2LFlowsConfig
from caloforge.models.l2lflows.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, L2LFlows
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = ("config", "detector", "energy_range", "complete", "model")


def check_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` if it is a complete L2LFlows checkpoint of this version (else :class:`CheckpointError`)."""
    return check_format(state, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, REQUIRED_KEYS, "L2LFlows")


def model_from_state(state: dict[str, Any], where: str | Path) -> L2LFlows:
    """The model a checkpoint ``state`` describes, in evaluation mode."""
    check_state(state, where)
    try:
        config = L2LFlowsConfig.from_dict(json.loads(state["config"]))
        det = detector_from_dict(json.loads(state["detector"]))
        model = L2LFlows(config, det, tuple(state["energy_range"]))
        model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(
            f"'{where}': the checkpoint does not describe a valid L2LFlows model: {exc}"
        ) from exc
    model.complete = bool(state["complete"])
    return model.eval().requires_grad_(False)


def load_model(path: str | Path) -> L2LFlows:
    """A L2LFlows model from a checkpoint or run directory, ready to sample."""
    path = checkpoint_file(path)
    return model_from_state(check_state(read_checkpoint(path), path), path)


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a run's checkpoint without its training state (optimiser, live weights, RNG)."""
    path = checkpoint_file(checkpoint)
    state = check_state(read_checkpoint(path), path)
    model_from_state(state, path)  # refuse anything that would not load
    state.pop("train", None)
    save_checkpoint(state, out)
    return Path(out)
