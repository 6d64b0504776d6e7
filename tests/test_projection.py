"""Cell projection and polar voxelisation on hand-built showers."""

import math

import numpy as np
import pytest

from caloforge.detector import get_detector
from caloforge.io import PointShowers
from caloforge.projection import apply_threshold, hits_from_voxels, project_points, voxelise
from conftest import random_points

ILD = get_detector("ild-ecal")
DS2 = get_detector("calochallenge-ds2")
CELL = ILD.readout.cell_size_mm
CENTRE = ILD.readout.n_cells // 2


def _one(points: list[list[float]], energy: float = 50.0) -> PointShowers:
    return PointShowers([energy], np.array([points], np.float32))


def test_points_in_one_cell_are_summed():
    hits = project_points(_one([[0.1, 0.2, 3.5, 1.0], [-2.0, 2.4, 3.9, 0.5]]), ILD)
    assert len(hits.energy) == 1
    assert hits.layer.tolist() == [3] and hits.energy.tolist() == [1.5]
    assert hits.x.tolist() == [0.0] and hits.y.tolist() == [0.0]
    assert hits.channel.tolist() == [3 * ILD.readout.n_cells**2 + CENTRE * ILD.readout.n_cells + CENTRE]


@pytest.mark.parametrize(
    ("x", "y", "ix", "iy"),
    [
        (CELL * 0.49, 0.0, 0, 0),
        (CELL * 0.51, 0.0, 1, 0),
        (-CELL * 0.51, CELL * 2.2, -1, 2),
        (-100.0, 37.0, -20, 7),
    ],
)
def test_cell_indices(x, y, ix, iy):
    hits = project_points(_one([[x, y, 0.5, 1.0]]), ILD)
    assert math.isclose(hits.x[0], ix * CELL) and math.isclose(hits.y[0], iy * CELL)


def test_energy_conserved_and_outside_reported():
    showers = random_points(20, 300, seed=2)
    pts = showers.points.copy()
    pts[0, 0] = [400.0, 0.0, 5.5, 2.0]  # outside the grid
    pts[1, 0] = [0.0, 0.0, 31.5, 3.0]  # behind the last layer
    showers = PointShowers(showers.energy, pts)
    hits = project_points(showers, ILD)
    per_shower = np.bincount(hits.shower, weights=hits.energy, minlength=20)
    total = showers.points[..., 3].sum(axis=1)
    assert np.allclose(per_shower + hits.lost_mev, total, rtol=1e-6)
    assert math.isclose(hits.lost_mev[0], 2.0) and math.isclose(hits.lost_mev[1], 3.0)
    assert np.all(hits.lost_mev[2:] == 0)


def test_batch_projection_equals_one_by_one():
    showers = random_points(8, 100, seed=4)
    together = project_points(showers, ILD)
    for i in range(8):
        alone = project_points(showers[i : i + 1], ILD)
        sel = together.shower == i
        assert np.array_equal(together.channel[sel], alone.channel)
        assert np.allclose(together.energy[sel], alone.energy)


def test_threshold():
    hits = apply_threshold(project_points(_one([[0, 0, 0.5, 0.05], [20, 0, 0.5, 0.2]]), ILD), 0.1)
    assert hits.energy.tolist() == [pytest.approx(0.2)]


def test_voxelise_ds2_indices_and_conservation():
    # radius 5 mm (ring 1), angle just above -pi + 1 bin (bin 1), layer 2
    alpha = -math.pi + 1.5 * (2 * math.pi / 16)
    pts = [[5 * math.cos(alpha), 5 * math.sin(alpha), 2.5, 1.0], [50.0, 0.0, 0.5, 4.0], [0.0, 0.0, 44.2, 0.5]]
    vox = voxelise(_one(pts), DS2)
    assert vox.voxels.shape == (1, 6480)
    nz = np.flatnonzero(vox.voxels[0]).tolist()
    assert nz == [2 * 144 + 1 * 9 + 1, 44 * 144 + 8 * 9 + 0]  # (0, 0): angle 0 is bin 8
    hits = project_points(_one(pts), DS2)
    assert math.isclose(hits.lost_mev[0], 4.0)  # radius 50 mm is beyond the last ring
    assert math.isclose(hits.energy.sum() + hits.lost_mev[0], 5.5)


def test_voxel_hits_positions():
    showers = random_points(5, 50, seed=9, n_layers=45)
    vox = voxelise(showers, DS2)
    hits = hits_from_voxels(vox, DS2)
    assert np.allclose(
        np.bincount(hits.shower, weights=hits.energy, minlength=5), vox.voxels.sum(1), rtol=1e-5
    )
    r = hits.radius
    edges = np.asarray(DS2.readout.radial_edges_mm)
    ring = hits.channel % 9
    assert np.all((r > edges[ring]) & (r < edges[ring + 1]))
