"""Metrics: W1 protocol, classifier AUC and the CaloChallenge scores, on samples with known answers."""

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import wasserstein_distance

from caloforge.detector import get_detector
from caloforge.io import PointShowers, VoxelShowers
from caloforge.metrics import (
    W1_OBSERVABLES,
    W1_UNIT,
    calochallenge_features,
    classifier_auc,
    default_draw_size,
    feature_matrix,
    fpd,
    frechet_distance,
    kpd,
    low_level_features,
    separation_power,
    separation_powers,
    w1_distance,
    w1_floor,
    w1_scores,
)
from caloforge.observables import ShowerObservables, compute_observables
from conftest import random_points

ILD = get_detector("ild-ecal")
DS2 = get_detector("calochallenge-ds2")


def _observables(seed: int, n: int = 8000, scale: float = 1.0, dx_mm: float = 0.0) -> ShowerObservables:
    """Random showers at a fixed 50 GeV; point energies scaled by ``scale``, x shifted by ``dx_mm``."""
    showers = random_points(n, 40, seed=seed)
    pts = showers.points.copy()
    pts[..., 3] *= scale
    pts[..., 0] += dx_mm * (pts[..., 3] > 0)
    return compute_observables(PointShowers(np.full(n, 50.0), pts), ILD)


@pytest.fixture(scope="module")
def reference() -> ShowerObservables:
    return _observables(1)


@pytest.fixture(scope="module")
def floor(reference):
    return w1_floor(reference)


# ---------------------------------------------------------------- W1


@pytest.mark.parametrize(("n_u", "n_v"), [(500, 500), (300, 700), (1, 50)])
@pytest.mark.parametrize("discrete", [False, True])
def test_w1_distance_agrees_with_scipy(n_u, n_v, discrete):
    rng = np.random.default_rng(n_u + n_v)
    u, v = rng.normal(size=n_u), rng.normal(0.3, 1.5, size=n_v)
    if discrete:  # ties exercise the CDF steps
        u, v = np.round(u * 3), np.round(v * 3)
    assert w1_distance(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12, abs=1e-12)


def test_w1_distance_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        w1_distance(np.array([]), np.array([1.0]))


def test_w1_scores_unit_and_standardisation(reference):
    candidate = _observables(2, n=3000)
    scores = w1_scores(reference, candidate, n_draws=1, draw_size=3000, seed=0)
    assert list(scores) == list(W1_OBSERVABLES) and W1_UNIT == 1e-2
    # One disjoint draw of the whole candidate: N_hits must equal the direct computation on
    # the drawn reference showers, standardised with the *full* reference, over 1e-2.
    mean, std = reference.n_hits.mean(), reference.n_hits.std()
    perm = np.random.default_rng(0).permutation(len(reference))[:3000]
    direct = w1_distance((reference.n_hits[perm] - mean) / std, (candidate.n_hits - mean) / std)
    assert scores["N_hits"][0] == pytest.approx(direct / W1_UNIT)
    assert scores["N_hits"][1] == 0.0  # one draw: no spread
    assert scores.metadata() == {
        "draw_size": 3000,
        "n_draws": 1,
        "disjoint_draws": True,
        "n_reference": 8000,
        "n_candidate": 3000,
        "unit": 1e-2,
    }


def test_default_draw_sizes(reference, floor):
    assert default_draw_size(10**6, 10**6) == 50_000
    assert default_draw_size(8000, 8000) == 4000 == floor.draw_size
    assert not floor.disjoint  # 2 x 10 x 4000 > 8000: the reference is re-split every draw
    small = w1_floor(reference, n_draws=4, draw_size=1000)
    assert small.disjoint and small.per_draw["E_cell"].shape == (4,)
    with pytest.raises(ValueError, match="draw_size"):
        w1_scores(reference, reference.subset(np.arange(10)), draw_size=11)
    with pytest.raises(ValueError, match="half the reference"):
        w1_floor(reference, draw_size=4001)


def test_floor_scales_as_one_over_sqrt_n(reference, floor):
    smaller = w1_floor(reference, draw_size=floor.draw_size // 4)
    ratio = np.mean([smaller[k][0] / floor[k][0] for k in W1_OBSERVABLES])
    assert 1.4 < ratio < 2.8  # expected 2


def test_same_distribution_is_at_the_floor(reference, floor):
    same = w1_scores(reference, _observables(2))
    for key in W1_OBSERVABLES:
        (m, s), (fm, fs) = same[key], floor[key]
        assert 0.3 * fm < m < fm + 3 * np.hypot(s, fs), key


def test_scaled_energy_is_above_the_floor(reference, floor):
    scaled = w1_scores(reference, _observables(3, scale=1.05))
    for key in ("E_vis/E_inc", "E_long"):
        assert scaled[key][0] > floor[key][0] + 3 * floor[key][1], key


def test_one_cell_shift_is_above_the_floor(reference, floor):
    shifted = w1_scores(reference, _observables(4, dx_mm=ILD.readout.cell_size_mm))
    assert shifted["m1 X"][0] > 10 * floor["m1 X"][0]
    assert shifted["E_radial"][0] > floor["E_radial"][0] + 3 * floor["E_radial"][1]
    assert shifted["m1 Y"][0] < floor["m1 Y"][0] + 3 * np.hypot(shifted["m1 Y"][1], floor["m1 Y"][1])


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def gaussians() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))


