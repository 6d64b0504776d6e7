"""BIB-AE checkpoints: read with ``weights_only=True``, checked, turned into models
(:func:`~caloforge.models.checkpoint.detector_checkpoints`)."""

from __future__ import annotations

from caloforge.models.bibae.config import BIBAEConfig
from caloforge.models.bibae.model import BIBAE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from caloforge.models.checkpoint import detector_checkpoints

__all__ = ["CHECKPOINTS", "load_model", "save_for_inference"]

CHECKPOINTS = detector_checkpoints("BIB-AE", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, BIBAEConfig, BIBAE)
load_model = CHECKPOINTS.load_model
save_for_inference = CHECKPOINTS.save_for_inference
