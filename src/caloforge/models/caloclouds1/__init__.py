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

from caloforge.models.protocol import Capabilities, Family, lazy_exports

_EXPORTS = {
    "CaloClouds1Config": "config",
    "PRESETS": "config",
    "CaloClouds1": "model",
    "CHECKPOINT_FORMAT": "model",
    "CHECKPOINT_VERSION": "model",
    "load_model": "checkpoint",
    "save_for_inference": "checkpoint",
    "train": "training",
    "borrow_flow": "training",
    "generate": "generation",
    "CaloClouds1Generator": "generation",
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family(
    name="caloclouds1",
    description="CaloClouds (I)",
    formats=("caloforge-caloclouds1",),
    loader="caloforge.models.caloclouds1.generation:load_generator",
    capabilities=Capabilities(workers=True),
    commands="caloforge.models.caloclouds1.cli:add_commands",
    shipped={"caloclouds1": "caloclouds1_cpu.pt"},
    bench_models=(("CaloClouds (100 NFE)", "caloclouds1"),),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
