"""CaloINN (arXiv:2312.09290): a normalizing flow of rational-quadratic spline coupling blocks
over voxel showers, conditioned on the incident energy.

The flow sees each layer as ``1 + V`` numbers, its log energy and its voxels' log energies
(empty ones on a slab below the threshold, :mod:`.variables`), standardised; its coupling
blocks (:mod:`caloforge.models.nn.coupling`: zuko's rational-quadratic splines, our blocks)
take their spline parameters from 1-d convolutions along the layers (:mod:`.model`). It
trains by maximum likelihood (:mod:`.training`: one-cycle schedule, EMA, atomic resumable
checkpoints) and samples in one inverse pass (:mod:`.generation`). Importing this package
imports none of its modules: the names below load theirs on first use.
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
    "CaloINNConfig": "config",
    "PRESETS": "config",
    "layer_features": "variables",
    "voxels_from_layer_features": "variables",
    "CaloINN": "model",
    "CHECKPOINT_FORMAT": "model",
    "CHECKPOINT_VERSION": "model",
    "load_model": "checkpoint",
    "save_for_inference": "checkpoint",
    "CaloINNGenerator": "generation",
    "voxel_batch": "generation",
    "train": "training",
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family(
    name="caloinn",
    description="CaloINN",
    formats=("caloforge-caloinn",),
    loader="caloforge.models.caloinn.generation:load_generator",
    output="voxels",
    capabilities=Capabilities(workers=True, precisions=("float32",)),
    generate_options=(
        Option("temperature", float, "Width of the base distribution (1: the trained density)."),
    ),
    trainings=(
        Training(
            command="caloinn",
            title="CaloINN flow",
            summary=(
                "Train CaloINN (spline coupling flow over layer and voxel log energies) on voxel showers."
            ),
            config="caloforge.models.caloinn.config:CaloINNConfig",
            train="caloforge.models.caloinn.training:train",
            data_help="Training voxel file (`caloforge simulate --voxel-out`).",
            preset_help="cpu (under an hour on 2 cores), paper or smoke.",
            options=(steps_option(), batch_size_option(), max_showers_option()),
        ),
    ),
    shipped={"caloinn": "caloinn_ds2_cpu.pt"},
    bench_models=(("CaloINN", "caloinn"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
