"""BIB-AE checkpoints: read with ``weights_only=True``, checked, turned into models
(:class:`~caloforge.models.checkpoint.DetectorCheckpoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caloforge.models.bibae.config import BIBAEConfig
from caloforge.models.bibae.model import BIBAE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from caloforge.models.checkpoint import DetectorCheckpoints

__all__ = ["check_state", "load_model", "model_from_state", "save_for_inference"]

_CHECKPOINTS = DetectorCheckpoints("BIB-AE", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, BIBAEConfig, BIBAE)
REQUIRED_KEYS = _CHECKPOINTS.REQUIRED_KEYS


def check_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` if it is a complete BIB-AE checkpoint of this version (else :class:`CheckpointError`)."""
    return _CHECKPOINTS.check_state(state, path)


def model_from_state(state: dict[str, Any], where: str | Path) -> BIBAE:
    """The model a checkpoint ``state`` describes, in evaluation mode."""
    return _CHECKPOINTS.model_from_state(state, where)


def load_model(path: str | Path) -> BIBAE:
    """A BIB-AE model from a checkpoint or run directory, ready to sample."""
    return _CHECKPOINTS.load_model(path)


def save_for_inference(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a run's checkpoint without its training state (optimisers, live weights, RNG)."""
    return _CHECKPOINTS.save_for_inference(checkpoint, out)
