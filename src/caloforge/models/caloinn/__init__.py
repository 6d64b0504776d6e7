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
        config=("CaloINNConfig", "PRESETS"),
        variables=("layer_features", "voxels_from_layer_features"),
        model="CaloINN",
        generation=("CaloINNGenerator", "voxel_batch"),
        training="train",
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "CaloINN",
    output="voxels",
    capabilities=Capabilities(gpu=True),
    generate_options=(
        Option("temperature", float, "Width of the base distribution (1: the trained density)."),
    ),
    trainings=(
        Training.of_package(
            __name__,
            "CaloINNConfig",
            title="CaloINN flow",
            summary=(
                "Train CaloINN (spline coupling flow over layer and voxel log energies) on voxel showers."
            ),
            data_help="Training voxel file (`caloforge simulate --voxel-out`).",
            preset_help="cpu (under an hour on 2 cores), paper or smoke.",
            options=loop_options(),
            distributed=True,
            gpu=True,
        ),
    ),
    shipped={"caloinn": "caloinn_ds2_cpu.pt"},
    bench_models=(("CaloINN", "caloinn"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
