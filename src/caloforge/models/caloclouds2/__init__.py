"""CaloClouds II (arXiv:2309.05704) and its one-step distillation CaloClouds II (CM).

Photon showers in the ILD-like ECAL as point clouds (SPEC 6.1, 6.2):

* the :class:`~caloforge.models.nn.showerflow.ShowerFlow` samples per-shower summaries
  (number of points, visible energy, per-layer counts and energies, centre of gravity)
  given the incident energy;
* the :class:`~caloforge.models.nn.pointwise.PointWiseNet`, trained as an EDM denoiser (or
  distilled into a consistency model, :mod:`.distillation`), samples that many points
  independently given (incident energy, number of points);
* :mod:`caloforge.calibrate` makes the points agree with the summaries.

The package follows the pipeline: :mod:`.config` (presets, sampler description),
:mod:`.model` (the container), :mod:`.checkpoint`, :mod:`.data` (training data),
:mod:`.training`, :mod:`.calibration` (the number-of-points fit), :mod:`.generation` (the
generator of the family protocol), :mod:`.distillation` (CM), :mod:`.export` (ONNX / TorchScript)
and :mod:`.cli` (its ``caloforge train`` / ``distill`` commands). Importing this package
imports none of them: the names below load their module on first use.
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

#: Public names → the module that defines them (loaded on first access).
_EXPORTS = {
    **exports_of(
        config=("CaloClouds2Config", "PRESETS", "SamplerSpec"),
        model="CaloClouds2",
        training=("train", "point_batch"),
        calibration=("fit_calibration", "calibrate"),
        generation=(
            "generate",
            "resolve_sampler",
            "resolve_precision",
            "native_bfloat16",
            "faster_bfloat16",
            "CaloClouds2Generator",
            "POINTS_PER_CALL",
            "POINTS_PAD",
            "PRECISIONS",
        ),
        distillation=("DistillConfig", "distill"),
        export=("export_model", "OnnxGenerator"),
    ),
    **CHECKPOINT_EXPORTS,
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "CaloClouds II",
    capabilities=Capabilities(
        calibrate=True,
        export=("onnx", "torchscript"),
        gpu=True,
        workers=True,
        precisions=("float32", "bfloat16"),
    ),
    calibrator="caloforge.models.caloclouds2.calibration:calibrate_command",
    exporter="caloforge.models.caloclouds2.export:export_model",
    runner="caloforge.models.caloclouds2.export:OnnxGenerator",
    commands="caloforge.models.caloclouds2.cli:add_commands",
    generate_options=point_generation_options(),
    calibrate_options=(
        Option("sampler", str, "Make this the model's sampler (heun, euler; consistency)."),
        Option("steps", int, "Sampler steps (default: the model's).", min=1),
        Option("sigma_max", float, "Highest noise level of the sampler (default: the model's)."),
        Option("cog", str, "How the centre of gravity is set: shift (whole cloud) or tilt (energies)."),
        Option("radial", bool, "Also fit energy weights by radius (the core/halo balance) first."),
        Option("showers", int, "Model showers per fit pass (default: the model config's).", min=1),
    ),
    trainings=(
        Training.of_package(
            __name__,
            "CaloClouds2Config",
            title="CaloClouds II",
            summary=(
                "Train CaloClouds II (Shower Flow + EDM PointWise Net + calibration) on a point-cloud file."
            ),
            data_help="Training point-cloud file (e.g. from `caloforge simulate`).",
            preset_help="cpu (minutes on a laptop), paper (published sizes, GPU) or smoke.",
            options=(
                steps_option("PointWise Net steps (default: the preset's)."),
                Option("flow_steps", int, "Shower Flow steps (default: the preset's).", min=0),
                max_showers_option(1, target="config"),
                Option(
                    "widths",
                    str,
                    "PointWise Net layer widths, e.g. 4,64,128,64,4 (default: the preset's).",
                    field="net_widths",
                    parse="widths",
                ),
                Option(
                    "cluster_per_cell",
                    int,
                    "Re-cluster the points on N squares per cell side (a divisor of 6; fewer points).",
                    min=1,
                ),
            ),
            distributed=True,
            gpu=True,
        ),
    ),
    shipped={
        "caloclouds2": "caloclouds2_cpu.pt",
        "caloclouds2-cm": "caloclouds2_cm_cpu.pt",
        "caloclouds2-cm-fast": "caloclouds2_cm_fast_cpu.pt",
    },
    bench_models=(
        ("CaloClouds II (25 NFE)", "caloclouds2"),
        ("CaloClouds II (CM fast, 1 NFE)", "caloclouds2-cm-fast"),
        ("CaloClouds II (CM, 1 NFE)", "caloclouds2-cm"),
    ),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
