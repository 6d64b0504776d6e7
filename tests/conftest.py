"""Shared fixtures: small hand-built and random shower batches."""

import sys

import numpy as np
import pytest

from caloforge import cli
from caloforge.detector import get_detector
from caloforge.io import PointShowers, VoxelShowers
from caloforge.jets.io import Jets
from caloforge.models.caloclouds2 import CaloClouds2Config


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A command run in-process sets torch's thread count for the rest of the process (the
    default from the machine's load, or ``--threads``): every test starts with the session's."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    if threads is not None:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _machine_seen_idle(request, monkeypatch):
    """Commands run in-process choose their threads as on an idle machine: a CI machine that
    something else keeps busy for a moment would otherwise add a "threads: …" line to their
    stderr. Tests marked ``machine_load`` measure the real load."""
    if request.node.get_closest_marker("machine_load") is None:
        from caloforge import hardware

        monkeypatch.setattr(hardware, "busy_cpus", lambda window_s=0.1: 0.0)


#: ``caloforge evaluate`` options for a family's command-line test: the smallest classifier and W1
#: runs, no figures (those are tested in test_evaluate and test_end_to_end).
QUICK_EVALUATE = ("--splits", 2, "--epochs", 2, "--draws", 2, "--no-plots")


def run_cli(monkeypatch, *args: object, code: int = 0) -> None:
    """Run ``caloforge ARGS`` in-process and assert its exit code (0 by default)."""
    monkeypatch.setattr(sys, "argv", ["caloforge", *map(str, args)])
    try:
        cli.main()
    except SystemExit as exc:
        assert (exc.code or 0) == code, f"caloforge {' '.join(map(str, args))} exited with {exc.code}"


def cli_run(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    """Run ``caloforge ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["caloforge", *map(str, args)])
    monkeypatch.setitem(cli._state, "debug", False)
    monkeypatch.setenv("COLUMNS", "250")  # long messages on one line
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def random_points(n: int, max_points: int, seed: int = 0, n_layers: int = 30) -> PointShowers:
    """Random showers with a varying number of points, padded at the back."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((n, max_points, 4), np.float32)
    for i in range(n):
        k = rng.integers(1, max_points + 1)
        pts[i, :k, 0] = rng.normal(0, 15, k)
        pts[i, :k, 1] = rng.normal(0, 15, k)
        pts[i, :k, 2] = rng.integers(0, n_layers, k) + 0.5
        pts[i, :k, 3] = rng.exponential(0.5, k) + 1e-3
    return PointShowers(rng.uniform(10, 90, n), pts)


def toy_voxels(n: int, seed: int = 0) -> VoxelShowers:
    """Shower-like voxels: a longitudinal Gamma profile and an exponential radial fall-off."""
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(np.log(1.0), np.log(100.0), n))
    layer = np.arange(45)
    ring = np.arange(9)
    out = np.zeros((n, 45, 16, 9), np.float32)
    for i in range(n):
        peak = 6 + 2 * np.log(energy[i]) + rng.normal(0, 1)
        prof = (layer + 1) ** 2 * np.exp(-(layer + 1) / max(peak / 2, 1.0))
        prof = prof / prof.sum() * energy[i] * 1000 * 0.015 * rng.uniform(0.9, 1.1)
        radial = np.exp(-ring / rng.uniform(0.8, 1.5))
        shape = radial[None, None, :] * rng.gamma(4.0, 1.0, (45, 16, 9))
        shape /= shape.sum(axis=(1, 2), keepdims=True)
        out[i] = prof[:, None, None] * shape
    out[out < get_detector("calochallenge-ds2").threshold_mev] = 0.0
    return VoxelShowers(energy, out.reshape(n, -1))


def toy_images(n: int, seed: int = 0) -> VoxelShowers:
    """Photon-like cell images on ``ild-ecal-30`` (30 layers × 30 × 30 cells, flat ``[layer, x, y]``):
    a longitudinal Gamma profile, an exponential transverse fall-off around the gun cell (15, 15)
    and Gamma fluctuations per cell, below-threshold cells zeroed."""
    det = get_detector("ild-ecal-30")
    rng = np.random.default_rng(seed)
    energy = rng.uniform(10.0, 90.0, n)
    layer = np.arange(30)
    r = np.hypot(*np.meshgrid(np.arange(30) - 15, np.arange(30) - 15, indexing="ij"))
    out = np.zeros((n, 30, 30, 30), np.float32)
    for i in range(n):
        peak = 4 + 1.5 * np.log(energy[i]) + rng.normal(0, 0.7)
        prof = (layer + 1) ** 2 * np.exp(-(layer + 1) / max(peak / 2, 1.0))
        prof = prof / prof.sum() * energy[i] * 1000 * 0.015 * rng.uniform(0.95, 1.05)
        shape = np.exp(-r / rng.uniform(0.7, 1.2))[None] * rng.gamma(2.0, 1.0, (30, 30, 30))
        shape /= shape.sum(axis=(1, 2), keepdims=True)
        out[i] = prof[:, None, None] * shape
    out[out < det.threshold_mev] = 0.0
    return VoxelShowers(energy, out.reshape(n, -1))


def toy_jets(n: int, n_particles: int = 30, seed: int = 0, spread: float = 0.1) -> Jets:
    """Top-like jets: particles around three prongs, pT falling with rank, padded at the back."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, n_particles, 4), np.float32)
    jet = np.zeros((n, 4), np.float32)
    for i in range(n):
        k = int(rng.integers(max(2, n_particles // 2), n_particles + 1))
        prongs = rng.normal(0, 0.25, (3, 2))
        which = rng.integers(0, 3, k)
        eta_phi = prongs[which] + rng.normal(0, spread, (k, 2))
        pt = np.sort(rng.exponential(1.0, k))[::-1] + 1e-3
        out[i, :k, 0] = eta_phi[:, 0] - eta_phi[:, 0].mean()
        out[i, :k, 1] = eta_phi[:, 1] - eta_phi[:, 1].mean()
        out[i, :k, 2] = pt / pt.sum()
        out[i, :k, 3] = 1.0
        jet[i] = (rng.uniform(800, 1200), rng.uniform(-2, 2), rng.uniform(120, 220), k)
    return Jets(out, jet, "t")


@pytest.fixture
def showers() -> PointShowers:
    return random_points(50, 40)


#: A CaloClouds II run of seconds (tests of training, resuming, processes).
CALOCLOUDS2_TINY = CaloClouds2Config(
    name="tiny",
    cache_points=32,
    chunk_size=10,
    flow_hidden=(16,),
    flow_transforms=1,
    flow_steps=6,
    flow_batch_size=16,
    net_widths=(4, 16, 4),
    steps=8,
    batch_size=4,
    points_per_shower=16,
    calibration_showers=8,
    calibration_sampler_steps=2,
    log_every=4,
)
