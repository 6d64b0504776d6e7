"""CaloClouds (I) (arXiv:2305.04847): the baseline CaloClouds II is measured against.

Photon showers in the ILD-like ECAL as point clouds (SPEC 6.3, 6.5):

* the :class:`~caloforge.models.nn.showerflow.ShowerFlow` of a CaloClouds II model (the paper
  shares one flow between CaloClouds, CaloClouds II and CM) samples the per-shower summaries;
* an :class:`~caloforge.models.nn.epic.EPiCEncoder` maps a training shower to a Gaussian
  latent (VAE-like, with a KL term); a **Latent Flow** conditioned on the incident energy and
  the number of points replaces it at sampling;
* a **DDPM** PointWise Net (100 discrete steps, :mod:`caloforge.models.nn.ddpm`) samples each
  point from (latent, incident energy, number of points);
* :mod:`caloforge.calibrate` makes the points agree with the summaries, as for CaloClouds II.

Modules: :mod:`.config`, :mod:`.model`, :mod:`.checkpoint`, :mod:`.training`,
:mod:`.generation` and :mod:`.cli`; importing this package imports none of them.
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
    max_showers_option,
    point_generation_options,
    steps_option,
)

_EXPORTS = {
    **exports_of(
        config=("CaloClouds1Config", "PRESETS"),
        model="CaloClouds1",
        training=("train", "borrow_flow"),
        generation=("generate", "CaloClouds1Generator"),
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "CaloClouds (I)",
    capabilities=Capabilities(gpu=True),
    generate_options=point_generation_options(),
    trainings=(
        Training.of_package(
            __name__,
            "CaloClouds1Config",
            title="CaloClouds (I)",
            summary="Train CaloClouds (I) (EPiC encoder + Latent Flow + DDPM PointWise Net + calibration).",
            data_help="Training point-cloud file (e.g. from `caloforge simulate`).",
            preset_help="cpu (under an hour on 2 cores), paper or smoke.",
            options=(
                Option(
                    "flow_from",
                    str,
                    "CaloClouds II model whose Shower Flow is used: 'caloclouds2' (shipped) or a run.",
                    default="caloclouds2",
                    target="train",
                ),
                steps_option(),
                max_showers_option(1, target="config"),
                Option(
                    "widths",
                    str,
                    "PointWise Net layer widths, e.g. 4,64,128,64,4 (default: the preset's).",
                    field="net_widths",
                    parse="widths",
                ),
                Option("latent_dim", int, "Latent size (default: the preset's).", min=1),
            ),
            distributed=True,
            gpu=True,
        ),
    ),
    shipped={"caloclouds1": "caloclouds1_cpu.pt"},
    bench_models=(("CaloClouds (100 NFE)", "caloclouds1"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
