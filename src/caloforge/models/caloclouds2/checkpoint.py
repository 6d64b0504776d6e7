"""CaloClouds II checkpoints: reading (``weights_only``, format and version checked), inference copies."""

from __future__ import annotations

import json
from typing import Any

from caloforge.calibrate import COG_CORRECTIONS, NPointsCalibration, RadialCalibration
from caloforge.detector import detector_from_dict
from caloforge.models.caloclouds2.config import CaloClouds2Config, SamplerSpec
from caloforge.models.caloclouds2.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloClouds2
from caloforge.models.checkpoint import Checkpoints

REQUIRED_KEYS = ("config", "detector", "max_points", "energy_range", "calibration", "complete", "model")


def _build(state: dict[str, Any]) -> CaloClouds2:
    """The model a checked ``state`` describes (EMA weights, on the CPU)."""
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
    return model


#: CaloClouds II checkpoints; a loaded model keeps its gradients (a distillation trains from one),
#: an inference copy (about a third of the size) keeps the metadata and the EMA model.
CHECKPOINTS = Checkpoints(
    "CaloClouds II",
    (CHECKPOINT_FORMAT,),
    CHECKPOINT_VERSION,
    REQUIRED_KEYS,
    _build,
    frozen=False,
    keep=("sampler", "cog_correction", "radial_calibration"),
)
check_state = CHECKPOINTS.check_state
read_model_checkpoint = CHECKPOINTS.read_state
model_from_state = CHECKPOINTS.model_from_state
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
