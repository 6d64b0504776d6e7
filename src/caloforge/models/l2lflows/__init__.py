"""L2LFlows (arXiv:2302.11594; convolutional version arXiv:2405.20407): layer-to-layer flows
for cell-grid calorimeter images.

A small flow (:mod:`.model`) generates the layer energies given the incident energy; then one
flow per layer generates that layer's normalised cell image given the incident energy, the
layer energy and the five layers before it. The per-layer flows are coupling flows with 2-d
convolutional conditioners on checkerboard masks (:mod:`.flows`), all trained jointly by
maximum likelihood with teacher forcing (:mod:`.training`); sampling runs the layers in order
(:mod:`.generation`). Importing this package imports none of its modules: the names below
load theirs on first use.
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
        config=("L2LFlowsConfig", "PRESETS"),
        model="L2LFlows",
        generation="L2LFlowsGenerator",
        training="train",
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "L2LFlows",
    output="voxels",
    capabilities=Capabilities(gpu=True),
    generate_options=(
        Option("temperature", float, "Width of the base distribution (1: the trained density)."),
    ),
    trainings=(
        Training.of_package(
            __name__,
            "L2LFlowsConfig",
            title="L2LFlows flows",
            summary=(
                "Train L2LFlows (a layer-energy flow and one convolutional flow per layer) on cell images."
            ),
            data_help=(
                "Training image file on a cell-grid detector (`caloforge convert --detector ild-ecal-30`)."
            ),
            preset_help="cpu (15-20 minutes on 2 cores), paper or smoke.",
            options=loop_options(),
            distributed=True,
            gpu=True,
        ),
    ),
    shipped={"l2lflows": "l2lflows_ild30_cpu.pt"},
    bench_models=(("L2LFlows", "l2lflows"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
