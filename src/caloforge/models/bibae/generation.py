"""BIB-AE generation: latents from N(0, 1), the decoder, the post-processor, the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caloforge.models.bibae.checkpoint import CHECKPOINTS
from caloforge.models.bibae.model import BIBAE
from caloforge.models.onepass import OnePassGenerator

__all__ = ["SAMPLER", "BIBAEGenerator", "load_generator"]

#: The one sampler: a latent draw through the decoder and the post-processor.
SAMPLER = "decode"


class BIBAEGenerator(OnePassGenerator):
    """A BIB-AE checkpoint as a :class:`~caloforge.models.protocol.ShowerGenerator`: one decoder
    pass, float32 on the CPU or a CUDA device; generation option ``latent_scale`` (default: the
    model's, 1.0) scales the latent draws."""

    family = "bibae"
    particle = "gamma"
    label = "bibae"
    name = "BIB-AE"
    sampler = SAMPLER
    how = "it decodes a latent in one pass"
    option = "latent_scale"
    model: BIBAE

    def describe(self) -> dict[str, Any]:
        """Widths, latent and parameters of the networks."""
        c, n = self.model.config, self.model.n_parameters()
        length, cells, _ = self.model.shape
        return {
            "parameters": sum(n.values()),
            "encoder / decoder": f"3-d convolutions {'/'.join(map(str, c.channels))}, latent {c.latent}",
            "post-processor": f"{c.post_layers} × {c.post_hidden} 1×1×1 convolutions, {n['post']} parameters",
            "image": f"{length} layers × {cells} × {cells} cells",
            "sampler": f"{SAMPLER} (one pass), latent scale {c.latent_scale:g}",
        }


def load_generator(path: Path, state: dict[str, Any]) -> BIBAEGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return BIBAEGenerator(CHECKPOINTS.model_from_state(state, path), path)
