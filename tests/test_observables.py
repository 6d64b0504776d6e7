"""Observables on hand-built showers with known answers."""

import math

import numpy as np
import pytest

from caloforge.detector import get_detector
from caloforge.io import PointShowers, write_showers
from caloforge.observables import (
    ShowerObservables,
    compute_observables,
    derive_edges,
    feature_names,
    observables_from_file,
    quantile_edges,
)
from conftest import random_points

ILD = get_detector("ild-ecal")
CELL = ILD.readout.cell_size_mm


def _obs(points: list[list[float]], energy: float = 50.0) -> ShowerObservables:
    return compute_observables(PointShowers([energy], np.array([points], np.float32)), ILD)


def test_single_point():
    obs = _obs([[2 * CELL, -CELL, 13.5, 5.0]])
    assert obs.n_hits.tolist() == [1]
    assert obs.cog[0].tolist() == pytest.approx([2 * CELL, -CELL, 13.0])
    assert obs.e_vis.tolist() == [5.0] and obs.e_ratio[0] == pytest.approx(5.0 / 50_000)
    assert obs.cell_energy.tolist() == [5.0]
    # layer 13 is in the 4th E_long group [13, 15); radius sqrt(5)*CELL = 11.4 mm in ring [9.8, 13)
    assert np.flatnonzero(obs.e_long[0]).tolist() == [3]
    assert np.flatnonzero(obs.e_radial[0]).tolist() == [2]
    assert obs.e_layer[0, 13] == 5.0 and obs.e_layer.sum() == 5.0


def test_below_threshold_is_no_hit():
    obs = _obs([[0, 0, 4.5, 0.09], [0.5, 0.5, 4.5, 0.009]])  # 0.099 MeV in one cell < 0.1
    assert obs.n_hits.tolist() == [0] and obs.e_vis.tolist() == [0.0]
    assert obs.cog[0].tolist() == [0.0, 0.0, 0.0]
    obs = _obs([[0, 0, 4.5, 0.09], [0.5, 0.5, 4.5, 0.011]])  # sums above threshold
    assert obs.n_hits.tolist() == [1]


def test_energy_weighted_centre_of_gravity():
    obs = _obs([[0, 0, 0.5, 1.0], [3 * CELL, 0, 29.5, 3.0]])
    assert obs.cog[0].tolist() == pytest.approx([2.25 * CELL, 0.0, 0.75 * 29])
    assert obs.n_hits[0] == 2 and obs.e_long[0, 0] == 1.0 and obs.e_long[0, -1] == 3.0


def test_last_long_group_closed():
    # layer 29 is included in the last group (edges ... 24, 30)
    assert _obs([[0, 0, 29.5, 1.0]]).e_long[0].tolist() == [0] * 9 + [1.0]


def test_high_level_vector_has_25_features():
    obs = compute_observables(random_points(10, 80, seed=1), ILD)
    hl = obs.high_level()
    assert hl.shape == (10, 25) and len(feature_names(ILD)) == 25
    assert np.allclose(hl[:, -1], obs.e_vis) and np.allclose(hl[:, -2], obs.n_hits)
    # E_radial rings partition the energy of hits within 300 mm
    assert np.allclose(obs.e_radial.sum(1), obs.e_vis)
    assert np.allclose(obs.e_long.sum(1), obs.e_vis) and np.allclose(obs.e_layer.sum(1), obs.e_vis)
    assert np.allclose(obs.radial_profile.sum(1), obs.e_vis)
    offsets = obs.cell_offsets
    assert np.allclose(
        [obs.cell_energy[offsets[i] : offsets[i + 1]].sum() for i in range(10)], obs.e_vis, rtol=1e-5
    )


def test_subset_and_concatenate():
    obs = compute_observables(random_points(12, 30, seed=3), ILD)
    parts = [obs.subset(np.arange(0, 5)), obs.subset(np.arange(5, 12))]
    joined = ShowerObservables.concatenate(parts)
    assert np.array_equal(joined.cell_energy, obs.cell_energy)
    assert np.array_equal(joined.cell_offsets, obs.cell_offsets)
    picked = obs.subset(np.array([7, 2]))
    assert np.array_equal(picked.n_hits, obs.n_hits[[7, 2]])
    assert np.array_equal(
        picked.cell_energy[: obs.n_hits[7]], obs.cell_energy[obs.cell_offsets[7] : obs.cell_offsets[8]]
    )


def test_file_in_chunks_matches_in_memory(tmp_path):
    showers = random_points(45, 60, seed=8)
    path = tmp_path / "s.h5"
    write_showers(path, showers)
    seen = []
    from_file = observables_from_file(path, chunk_size=10, progress=seen.append)
    assert seen == [10, 10, 10, 10, 5]
    direct = compute_observables(showers, ILD)
    assert np.allclose(from_file.high_level(), direct.high_level(), rtol=1e-5)


def test_voxel_observables_ds2():
    ds2 = get_detector("calochallenge-ds2")
    obs = compute_observables(PointShowers([10.0], np.array([[[0.0, 3.0, 7.5, 0.5]]], np.float32)), ds2)
    assert obs.n_hits.tolist() == [1] and obs.cog[0, 2] == 7.0
    assert math.isclose(np.hypot(*obs.cog[0, :2]), (4.65 + 0.0) / 2, rel_tol=1e-6)
    assert obs.high_level().shape == (1, len(feature_names(ds2)))


def test_quantile_edges_and_derived_edges():
    edges = quantile_edges(np.random.default_rng(0).uniform(0, 10, 100_000), 5, lo=0, hi=10)
    assert np.allclose(edges, [0, 2, 4, 6, 8, 10], atol=0.05)
    long_edges, radial_edges = derive_edges(random_points(200, 100, seed=6), "ild-ecal")
    assert long_edges[0] == 0 and long_edges[-1] == 30 and len(long_edges) >= 8
    assert radial_edges[0] == 0 and len(radial_edges) == 11
    # random_points has Gaussian x/y of width 15 mm: median hit radius ~ 15 * sqrt(2 ln 2)
    assert 12 < radial_edges[5] < 24