def test_classifier_same_distribution_is_half(gaussians):
    torch = pytest.importorskip("torch")
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    res = classifier_auc(*gaussians)
    assert abs(res.auc - 0.5) < 0.03
    assert len(res.aucs) == 10 and res.auc_std > 0
    # Every sample is scored exactly once over the 10 test folds.
    assert len(res.scores_a) == len(res.scores_b) == 4000 == res.n_per_class
    assert np.all((res.scores_a >= 0) & (res.scores_a <= 1))
    # The global torch state is left as it was.
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), state)


def test_classifier_sees_a_shift(gaussians):
    pytest.importorskip("torch")
    a, b = gaussians
    res = classifier_auc(a, b + np.array([0.3, 0, 0, 0, 0]), n_splits=5, seed=1)
    # Optimal AUC for a 0.3 sigma shift: Phi(0.3 / sqrt 2) = 0.584.
    assert 0.55 < res.auc < 0.62
    assert res.scores_b.mean() > res.scores_a.mean()
    assert res.as_tuple() == (res.auc, res.auc_std)


def test_classifier_balances_and_validates():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    res = classifier_auc(rng.normal(size=(300, 2)), rng.normal(size=(100, 2)), n_splits=2, epochs=2)
    assert res.n_per_class == 100 and len(res.scores_a) == len(res.scores_b) == 20
    with pytest.raises(ValueError, match="same d"):
        classifier_auc(np.zeros((50, 2)), np.zeros((50, 3)))
    with pytest.raises(ValueError, match="NaN"):
        classifier_auc(np.full((50, 2), np.nan), np.zeros((50, 2)))
    with pytest.raises(ValueError, match="n_splits"):
        classifier_auc(np.zeros((50, 2)), np.zeros((50, 2)), n_splits=11)


def test_low_level_features_and_wide_classifier():
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    vox = rng.exponential(0.05, (120, 40)) * (rng.random((120, 40)) < 0.3)
    showers = VoxelShowers(np.full(120, 100.0), vox)
    feats = low_level_features(showers, 0.01515)
    assert feats.shape == (120, 41)
    np.testing.assert_allclose(feats[:, 0], 2.0, rtol=0, atol=1e-12)
    below = (vox > 0) & (vox < 0.01515)
    assert np.all(feats[:, 1:][below] == 0.0) and np.all(feats[:, 1:][vox >= 0.01515] >= np.log(2))
    louder = low_level_features(VoxelShowers(showers.energy, vox * 3), DS2.threshold_mev)
    res = classifier_auc(feats, louder, hidden=(512, 512, 256), n_splits=1, epochs=3)
    assert res.auc > 0.7


# ---------------------------------------------------------------- CaloChallenge


def _voxel_showers(energies_mev: dict[tuple[int, int, int], float], e_inc_gev: float = 10.0) -> VoxelShowers:
    """One ds2 shower with the given (layer, angle bin, radial bin) -> energy."""
    vox = np.zeros((1, DS2.n_channels), np.float32)
    for (layer, ia, ir), e in energies_mev.items():
        vox[0, layer * 144 + ia * 9 + ir] = e
    return VoxelShowers([e_inc_gev], vox)


def test_calochallenge_features_by_hand():
    cx, cy = DS2.readout.voxel_centres()
    # Layer 3: two voxels opposite each other (angle bins 0 and 8, same ring); layer 7: one voxel
    # below threshold; layer 10: one voxel.
    showers = _voxel_showers({(3, 0, 2): 1.0, (3, 8, 2): 1.0, (7, 5, 5): 0.01, (10, 4, 0): 2.0})
    f = calochallenge_features(showers, DS2)
    assert set(f) == {
        "E_layer", "EC_x", "EC_y", "width_x", "width_y", "sparsity", "EC_r", "width_r", "E_tot", "E_ratio"
    }  # fmt: skip
    assert (
        f["E_layer"].shape == (1, 45) and f["E_ratio"].shape == (1,) and f["E_tot"][0] == pytest.approx(4.0)
    )
    assert f["E_layer"][0, 3] == pytest.approx(2.0) and f["E_layer"][0, 7] == 0.0
    assert f["E_ratio"][0] == pytest.approx(4.0 / 10_000)
    a, b = 0 * 9 + 2, 8 * 9 + 2
    assert f["EC_x"][0, 3] == pytest.approx((cx[a] + cx[b]) / 2, abs=1e-9)
    assert f["width_x"][0, 3] == pytest.approx(abs(cx[a] - cx[b]) / 2)
    assert f["EC_y"][0, 10] == pytest.approx(cy[4 * 9]) and f["width_y"][0, 10] == pytest.approx(0.0)
    assert f["sparsity"][0, 3] == pytest.approx(142 / 144) and f["sparsity"][0, 7] == 1.0
    assert f["EC_x"][0, 7] == 0.0  # empty layer
    # Radial centre: ring 2 spans 9.3-13.95 mm (centre 11.625) in layer 3; ring 0 in layer 10.
    assert f["EC_r"][0, 3] == pytest.approx(11.625) and f["width_r"][0, 3] == pytest.approx(0.0)
    assert f["EC_r"][0, 10] == pytest.approx(2.325)
    with pytest.raises(ValueError, match="voxel readout"):
        calochallenge_features(showers, ILD)


