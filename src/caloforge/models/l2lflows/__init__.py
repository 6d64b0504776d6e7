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
    Capabilities,
    Family,
    Option,
    Training,
    batch_size_option,
    lazy_exports,
    max_showers_option,
    steps_option,
)

_EXPORTS = {
    "L2LFlowsConfig": "config",
    "PRESETS": "config",
    "L2LFlows": "model",
    "CHECKPOINT_FORMAT": "model",
    "CHECKPOINT_VERSION": "model",
    "load_model": "checkpoint",
    "save_for_inference": "checkpoint",
    "L2LFlowsGenerator": "generation",
    "train": "training",
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family(
    name="l2lflows",
    description="L2LFlows",
    formats=("caloforge-l2lflows",),
    loader="caloforge.models.l2lflows.generation:load_generator",
    output="voxels",
    capabilities=Capabilities(workers=True, precisions=("float32",)),
    generate_options=(
        Option("temperature", float, "Width of the base distribution (1: the trained density)."),
    ),
    trainings=(
        Training(
            command="l2lflows",
            title="L2LFlows flows",
            summary=(
                "Train L2LFlows (a layer-energy flow and one convolutional flow per layer) on cell images."
            ),
            config="caloforge.models.l2lflows.config:L2LFlowsConfig",
            train="caloforge.models.l2lflows.training:train",
            data_help=(
                "Training image file on a cell-grid detector (`caloforge convert --detector ild-ecal-30`)."
            ),
            preset_help="cpu (15-20 minutes on 2 cores), paper or smoke.",
            options=(steps_option(), batch_size_option(), max_showers_option()),
        ),
    ),
    shipped={"l2lflows": "l2lflows_ild30_cpu.pt"},
    bench_models=(("L2LFlows", "l2lflows"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
