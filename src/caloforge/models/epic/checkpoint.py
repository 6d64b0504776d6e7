"""EPiC checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from caloforge.models.checkpoint import Checkpoints, checkpoint_file, save_checkpoint
from caloforge.models.epic.config import EPiCConfig
from caloforge.models.epic.model import CHECKPOINT_FORMATS, CHECKPOINT_VERSION, EPiCJetModel
from caloforge.models.protocol import CheckpointError


def _build(state: dict[str, Any]) -> EPiCJetModel:
    config = EPiCConfig.from_dict(json.loads(state["config"]))
    model = EPiCJetModel(config, str(state["jet_type"]), state["model"]["condition_table"].numpy())
    model.disc = None  # inference copies hold no critic
    model.load_state_dict(state["model"])
    if state["format"] != CHECKPOINT_FORMATS[config.variant]:
        raise CheckpointError(f"format {state['format']} does not match its variant {config.variant}")
    return model


#: EPiC checkpoints (any variant); the first format is the one named for a foreign file.
CHECKPOINTS = Checkpoints(
    "EPiC",
    (CHECKPOINT_FORMATS["fm"], *(f for v, f in CHECKPOINT_FORMATS.items() if v != "fm")),
    CHECKPOINT_VERSION,
    ("config", "jet_type", "complete", "model"),
    _build,
)
load_model = CHECKPOINTS.load_model

__all__ = ["CHECKPOINTS", "SAMPLING_FIELDS", "load_model", "save_for_inference"]


#: Sampling settings :func:`save_for_inference` may set in the copy (its generation defaults).
SAMPLING_FIELDS = ("sampler", "sample_steps", "jedi_clip")


def save_for_inference(checkpoint: str | Path, out: str | Path, **sampling: Any) -> Path:
    """Copy a run's checkpoint without its training state (critic, optimisers, live weights);
    ``sampling`` (:data:`SAMPLING_FIELDS`) replaces the copy's default sampler settings."""
    path = checkpoint_file(checkpoint)
    state = CHECKPOINTS.inference_state(CHECKPOINTS.read_state(path), path)
    unknown = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not a sampling setting (use {', '.join(SAMPLING_FIELDS)})")
    if sampling:
        config = EPiCConfig.from_dict(json.loads(state["config"]))
        state["config"] = json.dumps(replace(config, **sampling).to_dict())
    save_checkpoint(state, out)
    return Path(out)
