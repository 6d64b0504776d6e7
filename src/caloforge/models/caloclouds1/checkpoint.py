"""CaloClouds (I) checkpoints: reading (``weights_only``, format and version checked), inference copies."""

from __future__ import annotations

import json
from typing import Any

from caloforge.calibrate import NPointsCalibration
from caloforge.detector import detector_from_dict
from caloforge.models.caloclouds1.config import CaloClouds1Config
from caloforge.models.caloclouds1.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloClouds1
from caloforge.models.checkpoint import Checkpoints


def _build(state: dict[str, Any]) -> CaloClouds1:
    """The model a checked ``state`` describes (EMA weights, on the CPU)."""
    config = CaloClouds1Config.from_dict(json.loads(state["config"]))
    detector = detector_from_dict(json.loads(state["detector"]))
    flow_config = json.loads(state["flow_config"])
    model = CaloClouds1(config, detector, int(state["max_points"]), tuple(state["energy_range"]), flow_config)
    model.load_state_dict(state["model"])
    model.calibration = NPointsCalibration.from_dict(state["calibration"])
    return model


#: CaloClouds (I) checkpoints; an inference copy keeps the metadata and the EMA model (no
#: optimiser, RNG, encoder-training or training-network state).
CHECKPOINTS = Checkpoints(
    "CaloClouds",
    (CHECKPOINT_FORMAT,),
    CHECKPOINT_VERSION,
    ("config", "detector", "flow_config", "max_points", "energy_range", "calibration", "complete", "model"),
    _build,
    frozen=False,
    keep=("flow_source",),
)
check_state = CHECKPOINTS.check_state
model_from_state = CHECKPOINTS.model_from_state
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
