"""EPiC checkpoints: read with ``weights_only=True``, checked, turned into models."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from caloforge.models.checkpoint import check_format, checkpoint_file, read_checkpoint, save_checkpoint
from caloforge.models.epic.config import EPiCConfig
from caloforge.models.epic.model import CHECKPOINT_FORMATS, CHECKPOINT_VERSION, EPiCJetModel
from caloforge.models.protocol import CheckpointError

REQUIRED_KEYS = ("config", "jet_type", "complete", "model")

__all__ = ["check_state", "load_model", "model_from_state", "save_for_inference"]


def check_state(state: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``state`` if it is a complete EPiC checkpoint (any variant) of this version."""
    fmt = state.get("format")
    expected = fmt if fmt in CHECKPOINT_FORMATS.values() else CHECKPOINT_FORMATS["fm"]
    return check_format(state, path, expected, CHECKPOINT_VERSION, REQUIRED_KEYS, "EPiC")


def model_from_state(state: dict[str, Any], where: str | Path) -> EPiCJetModel:
    """The model a checkpoint ``state`` describes, in evaluation mode (without its critic)."""
    check_state(state, where)
    try:
        config = EPiCConfig.from_dict(json.loads(state["config"]))
        table = state["model"]["condition_table"].numpy()
        model = EPiCJetModel(config, str(state["jet_type"]), table)
        model.disc = None
        model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"'{where}': the checkpoint does not describe a valid EPiC model: {exc}"
        ) from exc
    if state["format"] != CHECKPOINT_FORMATS[config.variant]:
        raise CheckpointError(
            f"'{where}': format {state['format']} does not match its variant {config.variant}"
        )
    model.complete = bool(state["complete"])
    return model.eval().requires_grad_(False)


def load_model(path: str | Path) -> EPiCJetModel:
    """An EPiC model from a checkpoint or run directory, ready to sample."""
    path = checkpoint_file(path)
    return model_from_state(check_state(read_checkpoint(path), path), path)


#: Sampling settings :func:`save_for_inference` may set in the copy (its generation defaults).
SAMPLING_FIELDS = ("sampler", "sample_steps", "jedi_clip")


def save_for_inference(checkpoint: str | Path, out: str | Path, **sampling: Any) -> Path:
    """Copy a run's checkpoint without its training state (critic, optimisers, live weights);
    ``sampling`` (:data:`SAMPLING_FIELDS`) replaces the copy's default sampler settings."""
    path = checkpoint_file(checkpoint)
    state = check_state(read_checkpoint(path), path)
    model_from_state(state, path)
    unknown = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not a sampling setting (use {', '.join(SAMPLING_FIELDS)})")
    if sampling:
        config = EPiCConfig.from_dict(json.loads(state["config"]))
        state["config"] = json.dumps(replace(config, **sampling).to_dict())
    state.pop("train", None)
    save_checkpoint(state, out)
    return Path(out)
