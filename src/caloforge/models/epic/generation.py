"""EPiC generation: jets from a trained model as a :class:`~caloforge.models.protocol.ShowerGenerator`
whose output kind is ``jets``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caloforge.jets.io import Jets
from caloforge.jets.observables import jet_kinematics
from caloforge.models.epic.checkpoint import CHECKPOINTS
from caloforge.models.epic.config import SAMPLERS
from caloforge.models.epic.model import EPiCJetModel
from caloforge.models.protocol import (
    Condition,
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
)

__all__ = ["EPiCGenerator", "jet_batch", "load_generator"]

_DESCRIPTIONS = {"gan": "EPiC-GAN", "fm": "EPiC-FM", "jedi": "EPiC-JeDi"}


def jet_batch(
    model: EPiCJetModel,
    conditions: Mapping[str, np.ndarray],
    sampler: str,
    steps: int,
    seed: int,
    index: int,
    clip: float | None = None,
) -> Jets:
    """Batch ``index`` of a run with ``seed``: jets for ``conditions`` (``pt``, ``eta``,
    ``num_particles`` and, for conditional models, ``mass``).

    The file's jet features are ``pt`` (the condition), ``eta``, the mass of the generated
    constituents (relative mass × pt) and the multiplicity. The jets are made on the model's
    device (noise drawn on the host) and come back to the host.
    """
    n = np.asarray(conditions["num_particles"], np.float64)
    pt = np.asarray(conditions["pt"], np.float64)
    mass = np.asarray(conditions.get("mass", np.ones(len(n))), np.float64)  # unused when unconditional
    eta = np.asarray(conditions["eta"], np.float64)
    jet = torch.from_numpy(np.stack([pt, eta, mass, n], axis=1).astype(np.float32))
    gen = torch.Generator().manual_seed(batch_seed(seed, index))
    particles = model.sample(jet.to(model.particle_mean.device), sampler, steps, gen, clip).cpu().numpy()
    kin = jet_kinematics(particles)
    features = np.stack([pt, eta, kin["mass"] * pt, (particles[..., 3] > 0.5).sum(1)], axis=1)
    return Jets(particles, features.astype(np.float32), model.jet_type)


class EPiCGenerator:
    """An EPiC checkpoint (GAN, FM or JeDi) as a generator of jets.

    Conditions: ``pt`` (GeV), ``eta``, ``num_particles`` and, for conditional models, ``mass``
    (GeV); an unconditional model only records ``pt`` and ``eta`` in the file (its relative
    particles do not depend on them). :meth:`sample_conditions` draws them from the model's
    condition flow, or from the training jets' table stored in the checkpoint (what
    ``caloforge generate`` uses without a conditions file; ``--option conditions=table``).
    It generates on the request's device (the CPU or a CUDA device).
    """

    family = "epic"
    output = "jets"
    detector = None

    def __init__(self, model: EPiCJetModel, path: Path | None = None) -> None:
        self.model, self.path = model, path
        cfg = model.config
        self.label = f"epic-{cfg.variant}"
        self.particle = model.jet_type
        table = model.condition_table.cpu().numpy()
        if cfg.conditional:
            pt = Condition("pt", "GeV", float(table[:, 0].min()), float(table[:, 0].max()))
            eta = Condition("eta", "", float(table[:, 1].min()), float(table[:, 1].max()), positive=False)
        else:  # only recorded in the file: any jet pT and eta will do
            pt = Condition("pt", "GeV", 1e-3, 1e5)
            eta = Condition("eta", "", -10.0, 10.0, positive=False)
        mass = Condition("mass", "GeV", float(table[:, 2].min()), float(table[:, 2].max()))
        n_cond = Condition("num_particles", "", 1.0, float(cfg.n_particles))
        # pt and eta of an unconditional model are only recorded (its particles are relative).
        self.conditions: tuple[Condition, ...] = (
            (pt, eta, mass, n_cond) if cfg.conditional else (pt, eta, n_cond)
        )
        self.complete = model.complete

    def sample_conditions(
        self, n: int, seed: int, options: Mapping[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """``n`` jet features (pt, eta, mass, num_particles) drawn with ``seed``: from the
        model's condition flow, or rows of the training jets' table (``options``
        ``conditions=table``, and models trained without a flow)."""
        source = self.condition_source(options or {})
        table = self.model.condition_table.cpu()
        if source == "flow":  # on the host, wherever the model is: the same rows for a seed
            assert self.model.condition_flow is not None
            flow = copy.deepcopy(self.model.condition_flow).cpu()
            rows = flow.sample(n, torch.Generator().manual_seed(_flow_seed(seed)), table).numpy()
        else:
            table_np = table.numpy().astype(np.float64)
            rows = table_np[np.random.default_rng([seed % 2**63, 7]).integers(0, len(table_np), n)]
        out = {"pt": rows[:, 0], "eta": rows[:, 1], "mass": rows[:, 2], "num_particles": rows[:, 3]}
        if not self.model.config.conditional:
            out.pop("mass")
        return out

    def condition_source(self, options: Mapping[str, Any]) -> str:
        """Where drawn jet features come from: ``flow`` (the default of a model trained with
        one) or ``table`` (the stored training jets), as ``options["conditions"]`` asks."""
        has_flow = self.model.condition_flow is not None
        source = str(options.get("conditions", "flow" if has_flow else "table"))
        if source not in ("flow", "table"):
            raise GenerationError(f"conditions={source}: use conditions=flow or conditions=table")
        if source == "flow" and not has_flow:
            raise GenerationError(
                "conditions=flow: this model was trained without a condition flow; use conditions=table"
            )
        return source

    def plan(self, request: GenerationRequest) -> Plan:
        """The model's sampler and steps unless asked otherwise; float32 on the request's device."""
        cfg = self.model.config
        samplers = SAMPLERS[cfg.variant]
        sampler = request.sampler or cfg.sampler
        if sampler not in samplers:
            raise GenerationError(
                f"unknown sampler '{sampler}' for {_DESCRIPTIONS[cfg.variant]}: use {', '.join(samplers)}"
            )
        steps = request.n_steps or cfg.sample_steps
        if cfg.variant == "gan" and request.n_steps not in (None, 1):
            raise GenerationError(
                f"--steps {request.n_steps}: EPiC-GAN generates in one pass (no steps to set)"
            )
        if request.precision not in ("auto", "float32"):
            raise GenerationError(
                f"--precision {request.precision}: EPiC models run in float32 (auto or float32)"
            )
        allowed = {"clip", "conditions"} if cfg.variant == "jedi" else {"conditions"}
        unknown = sorted(set(request.options) - allowed)
        if unknown:
            name, takes = _DESCRIPTIONS[cfg.variant], ", ".join(sorted(allowed))
            raise GenerationError(f"unknown {name} generation option '{unknown[0]}' (it takes {takes})")
        self.condition_source(request.options)  # checked here too; used where conditions are drawn
        attrs: dict[str, Any] = {"n_particles": cfg.n_particles, "variant": cfg.variant}
        options: dict[str, Any] = {"sampler": sampler, "steps": steps}
        if cfg.variant == "jedi":
            clip = float(request.options.get("clip", cfg.jedi_clip))
            if not clip > 0:
                raise GenerationError(f"clip must be positive (standard deviations), got {clip}")
            attrs["clip"] = options["clip"] = clip
        calls = self.model.network_calls(sampler, steps)
        return Plan(
            sampler=SamplerInfo(sampler, steps, calls),
            precision="float32",
            device=request.device,
            allow_extrapolation=request.allow_extrapolation,
            attrs=attrs,
            options=options,
        )

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Jets:
        """One batch of :class:`~caloforge.jets.io.Jets`, on the plan's device (the model is moved
        there)."""
        n = np.asarray(conditions["num_particles"])
        if (np.round(n) != n).any() or (n < 1).any() or (n > self.model.config.n_particles).any():
            raise GenerationError(
                f"num_particles must be whole numbers 1-{self.model.config.n_particles} "
                f"(this model makes {self.model.config.n_particles}-particle jets)"
            )
        o = plan.options
        self.model.to(plan.device)
        return jet_batch(self.model, conditions, o["sampler"], o["steps"], seed, index, o.get("clip"))

    def describe(self) -> dict[str, Any]:
        """Variant, backbone and parameters."""
        c = self.model.config
        cond = "jet pT, mass and multiplicity" if c.conditional else "multiplicity only"
        return {
            "model": _DESCRIPTIONS[c.variant],
            "parameters": self.model.n_parameters()["network"],
            "backbone": f"{c.n_layers} EPiC layers, {c.dim_local} local / {c.dim_global} global, "
            f"hidden {c.hidden}",
            "particles": f"{c.n_particles} per jet ({self.model.jet_type} jets)",
            "conditioning": cond,
            "drawn conditions": "a neural spline flow over (pT, eta, mass, multiplicity)"
            if self.model.condition_flow is not None
            else "rows of the stored training jets",
            "sampler": f"{c.sampler}, {c.sample_steps} steps" if c.variant != "gan" else "one pass",
        }


def _flow_seed(seed: int) -> int:
    """The seed of a run's condition-flow draw: a stream of its own (not a batch's)."""
    state = np.random.SeedSequence([seed % 2**63, 7], spawn_key=(1,)).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def load_generator(path: Path, state: dict[str, Any]) -> EPiCGenerator:
    """The family loader: a checked checkpoint's contents as a generator."""
    return EPiCGenerator(CHECKPOINTS.model_from_state(state, path), path)
