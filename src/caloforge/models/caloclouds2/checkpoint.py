"""CaloClouds II checkpoints: reading (``weights_only``, format and version checked), inference copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caloforge.calibrate import COG_CORRECTIONS, NPointsCalibration, RadialCalibration
from caloforge.detector import DetectorError, detector_from_dict
from caloforge.models.caloclouds2.config import CaloClouds2Config, SamplerSpec
from caloforge.models.caloclouds2.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloClouds2
from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = ("config", "detector", "max_points", "energy_range", "calibration", "complete", "model")


def check_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` if it is a complete CaloClouds II checkpoint of this version (else
    :class:`CheckpointError`)."""
    return check_format(state, path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, REQUIRED_KEYS, "CaloClouds II")


def read_model_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a CaloClouds II checkpoint file (tensors and plain data only)."""
    path = checkpoint_file(path)
    return check_state(read_checkpoint(path, require_format=False), path)


def model_from_state(state: dict[str, Any], path: Path) -> CaloClouds2:
    """The model a checked checkpoint ``state`` describes (EMA weights, on the CPU, eval mode)."""
    try:
        config = CaloClouds2Config.from_dict(json.loads(state["config"]))
        detector = detector_from_dict(json.loads(state["detector"]))
        model = CaloClouds2(config, detector, int(state["max_points"]), tuple(state["energy_range"]))
        model.load_state_dict(state["model"])
        model.calibration = NPointsCalibration.from_dict(state["calibration"])
        # Checkpoints written before the sampler was stored are EDM models sampled with Heun, 13 levels.
        model.sampler = SamplerSpec(**state.get("sampler", {}))
        model.cog_correction = str(state.get("cog_correction", "shift"))
        radial = state.get("radial_calibration")
        model.radial_calibration = None if radial is None else RadialCalibration.from_dict(radial)
        if model.cog_correction not in COG_CORRECTIONS:
            raise ValueError(f"unknown centre-of-gravity correction '{model.cog_correction}'")
    except (ValueError, TypeError, KeyError, RuntimeError, DetectorError) as exc:
        raise CheckpointError(f"'{path}': the checkpoint does not describe a valid model: {exc}") from exc
    model.complete = bool(state["complete"])
    return model.eval()


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a training checkpoint without optimiser, RNG and training-network state.

    What remains (metadata and the EMA model) is all :func:`load_model` and :func:`generate`
    need: about a third of the size, for shipping a model.
    """
    state = read_model_checkpoint(Path(checkpoint))
    keep = {
        k: state[k]
        for k in (
            "format",
            "format_version",
            "caloforge_version",
            "sampler",
            "cog_correction",
            "radial_calibration",
            *REQUIRED_KEYS,
        )
        if k in state
    }
    save_checkpoint(keep, out)
    return Path(out)


def load_model(path: str | Path) -> CaloClouds2:
    """Load a CaloClouds II checkpoint written by :func:`train` (EMA weights, on CPU).

    Raises :class:`CheckpointError` for missing, corrupt or incompatible files.
    """
    path = checkpoint_file(path)
    return model_from_state(read_model_checkpoint(path), path)
