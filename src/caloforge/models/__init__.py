"""Generative shower models: the family protocol, the registry, and one sub-package per family.

* :mod:`caloforge.models.protocol` — what a family provides (:class:`Family`,
  :class:`ShowerGenerator`, :class:`GenerationRequest`, :class:`Plan`) and the shared checks;
* :mod:`caloforge.models.registry` — checkpoint format key → family (:func:`load_generator`);
* :mod:`caloforge.models.checkpoint` — safe checkpoint reading (``weights_only=True``) and
  atomic writing;
* :mod:`caloforge.models.caloclouds2` — CaloClouds II and CaloClouds II (CM);
* :mod:`caloforge.models.calodream` — CaloDREAM (ViT and laViT);
* :mod:`caloforge.models.nn` — the networks the families are built from.

Importing this package (or a family's) imports no network code; the families' modules need the
``ml`` extra (torch, zuko): ``pip install 'caloforge[ml]'``. docs/architecture.md shows how to
add a family.
"""

from caloforge.models.protocol import (
    Capabilities,
    CheckpointError,
    Condition,
    Family,
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    ShowerGenerator,
    UnsupportedError,
    batch_seed,
    generate_batches,
)
from caloforge.models.registry import families, get_family, load_generator, register, resolve_model

__all__ = [
    "Capabilities",
    "CheckpointError",
    "Condition",
    "Family",
    "GenerationError",
    "GenerationRequest",
    "Plan",
    "SamplerInfo",
    "ShowerGenerator",
    "UnsupportedError",
    "batch_seed",
    "families",
    "generate_batches",
    "get_family",
    "load_generator",
    "register",
    "resolve_model",
]
