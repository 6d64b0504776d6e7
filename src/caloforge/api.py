"""Generation in one call (``caloforge.generate``): the same showers as ``caloforge generate``
with the same model, conditions, seed and batch size (every batch has its own random stream),
as one in-memory batch: :class:`~caloforge.io.PointShowers`, :class:`~caloforge.io.VoxelShowers`
or :class:`~caloforge.jets.io.Jets`. Evaluation is :func:`caloforge.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["generate"]


def generate(
    model: str | Path = "default",
    energies: Sequence[float] | np.ndarray | Mapping[str, Any] | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    sampler: str | None = None,
    steps: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> Any:
    """Showers of ``model`` (a shipped name, a run directory or a checkpoint), in memory.

    ``energies``: the incident energies in GeV, one shower each (shower models), or a mapping
    of every condition the model takes; without it, ``n`` conditions drawn with ``seed`` (a jet
    model's from its condition flow or its stored training jets, as the option ``conditions``
    says; a shower model's energies uniform in 10-90 GeV).
    ``options``: the family's generation options (``caloforge info MODEL`` lists them);
    ``device``: ``cpu``, ``cuda:N`` or ``auto`` (:func:`caloforge.devices.resolve_device`).
    """
    from caloforge.generation import _as_conditions, generation_device, run_conditions
    from caloforge.kinds import get_kind
    from caloforge.models.protocol import GenerationRequest, generate_batches
    from caloforge.models.registry import get_family, load_generator

    generator = load_generator(model)
    given = get_family(generator.family).check_options("generate", options)
    conditions = _as_conditions(
        run_conditions(generator, n, seed, options=given) if energies is None else energies
    )
    request = GenerationRequest(sampler, steps, device=generation_device(generator, device), options=given)
    batches = list(generate_batches(generator, conditions, generator.plan(request), seed, batch_size))
    if not batches:
        raise ValueError("nothing to generate: no conditions were given")
    return batches[0] if len(batches) == 1 else get_kind(generator.output).batch_type().concatenate(batches)
