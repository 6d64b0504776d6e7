"""A tiny model family for tests and docs/architecture.md: analytic Gaussian point showers.

It has no network: its "checkpoint" holds a few numbers (points per GeV, transverse width,
depth of the shower maximum), and a shower is drawn from them. It implements the whole
family protocol, so it runs through ``caloforge generate`` (``--workers`` too), ``caloforge
bench`` and ``caloforge evaluate`` exactly like a trained family. Register it with
``CALOFORGE_FAMILIES=gaussian_family:FAMILY`` (this directory on the Python path).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.detector import get_detector
from caloforge.io import PointShowers
from caloforge.models.checkpoint import check_format, save_checkpoint
from caloforge.models.protocol import (
    Capabilities,
    Family,
    GenerationError,
    GenerationRequest,
    Plan,
    SamplerInfo,
    batch_seed,
    energy_condition,
)

FORMAT = "test-gaussian"
VERSION = 1

FAMILY = Family(
    name="gaussian",
    description="Gaussian test",
    formats=(FORMAT,),
    loader="gaussian_family:load_generator",
    capabilities=Capabilities(workers=True, precisions=("float32",)),
)


def save_model(path: Path, points_per_gev: float = 20.0, width_mm: float = 15.0, depth: float = 9.0) -> Path:
    """Write a Gaussian "checkpoint" for ild-ecal photons at 10-90 GeV."""
    state = {
        "format": FORMAT,
        "format_version": VERSION,
        "detector": "ild-ecal",
        "energy_range": [10.0, 90.0],
        "points_per_gev": points_per_gev,
        "width_mm": width_mm,
        "depth": depth,
    }
    save_checkpoint(state, path)
    return path


class GaussianGenerator:
    """Points with Gaussian x, y (width ``width_mm``) and depth (around layer ``depth``)."""

    family = "gaussian"
    label = "gaussian"
    output = "points"
    particle = "gamma"
    complete = True

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.detector = get_detector(state["detector"])
        self.conditions = (energy_condition(state["energy_range"]),)

    def plan(self, request: GenerationRequest) -> Plan:
        if request.sampler not in (None, "exact"):
            raise GenerationError(f"unknown sampler '{request.sampler}': the Gaussian model samples 'exact'")
        if request.precision not in ("auto", "float32") or request.device != "cpu":
            raise GenerationError("the Gaussian model runs in float32 on the CPU")
        return Plan(SamplerInfo("exact", 1, 0), allow_extrapolation=request.allow_extrapolation)

    def generate_batch(self, conditions: Mapping[str, np.ndarray], plan: Plan, seed: int, index: int) -> Any:
        rng = np.random.default_rng(batch_seed(seed, index))
        energy = np.asarray(conditions["energy"], np.float64)
        n = np.maximum(1, rng.poisson(self.state["points_per_gev"] * energy))
        points = np.zeros((len(energy), int(n.max()), 4), np.float32)
        n_layers = self.detector.n_layers
        for i, k in enumerate(n):
            points[i, :k, :2] = rng.normal(0.0, self.state["width_mm"], (k, 2))
            layer = np.clip(np.rint(rng.gamma(4.0, self.state["depth"] / 3.0, k)), 0, n_layers - 1)
            points[i, :k, 2] = layer + 0.5
            points[i, :k, 3] = rng.exponential(1.0, k) * energy[i] * 10.0 / k  # ~1 % sampling fraction, MeV
        return PointShowers(energy, points)

    def describe(self) -> dict[str, Any]:
        return {k: self.state[k] for k in ("points_per_gev", "width_mm", "depth")}


def load_generator(path: Path, state: dict[str, Any]) -> GaussianGenerator:
    return GaussianGenerator(check_format(state, path, FORMAT, VERSION, ("detector",), "Gaussian test"))
