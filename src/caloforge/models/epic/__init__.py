"""EPiC models for jets as particle clouds (arXiv:2301.08128, 2310.00049; SPEC 6.7): EPiC-GAN,
EPiC-FM (flow matching) and EPiC-JeDi (diffusion), three variants of one family sharing the
EPiC backbone (:mod:`.model`), trained by :mod:`.training`, sampled by :mod:`.generation`.
Their checkpoints say which variant they are (format ``caloforge-epic-gan`` / ``-fm`` /
``-jedi``). Importing this package imports none of its modules."""

from __future__ import annotations

from caloforge.models.protocol import Capabilities, Family, lazy_exports

_EXPORTS = {
    "EPiCConfig": "config",
    "VARIANTS": "config",
    "EPiCJetModel": "model",
    "EPiCNet": "model",
    "EPiCDiscriminator": "model",
    "load_model": "checkpoint",
    "save_for_inference": "checkpoint",
    "EPiCGenerator": "generation",
    "train": "training",
}

__all__ = ["FAMILY", *_EXPORTS]

FAMILY = Family(
    name="epic",
    description="EPiC",
    formats=("caloforge-epic-gan", "caloforge-epic-fm", "caloforge-epic-jedi"),
    loader="caloforge.models.epic.generation:load_generator",
    output="jets",
    capabilities=Capabilities(workers=True, precisions=("float32",)),
    commands="caloforge.models.epic.cli:add_commands",
    shipped={
        "epic-gan": "epic_gan_t30_cpu.pt",
        "epic-fm": "epic_fm_t30_cpu.pt",
        "epic-jedi": "epic_jedi_t30_cpu.pt",
    },
    bench_models=(("EPiC-GAN", "epic-gan"), ("EPiC-FM", "epic-fm"), ("EPiC-JeDi", "epic-jedi")),
)

__getattr__ = lazy_exports(__name__, _EXPORTS)
