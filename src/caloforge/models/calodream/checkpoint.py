"""CaloDREAM checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from typing import Any

from caloforge.detector import detector_from_dict
from caloforge.models.calodream.config import CaloDreamConfig
from caloforge.models.calodream.model import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CaloDream,
)
from caloforge.models.calodream.solver import SolverSpec
from caloforge.models.checkpoint import Checkpoints
from caloforge.models.nn.quantile_map import QuantileMap


def _build(state: dict[str, Any]) -> CaloDream:
    """The part a checked ``state`` describes (embedded energy network and VAE included)."""
    config = CaloDreamConfig.from_dict(json.loads(state["config"]))
    det = detector_from_dict(json.loads(state["detector"]))
    model = CaloDream(config, det, state["part"], tuple(state["energy_range"]), bool(state["latent"]))
    if state.get("vae_model") is not None:
        model.vae_model = CHECKPOINTS.model_from_state(state["vae_model"], "the embedded VAE")
    if state.get("energy_model") is not None:
        model.energy_model = CHECKPOINTS.model_from_state(
            state["energy_model"], "the embedded energy network"
        )
    model.load_state_dict(state["model"])
    model.sampler = {k: SolverSpec.from_dict(v) for k, v in state["sampler"].items()}
    if state.get("calibration") is not None:
        model.calibration = QuantileMap.from_dict(state["calibration"])
    return model


CHECKPOINTS = Checkpoints(
    "CaloDREAM",
    (CHECKPOINT_FORMAT,),
    CHECKPOINT_VERSION,
    ("part", "latent", "config", "detector", "energy_range", "complete", "sampler", "model"),
    _build,
)
check_state = CHECKPOINTS.check_state
read_state = CHECKPOINTS.read_state
model_from_state = CHECKPOINTS.model_from_state
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