def test_separation_power_limits():
    h = np.array([3.0, 5.0, 0.0, 2.0])
    assert separation_power(h, 2 * h) == pytest.approx(0.0)
    assert separation_power([1, 2, 0, 0], [0, 0, 4, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes"):
        separation_power([1, 2], [1, 2, 3])


def test_separation_powers_shared_binning():
    rng = np.random.default_rng(0)
    ref = {"E_layer": rng.exponential(1.0, (5000, 3)), "E_ratio": rng.normal(size=5000)}
    same = {"E_layer": rng.exponential(1.0, (5000, 3)), "E_ratio": rng.normal(size=5000)}
    far = {"E_layer": rng.exponential(1.0, (5000, 3)) + 100, "E_ratio": rng.normal(size=5000) * 1.3}
    sp_same, sp_far = separation_powers(ref, same), separation_powers(ref, far)
    assert list(sp_same) == ["E_layer_0", "E_layer_1", "E_layer_2", "E_ratio"]
    assert max(sp_same.values()) < 0.01
    assert sp_far["E_layer_0"] == pytest.approx(1.0)  # all in the overflow bin
    assert 0.02 < sp_far["E_ratio"] < 0.5


def test_voxel_features_of_projected_showers():
    from caloforge.projection import voxelise

    vox = voxelise(random_points(200, 30, seed=5, n_layers=45), DS2)
    f = calochallenge_features(vox, DS2, chunk_size=64)
    m = feature_matrix(f)
    assert m.shape == (200, 45 * 8 + 2)
    assert np.allclose(m[:, :45], np.log1p(f["E_layer"]))
    assert np.all((f["sparsity"] >= 0) & (f["sparsity"] <= 1))
    assert np.allclose(f["E_layer"].sum(1) / (vox.energy * 1000), f["E_ratio"])


def test_frechet_distance_matches_sqrtm_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fpd_matches_closed_form_on_gaussians():
    rng = np.random.default_rng(4)
    mu1, mu2 = np.zeros(4), np.array([0.5, 0.0, -0.3, 0.0])
    s1 = np.diag([1.0, 2.0, 0.5, 1.0])
    a = rng.normal(size=(4, 4)) * 0.3
    s2 = a @ a.T + np.eye(4)
    x = rng.multivariate_normal(mu1, s1, 50_000)
    y = rng.multivariate_normal(mu2, s2, 50_000)
    value, err = fpd(x, y, normalise=False)
    # The sampling noise of 50k-event estimates is about 0.01 here.
    assert value == pytest.approx(frechet_distance(mu1, s1, mu2, s2), abs=0.04)
    assert 0 < err < 0.03


def test_fpd_extrapolation_removes_small_sample_bias():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(3000, 10)), rng.normal(size=(3000, 10))
    naive = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    value, _ = fpd(x, y, normalise=False, seed=1)
    assert naive > 0.005  # finite samples of one Gaussian look apart ...
    assert value < naive / 3  # ... and the 1/N extrapolation takes most of that away


def test_kpd_same_and_different():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4))
    value, err = kpd(x, y, batch_size=1000)
    assert abs(value) < max(3 * err, 1e-3)
    shifted, err_shifted = kpd(x, y + 0.5, batch_size=1000, normalise=False)
    assert shifted > 5 * err_shifted and shifted > 0.5
    with pytest.raises(ValueError, match="batch_size"):
        kpd(x, y, batch_size=4001)


def test_log_cell_energy_sees_a_pile_up_above_the_threshold(reference, floor):
    """A few cells moved just above the threshold (CaloINN's and L2LFlows' failure): the W1 of
    log cell energies over every cell sees it far above its floor, E_cell (as many cells as
    showers, linear energies: the published convention) far less, in units of its floor."""
    showers = random_points(8000, 40, seed=4)
    pts = showers.points.copy()
    low = np.random.default_rng(4).random(pts.shape[:2]) < 0.1
    pts[..., 3] = np.where(low & (pts[..., 3] > 0), 1.2 * ILD.threshold_mev, pts[..., 3])
    piled = w1_scores(reference, compute_observables(PointShowers(np.full(8000, 50.0), pts), ILD))
    (m, s), (fm, fs) = piled["log E_cell"], floor["log E_cell"]
    assert m > 5 * fm and m - fm > 5 * np.hypot(s, fs)
    assert piled["E_cell"][0] / floor["E_cell"][0] < m / fm / 3
