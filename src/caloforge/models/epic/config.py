"""EPiC run settings: one dataclass for the three variants (GAN, flow matching, JeDi diffusion);
presets ``cpu``, ``paper`` and ``smoke``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from caloforge.models._config import LoopConfig
from caloforge.odesolvers import FIXED_STEP_METHODS

#: The three models that share the EPiC backbone.
VARIANTS = ("gan", "fm", "jedi")
#: Samplers of the diffusion-like variants (the GAN samples in one pass).
SAMPLERS = {"gan": ("direct",), "fm": FIXED_STEP_METHODS, "jedi": ("ddim",)}


_POSITIVE = (
    "n_particles", "steps", "batch_size", "log_every", "dim_local", "dim_global", "hidden", "n_layers",
    "disc_layers", "latent_local", "latent_global", "time_dim", "sample_steps", "flow_transforms",
    "flow_hidden",
)  # fmt: skip


@dataclass(frozen=True)
class EPiCConfig(LoopConfig):
    """Settings of one EPiC training run (``variant``: gan, fm or jedi).

    Presets: ``cpu`` (2 CPU cores: 9-15 minutes; the published widths — 128 hidden, 6
    generator / 3 critic layers, global dimension 10 — with short schedules), ``paper`` (the
    same networks with the long schedules, for a GPU), ``smoke`` (seconds, for tests).
    :meth:`for_variant` applies a variant's own defaults (the GAN is unconditional and trains
    with Adam, 2e-4 on CPU and the paper's 1e-4 in ``paper``; FM and JeDi condition on jet
    pT, mass and multiplicity).
    """

    KIND: ClassVar[str] = "EPiC"
    LEGACY: ClassVar[dict[str, Any]] = {
        "time_max_frequency": 1000.0,
        "jedi_clip": 6.0,
        "condition_flow": False,
    }

    variant: str = "fm"
    conditional: bool = True  # on jet pT, mass and multiplicity (else multiplicity only)
    n_particles: int = 30
    steps: int = 5000
    batch_size: int = 128
    lr_disc: float = 1e-4
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    val_fraction: float = 0.05
    # the EPiC backbone
    dim_local: int = 128
    dim_global: int = 10
    hidden: int = 128
    n_layers: int = 6
    disc_layers: int = 3
    latent_local: int = 3  # GAN: noise dimensions per particle
    latent_global: int = 10  # GAN: noise dimensions per jet
    time_dim: int = 16  # FM / JeDi: sinusoidal time features ...
    time_max_frequency: float = 20.0  # ... of frequencies 1 to this (cycles per unit time)
    # the jet features a run draws without a conditions file: a neural spline flow over
    # (log pT, eta, log mass, multiplicity) trained beside the network (conditions.py), or,
    # without it, rows of the stored training-jet table
    condition_flow: bool = True
    flow_transforms: int = 3
    flow_hidden: int = 64
    # sampling
    sampler: str = "midpoint"
    sample_steps: int = 20
    sigma_min: float = 1e-4  # FM
    # FM: training times t = u ** (1 / time_power), u uniform: 1 is uniform, above 1 puts more
    # of the steps near the data (t = 1), where the particles' fine positions are learned (the
    # validation loss uses the same times: compare it only between runs of one time_power)
    time_power: float = 1.0
    # JeDi: VP cosine schedule, loss weight (1 - jedi_alpha * beta(t) / sigma(t)^2), floored at 0;
    # DDIM clips its clean-particle estimate at jedi_clip standard deviations (3: chosen on the
    # validation jets, docs/jets.md)
    jedi_alpha: float = 0.0
    jedi_clip: float = 3.0

    def __post_init__(self) -> None:
        self.check(
            choices={"variant": VARIANTS},
            at_least_one=_POSITIVE,
            above_zero=("lr", "lr_disc", "time_max_frequency", "jedi_clip", "time_power"),
            fractions={"ema_decay": (0, 1), "val_fraction": (0, 0.5)},
        )
        if self.time_power != 1.0 and self.variant != "fm":
            raise ValueError(
                f"EPiC config: time_power is for the fm variant; leave it at 1 for {self.variant}"
            )
        if self.sampler not in SAMPLERS[self.variant]:
            raise ValueError(
                f"EPiC config: sampler {self.sampler!r} is not one of the {self.variant} variant's "
                f"({', '.join(SAMPLERS[self.variant])})"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> EPiCConfig:
        """The preset ``name`` with some fields replaced; with ``variant=`` in ``overrides``, that
        variant's own defaults first (:meth:`for_variant`)."""
        variant = overrides.pop("variant", None)
        if variant is None:
            return super().from_preset(name, **overrides)
        return cls.for_variant(variant, name, **overrides)

    @classmethod
    def for_variant(cls, variant: str, preset: str = "cpu", **overrides: Any) -> EPiCConfig:
        """The preset ``preset`` with ``variant``'s own defaults, then ``overrides``."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown EPiC variant '{variant}': use one of {', '.join(VARIANTS)}")
        base = cls.from_preset(preset)
        own = _VARIANT_DEFAULTS[variant] | _PRESET_VARIANT.get((preset, variant), {})
        return replace(base, variant=variant, **(own | overrides))


_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "gan": {
        "conditional": False,
        "lr": 2e-4,
        "lr_disc": 2e-4,
        "steps": 4000,
        "sampler": "direct",
        "sample_steps": 1,
        "ema_decay": 0.995,
    },
    "fm": {"conditional": True, "sampler": "midpoint", "sample_steps": 20},
    "jedi": {"conditional": True, "sampler": "ddim", "sample_steps": 40},
}
_PRESET_VARIANT: dict[tuple[str, str], dict[str, Any]] = {
    # cpu FM: a global vector of 32 (chosen on the validation jets over the paper's 10: W1m 4.6
    # vs 6.2, KL tau32 2.2 vs 2.6, AUC 0.818 vs 0.826, docs/jets.md); cpu JeDi keeps the time
    # features the shipped model was trained with (frequencies up to 1000)
    ("cpu", "fm"): {"dim_global": 32},
    ("cpu", "jedi"): {"time_max_frequency": 1000.0},
    ("paper", "gan"): {"steps": 400_000, "lr": 1e-4, "lr_disc": 1e-4},
    ("paper", "fm"): {"sample_steps": 100, "sampler": "midpoint"},
    ("paper", "jedi"): {"sample_steps": 200},
    ("smoke", "gan"): {"lr": 1e-3, "steps": 30},
}

#: The presets (presets.toml beside this module: the fields that differ from the defaults).
PRESETS: dict[str, EPiCConfig] = EPiCConfig.read_presets(__package__)

__all__ = ["SAMPLERS", "VARIANTS", "EPiCConfig"]
