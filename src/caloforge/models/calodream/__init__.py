"""CaloDREAM (arXiv:2405.09629): flow matching on voxel showers, factorised in two networks.

* the **energy network** (:class:`~caloforge.models.nn.transfusion.Transfusion`) generates the
  45 normalised layer-energy variables ``u`` given the incident energy;
* the **shape network** (:class:`~caloforge.models.nn.vit.ViT3d`) generates the voxel energies
  normalised by their layer energy, given the incident and layer energies — either in voxel
  space (ViT) or in the latent space of a :class:`~caloforge.models.nn.vae.LayerVAE` (laViT).

Variables (SPEC 6.4, :mod:`.variables`): ``u_0 = Σ E_layer / E_inc`` and
``u_i = E_{i-1} / Σ_{j ≥ i-1} E_j``; networks see ``logit(u)`` and the logit of the voxel
fractions (or, with the ``log-energy`` target, ``log(E / threshold)``), standardised.

Each part trains on its own (:mod:`.training`), checkpoints in its run directory (atomic,
periodic, Ctrl-C safe, exact resume) and the shape checkpoint embeds the energy network (and
the VAE for laViT) so that one file generates showers (:mod:`.generation`). Sampling integrates
the learned ODE from noise (t = 0) to data (t = 1) with a fixed-step solver or a trained
bespoke (BNS) solver (:mod:`.solver`, :mod:`.bns`); log-energy models can carry a hit-energy
calibration (:mod:`.calibration`). Importing this package imports none of its modules: the
names below load theirs on first use.
"""

from __future__ import annotations

from pathlib import Path

from caloforge.models.protocol import (
    CHECKPOINT_EXPORTS,
    Capabilities,
    Family,
    Option,
    Training,
    batch_size_option,
    exports_of,
    lazy_exports,
    steps_option,
)

_DREAM_VOXELS = "Training voxel file (`caloforge simulate --voxel-out`)."
_DREAM_PRESETS = "cpu (about an hour on 2 cores), paper (GPU), ds3 and paper-ds3 (dataset 3) or smoke."
_DREAM_SHAPE_OPTIONS = (
    Option(
        "energy_model",
        Path,
        "A trained energy run, embedded so that the shape model generates on its own.",
        target="train",
    ),
    Option(
        "vae",
        Path,
        "A trained VAE run: train the latent variant (laViT) in its latent space.",
        target="train",
        field="vae_model",
    ),
    Option(
        "target",
        str,
        "What the ViT learns: logit-fraction (the paper's) or log-energy (log E/threshold, "
        "empty voxels on a slab under it). Default: the preset's.",
        field="shape_target",
    ),
)


def _dream_training(part: str, title: str, summary: str, options: tuple[Option, ...] = ()) -> Training:
    return Training.of_package(
        __name__,
        "CaloDreamConfig",
        command=f"calodream-{part}",
        title=title,
        summary=summary,
        data_help=_DREAM_VOXELS,
        preset_help=_DREAM_PRESETS,
        options=(*options, steps_option(), batch_size_option()),
        distributed=True,
        gpu=True,
        train_fixed={"part": part},
    )


_EXPORTS = {
    **exports_of(
        variables=(
            "EPS",
            "SHAPE_TARGETS",
            "EMPTY_SLAB",
            "EMPTY_CUT",
            "layer_energies",
            "u_from_layer_energies",
            "layer_energies_from_u",
            "fractions",
            "dequantize_fractions",
            "voxels_from_fractions",
            "log_energy_features",
            "voxels_from_log_energy",
            "hit_log_fractions",
            "calibrated_voxels",
        ),
        config=("CaloDreamConfig", "PRESETS"),
        solver=("SolverSpec", "resolve_solver"),
        model=("CaloDream", "PARTS"),
        data="load_voxel_data",
        generation=(
            "generate",
            "sample_u",
            "sample_voxels",
            "sample_shape_features",
            "shape_condition",
            "shape_noise",
            "shape_velocity",
            "uses_calibration",
            "CaloDreamGenerator",
        ),
        training="train",
        calibration=("fit_calibration", "save_calibration"),
        bns=("train_solver", "save_solver"),
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "CaloDREAM",
    output="voxels",
    capabilities=Capabilities(calibrate=True, gpu=True),
    calibrator="caloforge.models.calodream.calibration:calibrate_command",
    commands="caloforge.models.calodream.cli:add_commands",
    calibrate_options=(
        Option("showers", int, "Model showers per fit pass (default 4000).", min=1),
        Option("bins", int, "Incident-energy bins of the hit-energy calibration (default 8).", min=1),
    ),
    trainings=(
        _dream_training(
            "energy",
            "CaloDREAM energy network",
            "Train CaloDREAM's energy network (transfusion CFM over the 45 layer-energy variables).",
        ),
        _dream_training(
            "shape",
            "CaloDREAM shape network",
            "Train CaloDREAM's shape network (3-d ViT CFM over voxel fractions, or laViT with --vae).",
            _DREAM_SHAPE_OPTIONS,
        ),
        _dream_training(
            "vae",
            "CaloDREAM VAE",
            "Train the VAE whose latent space the laViT shape network works in.",
        ),
    ),
    shipped={
        "calodream": "calodream_ds2_cpu.pt",
        "calodream-lavit": "calodream_lavit_ds2_cpu.pt",
        "calodream-ds3": "calodream_lavit_ds3_cpu.pt",
    },
    bench_models=(("CaloDREAM ViT", "calodream"), ("CaloDREAM laViT", "calodream-lavit")),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
