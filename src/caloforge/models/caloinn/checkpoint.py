"""CaloINN checkpoints: read with ``weights_only=True``, checked, turned into models
(:func:`~caloforge.models.checkpoint.detector_checkpoints`)."""

from __future__ import annotations

from caloforge.models.caloinn.config import CaloINNConfig
from caloforge.models.caloinn.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloINN
from caloforge.models.checkpoint import detector_checkpoints

__all__ = ["CHECKPOINTS", "load_model", "save_for_inference"]

CHECKPOINTS = detector_checkpoints("CaloINN", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CaloINNConfig, CaloINN)
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
