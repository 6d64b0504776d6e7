"""Reading and writing checkpoints safely, for every family.

Checkpoints are ``torch.save`` files of plain data (dicts, lists, strings, numbers) and
tensors. They are **always** read with ``weights_only=True``: a file that holds anything
else (a pickled object whose loading would run code) is refused with one line, before any of
it runs. Every checkpoint carries a ``format`` key (which family wrote it, see
:mod:`caloforge.models.registry`) and a ``format_version``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caloforge import __version__
from caloforge.io import atomic_output
from caloforge.models.protocol import CheckpointError

__all__ = [
    "DETECTOR_KEYS",
    "RUN_CHECKPOINT",
    "CheckpointError",
    "Checkpoints",
    "check_format",
    "checkpoint_file",
    "checkpoint_header",
    "detector_checkpoints",
    "detector_state",
    "read_checkpoint",
    "save_checkpoint",
]


#: The checkpoint file of a run directory.
RUN_CHECKPOINT = "checkpoint.pt"


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or a run directory's ``checkpoint.pt``: the one resolver from a run
    directory to its checkpoint (the registry, the readers and the trainers use it).

    >>> checkpoint_file("no/such/file.pt").name
    'file.pt'
    """
    path = Path(path)
    return path / RUN_CHECKPOINT if path.is_dir() else path


def read_checkpoint(path: str | Path, require_format: bool = True) -> dict[str, Any]:
    """The contents of the checkpoint ``path`` (a file or run directory), tensors and plain data only.

    Raises :class:`CheckpointError` (one line) for a missing file, a file torch cannot read,
    one that holds other objects than tensors and plain data, or (``require_format``) one
    without a ``format`` key.
    """
    import pickle
    import warnings

    import torch

    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"model '{path}' does not exist: train one or give the path of a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on foreign pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is many lines and suggests weights_only=False, which would run the file.
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if blocked:
            raise CheckpointError(
                f"'{path}' is refused: it holds objects other than tensors and plain data, which caloforge "
                f"never unpickles ({blocked[0][:160]})"
            ) from None
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint (corrupt, truncated or not written by caloforge; "
            "objects other than tensors and plain data are never unpickled)"
        ) from None
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint (corrupt, truncated or not written by caloforge: "
            f"{type(exc).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a caloforge checkpoint (it holds no mapping)")
    if require_format and not isinstance(state.get("format"), str):
        raise CheckpointError(f"'{path}' is not a caloforge checkpoint (it has no format key)")
    return state


