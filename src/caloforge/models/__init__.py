"""Generative shower models, one module per family.

* :mod:`caloforge.models.caloclouds2` — CaloClouds II: :func:`train`, :func:`generate`,
  :func:`load_model` and the :class:`CaloClouds2Config` presets;
* :mod:`caloforge.models.showerflow`, :mod:`caloforge.models.pointwise`,
  :mod:`caloforge.models.edm` — its parts (Shower Flow, PointWise Net, EDM preconditioning,
  loss and EMA).

These modules need the ``ml`` extra (torch, zuko): ``pip install 'caloforge[ml]'``.
"""

try:
    import torch  # noqa: F401
    import zuko  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without the ml extra
    raise ImportError(
        f"caloforge.models needs torch and zuko ({exc}); install them with: pip install 'caloforge[ml]'"
    ) from exc

from caloforge.models.caloclouds2 import (
    PRESETS,
    CaloClouds2,
    CaloClouds2Config,
    CheckpointError,
    GenerationError,
    TrainResult,
    generate,
    load_model,
    train,
)

__all__ = [
    "PRESETS",
    "CaloClouds2",
    "CaloClouds2Config",
    "CheckpointError",
    "GenerationError",
    "TrainResult",
    "generate",
    "load_model",
    "train",
]
