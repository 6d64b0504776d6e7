"""CaloClouds (I) checkpoints: reading (``weights_only``, format and version checked), inference copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caloforge.calibrate import NPointsCalibration
from caloforge.detector import DetectorError, detector_from_dict
from caloforge.models.caloclouds1.config import CaloClouds1Config
from caloforge.models.caloclouds1.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloClouds1
from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = (
    "config", "detector", "flow_config", "max_points", "energy_range", "calibration", "complete", "model",
)  # fmt: skip


def check_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` if it is a complete CaloClouds checkpoint of this version (else :class:`CheckpointError`)."""
    return check_format(state, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, REQUIRED_KEYS, "CaloClouds")


def model_from_state(state: dict[str, Any], path: Path) -> CaloClouds1:
    """The model a checked checkpoint ``state`` describes (EMA weights, on the CPU, eval mode)."""
    try:
        config = CaloClouds1Config.from_dict(json.loads(state["config"]))
        detector = detector_from_dict(json.loads(state["detector"]))
        model = CaloClouds1(
            config,
            detector,
            int(state["max_points"]),
            tuple(state["energy_range"]),
            json.loads(state["flow_config"]),
        )
        model.load_state_dict(state["model"])
        model.calibration = NPointsCalibration.from_dict(state["calibration"])
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(f"'{path}': the checkpoint does not describe a valid model: {exc}") from exc
    model.complete = bool(state["complete"])
    return model.eval()


def load_model(path: str | Path) -> CaloClouds1:
    """Load a CaloClouds checkpoint (EMA weights, on the CPU); :class:`CheckpointError` for
    missing, corrupt or incompatible files."""
    path = checkpoint_file(path)
    return model_from_state(check_state(read_checkpoint(path, require_format=False), path), path)


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a training checkpoint without optimiser, RNG, encoder-training and training-network
    state: what :func:`load_model` and generation need, for shipping a model."""
    path = checkpoint_file(checkpoint)
    state = check_state(read_checkpoint(path, require_format=False), path)
    names = ("format", "format_version", "caloforge_version", "flow_source", *REQUIRED_KEYS)
    keep = {k: state[k] for k in names if k in state}
    save_checkpoint(keep, out)
    return Path(out)
