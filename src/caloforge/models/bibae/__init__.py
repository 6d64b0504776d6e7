"""BIB-AE (arXiv:2005.05334, 2112.09709, 2303.18150): a Bounded-Information-Bottleneck
autoencoder of 3-d convolutions over the (layer, x, y) cell image, conditioned on the
incident energy, with a per-cell post-processor.

The encoder maps a shower to a small Gaussian latent; the decoder maps a latent (and the
energy) back to a cell image. Training (:mod:`.training`) combines a KL term, an MMD between
the encoded latents and N(0, 1), a WGAN-GP critic on showers decoded from N(0, 1) and a
second critic on (input, reconstruction) pairs in place of a pixel loss; a second stage fits
the post-processor (1x1x1 convolutions) with an MMD on the hit-energy spectrum. Sampling
(:mod:`.generation`) decodes z ~ N(0, 1), post-processes and thresholds. Importing this
package imports none of its modules: the names below load theirs on first use.
"""

from __future__ import annotations

from caloforge.models.protocol import (
    CHECKPOINT_EXPORTS,
    Capabilities,
    Family,
    Option,
    Training,
    exports_of,
    lazy_exports,
    loop_options,
)

_EXPORTS = {
    **exports_of(
        config=("BIBAEConfig", "PRESETS"),
        model=("BIBAE", "PostProcessor"),
        generation="BIBAEGenerator",
        training="train",
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "BIB-AE",
    output="voxels",
    capabilities=Capabilities(gpu=True),
    generate_options=(Option("latent_scale", float, "Width of the latent draws (1: the trained prior)."),),
    trainings=(
        Training.of_package(
            __name__,
            "BIBAEConfig",
            title="BIB-AE",
            summary=(
                "Train BIB-AE (3-d convolutional autoencoder with critics and a post-processor) on cell "
                "images."
            ),
            data_help="Training cell-image file (voxels on a cell grid, e.g. ild-ecal-30).",
            preset_help="cpu (15-20 minutes on 2 cores), paper or smoke.",
            options=loop_options(2),
            distributed=True,
            gpu=True,
        ),
    ),
    shipped={"bibae": "bibae_ild30_cpu.pt"},
    bench_models=(("BIB-AE", "bibae"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
