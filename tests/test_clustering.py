"""Step clustering: exact energy conservation and agreement with the cell projection."""

import numpy as np
import pytest

from caloforge.clustering import cluster_pitch_mm, cluster_steps, coarsen_points
from caloforge.detector import get_detector
from caloforge.io import PointShowers
from caloforge.projection import project_points


def _steps(seed: int, n: int, n_layers: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [rng.normal(0, 12, n), rng.normal(0, 12, n), rng.integers(0, n_layers, n), rng.exponential(0.05, n)]
    )


@pytest.mark.parametrize("name", ["ild-ecal", "calochallenge-ds2"])
def test_energy_conserved_exactly_per_layer(name):
    det = get_detector(name)
    events = [_steps(s, 3000, det.n_layers) for s in range(4)]
    clouds = cluster_steps(events, det)
    for steps, cloud in zip(events, clouds, strict=True):
        assert len(cloud) < len(steps)
        assert cloud[:, 3].sum() == pytest.approx(steps[:, 3].sum(), rel=1e-12)
        per_layer = np.bincount(steps[:, 2].astype(int), weights=steps[:, 3], minlength=det.n_layers)
        clustered = np.bincount(
            np.floor(cloud[:, 2]).astype(int), weights=cloud[:, 3], minlength=det.n_layers
        )
        assert np.allclose(per_layer, clustered, rtol=1e-12)


def test_fine_grid_is_six_times_finer_and_aligned_with_cells():
    det = get_detector("ild-ecal")
    steps = _steps(1, 5000, det.n_layers)
    cloud = cluster_steps([steps], det)[0]
    pitch = det.readout.cell_size_mm / 6
    assert np.allclose(pitch, det.fine_cell_mm)
    # Point centres sit half a fine pitch from a fine edge, edges being offset from cell edges by k * pitch.
    offset = (cloud[:, 0] + det.readout.cell_size_mm / 2) / pitch - 0.5
    assert np.allclose(offset, np.round(offset), atol=1e-6)
    # Cell energies from clustered points equal those from the raw steps.
    raw = PointShowers.from_list([50.0], [np.column_stack([steps[:, :2], steps[:, 2] + 0.5, steps[:, 3]])])
    clustered = PointShowers.from_list([50.0], [cloud])
    a, b = project_points(raw, det), project_points(clustered, det)
    assert np.array_equal(a.channel, b.channel)
    assert np.allclose(a.energy, b.energy, rtol=1e-5)


def test_events_stay_separate_and_empty_events():
    det = get_detector("ild-ecal")
    same = np.array([[0.0, 0.0, 5, 1.0]])
    clouds = cluster_steps([same, np.zeros((0, 4)), same], det)
    assert [len(c) for c in clouds] == [1, 0, 1]
    assert clouds[0][0, 2] == 5.5


@pytest.mark.parametrize("per_cell", [1, 2, 3, 6])
def test_coarser_grid_keeps_cell_energies_with_fewer_points(per_cell):
    det = get_detector("ild-ecal")
    events = [_steps(s, 4000, det.n_layers) for s in range(3)]
    fine = PointShowers.from_list(np.full(3, 50.0), cluster_steps(events, det))
    coarse = coarsen_points(fine, det, per_cell)
    assert cluster_pitch_mm(det, per_cell) == pytest.approx(det.readout.cell_size_mm / per_cell)
    if per_cell == 6:
        assert np.array_equal(coarse.n_points, fine.n_points)
    else:
        assert (coarse.n_points < fine.n_points).all()
    a, b = project_points(fine, det), project_points(coarse, det)
    assert np.array_equal(a.channel, b.channel) and np.allclose(a.energy, b.energy, rtol=1e-5)
    # The points sit at the centres of the coarse squares.
    pitch = cluster_pitch_mm(det, per_cell)
    x = coarse.points[coarse.mask][:, 0]
    offset = (x + det.readout.cell_size_mm / 2) / pitch - 0.5
    assert np.allclose(offset, np.round(offset), atol=1e-3)


def test_coarser_grid_must_tile_the_fine_grid():
    with pytest.raises(ValueError, match="do not tile the fine grid of 6 per cell: use a divisor of 6"):
        cluster_pitch_mm(get_detector("ild-ecal"), 4)
    with pytest.raises(ValueError, match="has no readout cells"):
        cluster_pitch_mm(get_detector("calochallenge-ds2"), 2)
    assert (
        cluster_pitch_mm(get_detector("calochallenge-ds2")) == get_detector("calochallenge-ds2").fine_cell_mm
    )
