"""Same seed, same showers: the first showers of every shipped model for a fixed seed are pinned.

The pins are per-shower summaries (points or hits, total energy, energy-weighted centre),
compared with tolerances far below what any change of random stream or model produces (a
new stream moves totals by percent) and above what float rounding differs by between CPUs
(AVX2, AVX-512, AMX: the last bits of float32 arithmetic are not portable, so a hash of the raw
values would be). Regenerate after an intentional change, and say so in CHANGELOG.md::

    python tests/test_shipped_showers.py   # rewrites tests/data/shipped_showers.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from caloforge.models import GenerationRequest, generate_batches, registry

PINS = Path(__file__).parent / "data" / "shipped_showers.json"
MODELS = (
    "caloclouds2-cm",
    "caloclouds2-cm-fast",
    "caloclouds2",
    "caloclouds1",
    "calodream",
    "calodream-lavit",
    "calodream-ds3",
)
ENERGIES = [12.0, 35.0, 60.0, 88.0]
SEED = 7


def fingerprint(name: str) -> list[dict[str, float]]:
    """Summaries of the first showers of the shipped model ``name`` (float32, seed 7, batches of 2)."""
    import torch

    torch.set_num_threads(1)
    generator = registry.load_generator(name)
    plan = generator.plan(GenerationRequest(precision="float32"))
    out = []
    for batch in generate_batches(generator, {"energy": ENERGIES}, plan, SEED, batch_size=2):
        if generator.output == "points":
            pts = batch.points.astype(np.float64)
            e = pts[..., 3]
            counts = batch.n_points
            x, y = (e * pts[..., 0]).sum(1) / e.sum(1), (e * pts[..., 1]).sum(1) / e.sum(1)
            depth = (e * pts[..., 2]).sum(1) / e.sum(1)
        else:
            v = batch.voxels.astype(np.float64).reshape(len(batch), generator.detector.n_layers, -1)
            e = v.sum(2)
            counts = (v > 0).sum((1, 2))
            depth = (e * (np.arange(e.shape[1]) + 0.5)).sum(1) / e.sum(1)
            x = y = np.zeros(len(batch))
            e = v
        total = e.reshape(len(batch), -1).sum(1)
        for i in range(len(batch)):
            out.append(
                {
                    "count": int(counts[i]),
                    "energy": float(total[i]),
                    "x": float(x[i]),
                    "y": float(y[i]),
                    "depth": float(depth[i]),
                }
            )
    return out


@pytest.mark.parametrize("name", MODELS)
def test_first_showers_of_shipped_models_are_pinned(name):
    pins = json.loads(PINS.read_text())[name]
    got = fingerprint(name)
    assert len(got) == len(pins)
    for g, p in zip(got, pins, strict=True):
        assert abs(g["count"] - p["count"]) <= max(2, 0.002 * p["count"]), (g, p)
        assert g["energy"] == pytest.approx(p["energy"], rel=1e-3), (g, p)
        for key in ("x", "y", "depth"):
            assert g[key] == pytest.approx(p[key], abs=0.05), (key, g, p)


if __name__ == "__main__":
    PINS.write_text(json.dumps({name: fingerprint(name) for name in MODELS}, indent=1) + "\n")
    print(f"wrote {PINS}")
