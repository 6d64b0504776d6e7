"""Two-shower events (caloforge.pairs): the per-event observables, reading pair files, W1 and its floor."""

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from caloforge.io import PointShowers, write_showers
from caloforge.metrics import W1_UNIT
from caloforge.pairs import (
    PAIR_OBSERVABLES,
    pair_floor,
    pair_observables,
    pair_observables_from_file,
    pair_w1,
)


def _pair_events(n: int, separation: float = 40.0, offset: float = 0.0, seed: int = 0) -> PointShowers:
    """Two blobs of points per event around ``offset ± separation / 2`` in x, padded at the back."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((n, 24, 4), np.float32)
    for i in range(n):
        k_a, k_b = rng.integers(2, 12, 2)
        x_a = offset - separation / 2 + rng.normal(0, 3, k_a)
        x_b = offset + separation / 2 + rng.normal(0, 3, k_b)
        x = np.concatenate([np.minimum(x_a, offset - 0.1), np.maximum(x_b, offset + 0.1)])
        k = len(x)
        pts[i, :k, 0] = x
        pts[i, :k, 1] = rng.normal(0, 5, k)
        pts[i, :k, 2] = rng.integers(0, 30, k) + 0.5
        pts[i, :k, 3] = rng.exponential(1.0, k) + 0.01
    return PointShowers(rng.uniform(10, 50, n), pts)


def _observables(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "separation": rng.normal(40.0, 2.0, n) + shift,
        "energy share": rng.uniform(0.2, 0.8, n),
        "E_A": rng.gamma(5.0, 100.0, n),
        "E_B": rng.gamma(5.0, 100.0, n),
    }


# ----------------------------------------------------------------------------- observables


def test_observables_by_hand():
    # Event 0: A = {x=-10 (1 MeV), x=-20 (3 MeV)}, B = {x=10 (2 MeV)}, one padded slot.
    # Event 1: with the plane at x = 5, A = {x=0 (1)}, B = {x=5 (1), x=15 (3)} (x = offset is B).
    pts = np.zeros((2, 4, 4), np.float32)
    pts[0, :3] = [[-10, 1, 0.5, 1.0], [-20, -1, 1.5, 3.0], [10, 0, 2.5, 2.0]]
    pts[1, :3] = [[0, 0, 0.5, 1.0], [5, 0, 0.5, 1.0], [15, 0, 0.5, 3.0]]
    showers = PointShowers(np.array([10.0, 20.0]), pts)
    obs = pair_observables(showers[:1], offset_x_mm=0.0)
    assert set(obs) == set(PAIR_OBSERVABLES)
    np.testing.assert_allclose(obs["E_A"], [4.0])
    np.testing.assert_allclose(obs["E_B"], [2.0])
    np.testing.assert_allclose(obs["energy share"], [4.0 / 6.0])
    np.testing.assert_allclose(obs["separation"], [10.0 - (-10 * 1 - 20 * 3) / 4.0])  # 10 + 17.5
    obs = pair_observables(showers[1:], offset_x_mm=5.0)
    np.testing.assert_allclose(obs["E_A"], [1.0])
    np.testing.assert_allclose(obs["E_B"], [4.0])
    np.testing.assert_allclose(obs["separation"], [(5 + 45) / 4.0 - 0.0])


@pytest.mark.parametrize("shift", [-30.0, 7.5, 200.0])
def test_observables_follow_the_gun_offset(shift):
    """Moving every point and the dividing plane by the same x changes nothing."""
    showers = _pair_events(20, offset=0.0, seed=1)
    moved = showers.points.copy()
    moved[..., 0] += np.where(showers.mask, shift, 0.0)  # padded slots stay empty
    a = pair_observables(showers, 0.0)
    b = pair_observables(PointShowers(showers.energy, moved), shift)
    for k in PAIR_OBSERVABLES:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-3, err_msg=k)
    np.testing.assert_allclose(a["separation"], 40.0, atol=8.0)  # the blobs' centres are 40 mm apart
    np.testing.assert_allclose(a["E_A"] / (a["E_A"] + a["E_B"]), a["energy share"], rtol=1e-12)


def test_mirroring_swaps_the_clusters():
    showers = _pair_events(15, seed=2)
    mirrored = showers.points.copy()
    mirrored[..., 0] *= -1
    a = pair_observables(showers, 0.0)
    b = pair_observables(PointShowers(showers.energy, mirrored), 0.0)
    np.testing.assert_allclose(b["E_A"], a["E_B"], rtol=1e-6)
    np.testing.assert_allclose(b["energy share"], 1 - a["energy share"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b["separation"], a["separation"], rtol=1e-5)


def test_one_sided_event_has_no_separation():
    pts = np.array([[[-5.0, 0, 0.5, 1.0], [-3.0, 0, 0.5, 2.0]]], np.float32)
    obs = pair_observables(PointShowers(np.array([10.0]), pts), 0.0)
    assert obs["E_B"][0] == 0.0 and obs["energy share"][0] == 1.0
    assert np.isnan(obs["separation"][0])


# ----------------------------------------------------------------------------- files


def test_from_file_reads_the_offset_and_drops_one_sided_events(tmp_path):
    showers = _pair_events(12, separation=30.0, offset=10.0, seed=3)
    pts = showers.points.copy()
    pts[4, :, 0] = np.where(pts[4, :, 3] > 0, -50.0, 0.0)  # event 4: all points in A
    path = tmp_path / "pairs.h5"
    attrs = {"pair_separation_mm": 30.0, "gun_offset_x_mm": 10.0}
    write_showers(path, PointShowers(showers.energy, pts), "ild-ecal", generator="geant4", attrs=attrs)
    separation, obs = pair_observables_from_file(path)
    want = pair_observables(PointShowers(showers.energy, pts), 10.0)
    keep = np.arange(12) != 4
    assert separation == 30.0
    for k in PAIR_OBSERVABLES:
        np.testing.assert_allclose(obs[k], want[k][keep], rtol=1e-6, err_msg=k)
    _, first = pair_observables_from_file(path, max_showers=3)
    np.testing.assert_allclose(first["E_A"], want["E_A"][:3], rtol=1e-6)


def test_from_file_refuses_single_showers(tmp_path, showers):
    path = tmp_path / "single.h5"
    write_showers(path, showers, "ild-ecal", generator="geant4")
    with pytest.raises(ValueError, match="holds single showers, not pairs"):
        pair_observables_from_file(path)


# ----------------------------------------------------------------------------- W1


def test_w1_of_whole_samples_is_scipys_standardised_w1():
    """``size`` = both samples: every draw is the whole of each, so W1 is exact and its std 0."""
    ref, cand = _observables(300, seed=1), _observables(300, seed=2, shift=1.5)
    out = pair_w1(ref, cand, size=300, n_draws=3)
    assert out["draw_size"] == 300
    for k in PAIR_OBSERVABLES:
        scale = np.std(ref[k])
        want = wasserstein_distance(ref[k] / scale, cand[k] / scale) / W1_UNIT
        assert out[k][0] == pytest.approx(want, rel=1e-9), k
        assert out[k][1] == pytest.approx(0.0, abs=1e-9), k
    # The reference against itself moved by 1.5 mm: W1 is the shift in reference stds, the rest 0.
    out = pair_w1(ref, _observables(300, seed=1, shift=1.5), size=300, n_draws=2)
    assert out["separation"][0] == pytest.approx(1.5 / np.std(ref["separation"]) / W1_UNIT, rel=1e-9)
    assert all(out[k][0] == pytest.approx(0.0, abs=1e-9) for k in PAIR_OBSERVABLES[1:])


def test_w1_of_a_constant_reference_is_not_divided_by_zero():
    ref = _observables(50, seed=3)
    ref["separation"] = np.full(50, 40.0)
    cand = dict(ref, separation=np.full(50, 41.0))
    out = pair_w1(ref, cand, size=50, n_draws=2)
    assert out["separation"] == pytest.approx([1.0 / W1_UNIT, 0.0])  # scale 1: W1 in mm
    assert out["E_A"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_w1_is_seeded_and_tells_apart_a_shifted_sample():
    ref, same, shifted = _observables(2000, 4), _observables(2000, 5), _observables(2000, 5, shift=2.0)
    a = pair_w1(ref, same, size=400, n_draws=4, seed=1)
    assert a == pair_w1(ref, same, size=400, n_draws=4, seed=1)
    b = pair_w1(ref, shifted, size=400, n_draws=4, seed=1)
    assert b["separation"][0] > 5 * a["separation"][0]  # a shift of one std against noise
    assert b["E_A"] == a["E_A"]  # the other observables are the same samples, the same draws


def test_floor_is_small_and_needs_two_disjoint_halves():
    ref = _observables(1000, seed=6)
    floor = pair_floor(ref, size=500, n_draws=5)
    assert floor["draw_size"] == 500 and set(floor) == {*PAIR_OBSERVABLES, "draw_size"}
    for k in PAIR_OBSERVABLES:
        mean, std = floor[k]
        # W1 of two samples of 500 from one distribution, in reference stds: ~ 1 / sqrt(500)
        assert 0.0 < mean * W1_UNIT < 0.15 and std >= 0.0, k
    with pytest.raises(ValueError, match="needs 1002 reference events, not 1000"):
        pair_floor(ref, size=501)
