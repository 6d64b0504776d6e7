"""Jet metrics (caloforge.jets.metrics) against scipy and hand computations: batches, W1m / W1p /
W1efp, the KL of quantile-binned histograms, FPD / KPD."""

import numpy as np
import pytest
from scipy.stats import entropy, wasserstein_distance

from caloforge.jets import metrics as jm
from caloforge.jets.io import Jets
from conftest import toy_jets

# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize(
    ("n_a", "n_b", "want"), [(1, None, 1), (3, 100, 1), (600, 400, 200), (10**6, 10**6, 50_000)]
)
def test_default_batch_size(n_a, n_b, want):
    assert jm.default_batch_size(n_a, n_b) == want


def test_batches_that_do_not_fit_are_drawn_without_replacement():
    batches = jm.draw_batches(30, 50, 20, 3, seed=2)  # 3 × 20 > 30: not disjoint
    for ia, ib in batches:
        for idx, n in ((ia, 30), (ib, 50)):
            assert len(idx) == 20 and len(np.unique(idx)) == 20  # no jet twice in a batch
            assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
    assert not np.array_equal(batches[0][0], batches[1][0])
    assert not np.array_equal(batches[0][0], jm.draw_batches(30, 50, 20, 3, seed=3)[0][0])


@pytest.mark.parametrize(
    ("size", "n_batches", "match"),
    [(0, 2, "num_eval_samples 0 must be between 1"), (5, 0, "num_batches must be at least 1")],
)
def test_bad_batches_are_refused(size, n_batches, match):
    with pytest.raises(ValueError, match=match):
        jm.draw_batches(10, 10, size, n_batches)


# ----------------------------------------------------------------------------- W1


def test_w1m_of_whole_samples_is_scipys():
    """Batches of the whole samples: the W1 of every batch is the exact W1, the std 0."""
    rng = np.random.default_rng(0)
    a, b = rng.gamma(4.0, 0.03, 400), rng.gamma(5.0, 0.025, 400)
    mean, std = jm.w1m(a, b, num_eval_samples=400, num_batches=3)
    assert mean == pytest.approx(wasserstein_distance(a, b), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)
    # Smaller batches scatter around it.
    mean, std = jm.w1m(a, b, num_eval_samples=100, num_batches=4)
    assert std > 0 and abs(mean - wasserstein_distance(a, b)) < 0.02


def test_w1p_uses_only_the_real_particles():
    jets_a, jets_b = toy_jets(40, 12, seed=1), toy_jets(40, 12, seed=2, spread=0.2)
    out = jm.w1p(jets_a, jets_b, num_eval_samples=40, num_batches=2)
    ma, mb = jets_a.mask, jets_b.mask
    want = [
        wasserstein_distance(jets_a.particles[..., k][ma], jets_b.particles[..., k][mb]) for k in range(3)
    ]
    for k, name in enumerate(("etarel", "phirel", "ptrel")):
        assert out[name][0] == pytest.approx(want[k], rel=1e-9)
    assert out["w1p"][0] == pytest.approx(np.mean(want), rel=1e-9)
    assert out["w1p"][1] == pytest.approx(0.0, abs=1e-12)
    # Garbage in the padded slots changes nothing; without the mask column, zero rows are padding.
    garbage = jets_b.particles.copy()
    garbage[~mb, :3] = 99.0
    again = jm.w1p(jets_a.particles, garbage, num_eval_samples=40, num_batches=2)
    assert again["w1p"] == pytest.approx(out["w1p"], rel=1e-12, abs=1e-15)
    three = jm.w1p(jets_a.particles[..., :3], jets_b.particles[..., :3], num_eval_samples=40, num_batches=2)
    assert three["w1p"] == pytest.approx(out["w1p"], rel=1e-12, abs=1e-15)


def test_w1p_bad_shapes_and_empty_batches():
    with pytest.raises(ValueError, match=r"particles must have shape \(n, P, 3 or 4\)"):
        jm.w1p(np.zeros((5, 4)), np.zeros((5, 4)))
    empty = np.zeros((4, 3, 4))
    with np.errstate(invalid="ignore"):  # the std of infinities
        out = jm.w1p(empty, toy_jets(4, 3).particles, num_eval_samples=2, num_batches=2)
    assert out["w1p"][0] == np.inf