def check_format(
    state: dict[str, Any],
    path: str | Path,
    format: str,
    version: int,
    required: Sequence[str] = (),
    description: str = "caloforge",
) -> dict[str, Any]:
    """``state`` if it is a ``format`` checkpoint of ``version`` with every ``required`` key,
    else :class:`CheckpointError` naming what is wrong."""
    if state.get("format") != format:
        raise CheckpointError(
            f"'{path}' is not a {description} checkpoint (format {state.get('format')!r}, not '{format}')"
        )
    found = state.get("format_version")
    if found != version:
        raise CheckpointError(
            f"'{path}' has {description} checkpoint format version {found}; this caloforge ({__version__}) "
            f"reads version {version}: use the caloforge version that wrote it, or retrain"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"'{path}' lacks {', '.join(missing)}: the file is incomplete")
    return state


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (an existing file stays until it is replaced)."""
    import torch

    with atomic_output(path) as tmp:
        torch.save(state, tmp)


@dataclass(frozen=True)
class Checkpoints:
    """One family's checkpoints, the base every family reads and copies them through: the
    ``formats`` keys it accepts (the first is the one named when another is found), its format
    ``version``, the ``required`` keys and ``build(state)``, the family's model from a checked
    state. Files are always read with ``weights_only=True`` (:func:`read_checkpoint`).

    ``frozen``: the loaded model's parameters need no gradients (False where a model is trained
    further from a loaded one, e.g. a distillation's teacher and student). ``keep``: the keys an
    inference copy keeps besides the format keys and ``required`` (None: all but ``train``).
    """

    description: str
    formats: tuple[str, ...]
    version: int
    required: tuple[str, ...]
    build: Callable[[dict[str, Any]], Any]
    frozen: bool = True
    keep: tuple[str, ...] | None = None

    def check_state(self, state: dict[str, Any], path: str | Path) -> dict[str, Any]:
        """``state`` if it is a complete checkpoint of this family and version (else
        :class:`CheckpointError` naming what is wrong)."""
        found = state.get("format")
        expected = found if found in self.formats else self.formats[0]
        return check_format(state, path, expected, self.version, self.required, self.description)

    def read_state(self, path: str | Path) -> dict[str, Any]:
        """The checked contents of a checkpoint file or run directory."""
        path = checkpoint_file(path)
        return self.check_state(read_checkpoint(path, require_format=False), path)

    def model_from_state(self, state: dict[str, Any], where: str | Path) -> Any:
        """The model a checkpoint ``state`` describes, in evaluation mode."""
        from caloforge.detector import DetectorError

        self.check_state(state, where)
        try:
            model = self.build(state)
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, RuntimeError, AttributeError, DetectorError) as exc:
            raise CheckpointError(
                f"'{where}': the checkpoint does not describe a valid {self.description} model: {exc}"
            ) from exc
        model.complete = bool(state["complete"])
        model = model.eval()
        return model.requires_grad_(False) if self.frozen else model

    def load_model(self, path: str | Path) -> Any:
        """A model from a checkpoint or run directory, ready to sample."""
        path = checkpoint_file(path)
        return self.model_from_state(self.read_state(path), path)

    def save_for_inference(self, checkpoint: str | Path, out: str | Path) -> Path:
        """Copy a run's checkpoint without its training state (optimisers, live weights, RNG),
        refusing one that would not load."""
        path = checkpoint_file(checkpoint)
        state = self.inference_state(self.read_state(path), path)
        save_checkpoint(state, out)
        return Path(out)

    def inference_state(self, state: dict[str, Any], path: str | Path) -> dict[str, Any]:
        """What an inference copy of the checked ``state`` holds."""
        self.model_from_state(state, path)  # refuse anything that would not load
        if self.keep is None:
            return {k: v for k, v in state.items() if k != "train"}
        names = ("format", "format_version", "caloforge_version", *self.keep, *self.required)
        return {k: state[k] for k in names if k in state}


def checkpoint_header(model: Any, format: str, version: int) -> dict[str, Any]:
    """The keys every checkpoint of a model built from a config and a detector begins with: the
    format keys, the caloforge version, and ``config`` and ``detector`` as JSON."""
    return {
        "format": format,
        "format_version": version,
        "caloforge_version": __version__,
        "config": json.dumps(model.config.to_dict()),
        "detector": json.dumps(model.detector.to_dict()),
    }


def detector_state(model: Any, format: str, version: int) -> dict[str, Any]:
    """The inference state of a :func:`detector_checkpoints` family's ``model`` (its
    :func:`checkpoint_header`, ``energy_range``, ``complete`` and weights)."""
    return checkpoint_header(model, format, version) | {
        "energy_range": list(model.energy_range),
        "complete": model.complete,
        "model": model.state_dict(),
    }


#: The keys of a :func:`detector_checkpoints` family's state.
DETECTOR_KEYS = ("config", "detector", "energy_range", "complete", "model")


def detector_checkpoints(
    description: str, format: str, version: int, config_cls: Any, model_cls: Any
) -> Checkpoints:
    """The :class:`Checkpoints` of a family whose models are built from a config, a detector and
    an energy range (CaloINN, BIB-AE, L2LFlows): the state holds ``config`` and ``detector``
    (JSON), ``energy_range``, ``complete`` and the ``model`` weights; ``config_cls`` has
    ``from_dict``, ``model_cls(config, detector, energy_range)`` builds the network."""

    def build(state: dict[str, Any]) -> Any:
        from caloforge.detector import detector_from_dict

        config = config_cls.from_dict(json.loads(state["config"]))
        det = detector_from_dict(json.loads(state["detector"]))
        model = model_cls(config, det, tuple(state["energy_range"]))
        model.load_state_dict(state["model"])
        return model

    return Checkpoints(description, (format,), version, DETECTOR_KEYS, build)
