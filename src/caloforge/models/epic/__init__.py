"""EPiC models for jets as particle clouds (arXiv:2301.08128, 2310.00049; SPEC 6.7): EPiC-GAN,
EPiC-FM (flow matching) and EPiC-JeDi (diffusion), three variants of one family sharing the
EPiC backbone (:mod:`.model`), trained by :mod:`.training`, sampled by :mod:`.generation`.
Their checkpoints say which variant they are (format ``caloforge-epic-gan`` / ``-fm`` /
``-jedi``). Importing this package imports none of its modules."""

from __future__ import annotations

from caloforge.models.protocol import (
    Capabilities,
    Family,
    Option,
    Training,
    batch_size_option,
    exports_of,
    lazy_exports,
    steps_option,
)

_EPIC_OPTIONS = (
    Option(
        "particles", int, "Leading particles per jet (30 or 150).", default=30, min=1, field="n_particles"
    ),
    Option(
        "conditional", bool, "Condition on jet pT, mass and multiplicity (default: FM, JeDi yes; GAN no)."
    ),
    Option(
        "condition_flow",
        bool,
        "Train a flow over the jet features (pT, eta, mass, multiplicity) that generation draws "
        "conditions from (default yes; without it, stored training-jet rows).",
    ),
    Option(
        "time_power",
        float,
        "EPiC-FM: training times t = u^(1/time_power), u uniform (1, the default: uniform; above 1: "
        "more steps near the data).",
        min=0.1,
    ),
    steps_option(),
    batch_size_option(),
    Option("max_jets", int, "Train on the first N jets only.", min=20, target="train"),
)


def _epic_training(variant: str, title: str) -> Training:
    return Training.of_package(
        __name__,
        "EPiCConfig",
        command=f"epic-{variant}",
        title=title,
        summary=f"Train {title} (EPiC layers) on jets as particle clouds.",
        data_help="Training jet file (`caloforge simulate-jets`, or JetNet's).",
        preset_help="cpu (about 15 minutes on 2 cores), paper or smoke.",
        options=_EPIC_OPTIONS,
        config_fixed={"variant": variant},
        distributed=True,
        gpu=True,
    )


_EXPORTS = {
    **exports_of(
        config=("EPiCConfig", "VARIANTS"),
        model=("EPiCJetModel", "EPiCNet", "EPiCDiscriminator"),
        checkpoint=("load_model", "save_for_inference"),
        generation="EPiCGenerator",
        training="train",
    ),
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family.of_package(
    __name__,
    "EPiC",
    formats=("caloforge-epic-gan", "caloforge-epic-fm", "caloforge-epic-jedi"),
    output="jets",
    capabilities=Capabilities(gpu=True),
    generate_options=(
        Option("clip", float, "EPiC-JeDi: clip the denoised particles at this many standard deviations."),
        Option(
            "conditions",
            str,
            "Where jet features are drawn from without --conditions-file: flow (the model's condition "
            "flow, the default where it has one) or table (stored training-jet rows).",
            draws_conditions=True,
        ),
    ),
    trainings=(
        _epic_training("gan", "EPiC-GAN"),
        _epic_training("fm", "EPiC-FM"),
        _epic_training("jedi", "EPiC-JeDi"),
    ),
    shipped={
        "epic-gan": "epic_gan_t30_cpu.pt",
        "epic-fm": "epic_fm_t30_cpu.pt",
        "epic-jedi": "epic_jedi_t30_cpu.pt",
        "epic-fm-g30": "epic_fm_g30_cpu.pt",
        "epic-fm-q30": "epic_fm_q30_cpu.pt",
    },
    bench_models=(("EPiC-GAN", "epic-gan"), ("EPiC-FM", "epic-fm"), ("EPiC-JeDi", "epic-jedi")),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