def test_w1efp_per_column_and_mean():
    rng = np.random.default_rng(3)
    a = rng.exponential([1e-3, 1e-4, 5e-4], (300, 3))
    b = rng.exponential([1.2e-3, 1e-4, 4e-4], (300, 3))
    out = jm.w1efp(a, b, num_eval_samples=300, num_batches=2)
    want = [wasserstein_distance(a[:, k], b[:, k]) for k in range(3)]
    assert set(out) == {"w1efp", "efp_0", "efp_1", "efp_2"}
    for k in range(3):
        assert out[f"efp_{k}"][0] == pytest.approx(want[k], rel=1e-9)
    assert out["w1efp"][0] == pytest.approx(np.mean(want), rel=1e-9)
    with pytest.raises(ValueError, match="same k"):
        jm.w1efp(a, b[:, :2])


# ----------------------------------------------------------------------------- KL


def test_quantile_edges_hold_equal_shares():
    x = np.random.default_rng(4).normal(size=10_000)
    edges = jm.quantile_edges(np.append(x, [np.nan, np.inf]), 20)  # non-finite values are dropped
    assert edges[0] == -np.inf and edges[-1] == np.inf and len(edges) == 23
    counts = np.histogram(x, edges)[0]
    assert counts[0] == counts[-1] == 0  # the reference lies inside: no under- or overflow
    np.testing.assert_allclose(counts[1:-1], 500, atol=2)
    constant = jm.quantile_edges(np.full(7, 3.0), 10)
    assert constant[1:-1].tolist() == pytest.approx([2.5, 3.5])
    with pytest.raises(ValueError, match="finite reference values"):
        jm.quantile_edges(np.array([np.nan]))


def test_kl_by_hand_and_against_scipy():
    edges = np.array([0.0, 1.0, 2.0])
    ref, cand = np.array([0.5, 0.5, 1.5, 1.5]), np.array([0.5, 1.5, 1.5, 1.5])
    want = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert jm.kl_divergence(ref, cand, edges) == pytest.approx(want, rel=1e-6)
    assert jm.kl_divergence(cand, ref, edges) == pytest.approx(
        0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5), rel=1e-6
    )  # not symmetric
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=3000), rng.normal(0.3, 1.2, 3000)
    e = jm.quantile_edges(x, 30)
    p, q = np.histogram(x, e)[0] / 3000 + 1e-8, np.histogram(y, e)[0] / 3000 + 1e-8
    assert jm.kl_divergence(x, y, n_bins=30) == pytest.approx(entropy(p, q), rel=1e-9)


def test_kl_of_disjoint_samples_is_large_but_finite():
    value = jm.kl_divergence(np.arange(100.0), np.arange(100.0) + 1000)
    assert np.isfinite(value) and value > 10  # every candidate value in the overflow bin
    with pytest.raises(ValueError, match="two non-empty samples"):
        jm.kl_divergence(np.arange(3.0), np.array([]))


@pytest.mark.parametrize(("n", "want"), [(0, 5), (99, 5), (200, 10), (999, 49), (10**6, 50)])
def test_kl_bins(n, want):
    assert jm.kl_bins(n) == want


def test_batched_kl_of_whole_samples_is_the_kl():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=500), rng.normal(0.2, 1.0, 500)
    mean, std = jm.batched_kl(x, y, num_eval_samples=500, num_batches=2)
    edges = jm.quantile_edges(x, jm.kl_bins(500))
    assert mean == pytest.approx(jm.kl_divergence(x, y, edges), rel=1e-9) and std == pytest.approx(0.0)
    # Per particle (KL pT const): the real particles' pt_rel of the batch's jets.
    a, b = toy_jets(50, 10, seed=7), toy_jets(50, 10, seed=8)
    mean, _ = jm.batched_kl(a, b, column=2, num_eval_samples=50, num_batches=2, n_bins=8)
    pa, pb = a.particles[..., 2][a.mask], b.particles[..., 2][b.mask]
    assert mean == pytest.approx(jm.kl_divergence(pa, pb, jm.quantile_edges(pa, 8)), rel=1e-9)


