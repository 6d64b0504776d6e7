"""L2LFlows checkpoints: read with ``weights_only=True``, checked, turned into models
(:func:`~caloforge.models.checkpoint.detector_checkpoints`)."""

from __future__ import annotations

from caloforge.models.checkpoint import detector_checkpoints
from caloforge.models.l2lflows.config import L2LFlowsConfig
from caloforge.models.l2lflows.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, L2LFlows

__all__ = ["CHECKPOINTS", "load_model", "save_for_inference"]

CHECKPOINTS = detector_checkpoints(
    "L2LFlows", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, L2LFlowsConfig, L2LFlows
)
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
