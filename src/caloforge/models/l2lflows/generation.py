"""L2LFlows generation: layer energies from their flow, then the layers in order, each from its
flow conditioned on the previous ones generated; decoded, thresholded, in MeV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caloforge.models.l2lflows.checkpoint import CHECKPOINTS
from caloforge.models.l2lflows.model import L2LFlows
from caloforge.models.onepass import OnePassGenerator

#: The one sampler: the inverted flows, one pass for the energies and one per layer.
SAMPLER = "inverse"


class L2LFlowsGenerator(OnePassGenerator):
    """An L2LFlows checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`: the
    inverted flows in one pass each, float32 on the CPU or a CUDA device; generation option
    ``temperature`` (default: the model's, 1.0) scales the base noise."""

    family = "l2lflows"
    particle = "gamma"
    label = "l2lflows"
    name = "L2LFlows"
    sampler = SAMPLER
    how = "flows sample in one pass"
    option = "temperature"
    model: L2LFlows

    def describe(self) -> dict[str, Any]:
        """Flows, blocks, conditioners and parameters."""
        c, (n_layers, h, w) = self.model.config, self.model.shape
        bins = f", {c.bins} bins" if c.coupling == "rqs" else ""
        params = self.model.n_parameters()
        return {
            "parameters": sum(params.values()),
            "layer-energy flow": (
                f"NSF, {c.energy_transforms} transforms × {c.energy_hidden}, {c.energy_bins} bins"
            ),
            "layer flows": f"{n_layers} × {c.n_blocks} checkerboard {c.coupling} blocks{bins}",
            "conditioner": (
                f"{c.depth + 1} convolutions × {c.hidden}, {'shared' if c.shared_weights else 'per layer'}; "
                f"{c.n_context} previous layers"
            ),
            "features": f"{n_layers} layer energies + {n_layers} layers × {h} × {w} cells",
            "sampler": f"{SAMPLER} (layer by layer), temperature {c.temperature:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> L2LFlowsGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return L2LFlowsGenerator(CHECKPOINTS.model_from_state(state, path), path)


__all__ = ["SAMPLER", "L2LFlowsGenerator", "load_generator"]