# ----------------------------------------------------------------------------- FPD, KPD


def test_fpd_kpd_see_a_shifted_sample():
    rng = np.random.default_rng(9)
    cov = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    ref = rng.multivariate_normal([5.0, 4.0, 3.0], cov, 1500)
    same = rng.multivariate_normal([5.0, 4.0, 3.0], cov, 1500)
    moved = rng.multivariate_normal([5.5, 4.0, 3.0], cov, 1500)
    a, b = jm.fpd_kpd(ref, same), jm.fpd_kpd(ref, moved)
    assert set(a) == {"fpd", "kpd"}
    # Features are divided by the reference's max |value|; with equal covariances the Fréchet
    # distance is the squared distance of the means there (the covariance term is ~1e-5).
    scale = np.abs(ref).max(axis=0)
    assert b["fpd"][0] == pytest.approx(np.sum(((ref.mean(0) - moved.mean(0)) / scale) ** 2), rel=0.1)
    assert abs(a["fpd"][0]) < 0.2 * b["fpd"][0]
    assert b["kpd"][0] > 0 and abs(a["kpd"][0]) < 0.2 * b["kpd"][0]


def test_jets_objects_and_arrays_agree():
    jets = toy_jets(30, 8, seed=10)
    other = Jets(jets.particles[::-1].copy(), jets.jet[::-1].copy(), "t")
    from_jets = jm.w1p(jets, other, num_eval_samples=15, num_batches=2, seed=4)
    from_arrays = jm.w1p(jets.particles, other.particles, num_eval_samples=15, num_batches=2, seed=4)
    assert from_jets == from_arrays


def test_kl_of_one_distribution_is_the_chi_square_floor():
    """Two samples of N from one distribution, B bins of equal reference share: KL ≈ χ² / 2 with
    E[χ²] = 2 (B - 1) / N, so the mean KL over batches is (B - 1) / N (JetNet's 50k jets, 50 bins)."""
    rng = np.random.default_rng(11)
    x, y = rng.gamma(3.0, 1.0, 500_000), rng.gamma(3.0, 1.0, 500_000)
    mean, std = jm.batched_kl(x, y, num_eval_samples=50_000, num_batches=10)
    assert mean == pytest.approx(49 / 50_000, rel=0.25) and 0 < std < mean
    wider, _ = jm.batched_kl(x, 1.02 * y, num_eval_samples=50_000, num_batches=10)
    assert wider > mean + 3 * std / np.sqrt(10)  # a 2 % scale is seen at this size


@pytest.mark.slow
def test_fpd_kpd_at_jetnet_size():
    """36 features (the EFPs with d <= 4) of 50k jets per side (half a minute): the FPD of a shifted
    Gaussian is the squared distance of the normalised means, that of the same one a small floor;
    the KPD tells them apart by many of its errors."""
    rng = np.random.default_rng(12)
    d, n = 36, 50_000
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    cov, mu = a @ a.T + 0.5 * np.eye(d), rng.uniform(2.0, 4.0, d)
    ref, same = rng.multivariate_normal(mu, cov, n), rng.multivariate_normal(mu, cov, n)
    moved = rng.multivariate_normal(mu + 0.3 * (np.arange(d) < 3), cov, n)
    floor, shifted = jm.fpd_kpd(ref, same), jm.fpd_kpd(ref, moved)
    scale = np.abs(ref).max(axis=0)
    want = np.sum(((ref.mean(0) - moved.mean(0)) / scale) ** 2)
    assert shifted["fpd"][0] == pytest.approx(want, rel=0.15)
    assert floor["fpd"][0] < 0.15 * shifted["fpd"][0]
    assert shifted["kpd"][0] > 5 * shifted["kpd"][1] and shifted["kpd"][0] > 10 * abs(floor["kpd"][0])
