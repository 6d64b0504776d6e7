"""Jet observables: kinematics, N-subjettiness (by hand and against FastJet), EFPs, invariances."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from caloforge.jets.io import Jets
from caloforge.jets.observables import (
    W1_EFP_ARGS,
    _efpset,
    constituent_four_vectors,
    efps,
    jet_kinematics,
    jet_observables,
    leading_ptrel,
    nsubjettiness,
    tau_ratios,
)


def toy_jets(
    n: int, n_particles: int = 30, seed: int = 0, eta_scale: float = 1.0, jet_type: str = "t"
) -> Jets:
    """Jet-like particle clouds: 1-3 prongs, a steeply falling pT_rel spectrum, leading particles first.

    ``eta_scale`` widens every jet in eta_rel (a known distortion). ``jet`` holds plausible pT
    [GeV], eta, mass [GeV] and the multiplicity.
    """
    rng = np.random.default_rng(seed)
    parts = np.zeros((n, n_particles, 4), np.float32)
    jet = np.zeros((n, 4), np.float32)
    for i in range(n):
        m = int(rng.integers(max(2, n_particles // 2), n_particles + 1))
        n_prongs = int(rng.integers(1, 4))
        centres = rng.normal(0.0, 0.2, (n_prongs, 2))
        prong = rng.integers(0, n_prongs, m)
        eta = centres[prong, 0] + rng.normal(0.0, 0.05, m)
        phi = centres[prong, 1] + rng.normal(0.0, 0.05, m)
        pt = np.sort(rng.exponential(1.0, m) * np.exp(-np.arange(m) / 6.0))[::-1]
        pt = pt / pt.sum() * rng.uniform(0.85, 1.0)
        eta -= np.sum(pt * eta) / pt.sum()
        phi -= np.sum(pt * phi) / pt.sum()
        parts[i, :m, 0] = eta * eta_scale
        parts[i, :m, 1] = (phi + np.pi) % (2 * np.pi) - np.pi
        parts[i, :m, 2] = pt
        parts[i, :m, 3] = 1.0
        jet[i] = [rng.normal(1000, 50), rng.uniform(-2, 2), rng.normal(170, 20), m]
    return Jets(parts, jet, jet_type)


def _jet(*rows: tuple[float, float, float], pad: int = 0) -> np.ndarray:
    """One jet ``(1, len(rows) + pad, 4)`` of (eta_rel, phi_rel, pt_rel) rows, padded with zeros."""
    p = np.zeros((1, len(rows) + pad, 4))
    p[0, : len(rows), :3] = rows
    p[0, : len(rows), 3] = 1.0
    return p


def test_four_vectors_and_mass_of_two_massless_particles():
    d, dphi = 0.15, 0.1
    p = _jet((d, dphi / 2, 0.5), (-d, -dphi / 2, 0.5), pad=2)
    four = constituent_four_vectors(p)
    assert four.shape == (1, 4, 4)
    np.testing.assert_allclose(
        four[0, 0], [0.5 * np.cosh(d), 0.5 * np.cos(dphi / 2), 0.5 * np.sin(dphi / 2), 0.5 * np.sinh(d)]
    )
    assert np.all(four[0, 2:] == 0)
    kin = jet_kinematics(p)
    m2 = 2 * 0.5 * 0.5 * (np.cosh(2 * d) - np.cos(dphi))
    assert kin["mass"][0] == pytest.approx(np.sqrt(m2), rel=1e-12)
    assert kin["pt"][0] == pytest.approx(np.cos(dphi / 2), rel=1e-12)
    assert kin["eta"][0] == pytest.approx(0.0, abs=1e-12)
    assert kin["phi"][0] == pytest.approx(0.0, abs=1e-12)
    assert kin["multiplicity"].tolist() == [2]


def test_phi_wrapping_keeps_neighbours_across_pi_close():
    near_pi = _jet((0.05, np.pi - 0.02, 0.5), (-0.05, -np.pi + 0.03, 0.3), (0.1, np.pi - 0.1, 0.2))
    near_zero = near_pi.copy()
    near_zero[0, :, 1] = (near_pi[0, :, 1] % (2 * np.pi)) - np.pi  # the same jet rotated by pi
    a, b = jet_observables(near_pi, fpd_features=False), jet_observables(near_zero, fpd_features=False)
    assert a["mass"][0] < 0.2  # not a mass of 2 pi separation
    for key in ("mass", "tau21", "tau32", "efps"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nsubjettiness(near_pi), nsubjettiness(near_zero), rtol=1e-9, atol=1e-12)


def test_nsubjettiness_by_hand():
    # two particles symmetric about the axis: tau1 = sum pt dR / (sum pt R0), tau2 = 0
    two = _jet((0.2, 0.0, 0.5), (-0.2, 0.0, 0.5), pad=1)
    np.testing.assert_allclose(nsubjettiness(two), [[(0.5 * 0.2 + 0.5 * 0.2) / 0.8, 0.0, 0.0]], atol=1e-12)
    # three particles: A (0, 0, 0.6), B (0.4, 0, 0.3), C (0, 0.5, 0.1)
    three = _jet((0.0, 0.0, 0.6), (0.4, 0.0, 0.3), (0.0, 0.5, 0.1))
    # kT distances: d_AB = 0.09 * 0.16, d_AC = 0.01 * 0.25, d_BC = 0.01 * 0.41: A and C merge first
    phi_ac = np.arctan2(0.1 * np.sin(0.5), 0.6 + 0.1 * np.cos(0.5))  # axis A + C (rapidity 0)
    tau2 = (0.6 * phi_ac + 0.1 * (0.5 - phi_ac)) / (1.0 * 0.8)
    e = 0.6 + 0.3 * np.cosh(0.4) + 0.1
    px, py, pz = 0.6 + 0.3 + 0.1 * np.cos(0.5), 0.1 * np.sin(0.5), 0.3 * np.sinh(0.4)
    y, phi = 0.5 * np.log((e + pz) / (e - pz)), np.arctan2(py, px)  # the jet axis
    dr = [np.hypot(0 - y, 0 - phi), np.hypot(0.4 - y, 0 - phi), np.hypot(0 - y, 0.5 - phi)]
    tau1 = (0.6 * dr[0] + 0.3 * dr[1] + 0.1 * dr[2]) / 0.8
    np.testing.assert_allclose(nsubjettiness(three), [[tau1, tau2, 0.0]], rtol=1e-10, atol=1e-14)
    # beta and R0 enter as dR^beta / R0^beta
    np.testing.assert_allclose(nsubjettiness(two, 1, beta=2.0, r0=0.5), [[0.04 / 0.25]], rtol=1e-10)


def test_nsubjettiness_matches_fastjet_exclusive_kt():
    fastjet = pytest.importorskip("fastjet")
    jets = toy_jets(25, 30, seed=5)
    p = jets.particles.astype(np.float64)
    tau = nsubjettiness(p, 3)
    four = constituent_four_vectors(p)
    definition = fastjet.JetDefinition(fastjet.kt_algorithm, fastjet.JetDefinition.max_allowable_R)
    expected = np.zeros_like(tau)
    for i in range(len(p)):
        real = np.nonzero(jets.mask[i])[0]
        pseudo = [fastjet.PseudoJet(*four[i, k, 1:], four[i, k, 0]) for k in real]
        sequence = fastjet.ClusterSequence(pseudo, definition)
        norm = sum(q.pt() for q in pseudo) * 0.8
        for n in (1, 2, 3):
            if len(real) > n:
                axes = sequence.exclusive_jets(n)
                expected[i, n - 1] = sum(q.pt() * min(q.delta_R(a) for a in axes) for q in pseudo) / norm
    np.testing.assert_allclose(tau, expected, rtol=1e-6, atol=1e-9)


def test_tau_ratios_divide_safely():
    p = np.zeros((3, 3, 4))
    p[0, :1] = [0.0, 0.0, 1.0, 1.0]  # one particle: tau1 = 0
    p[1, :2] = [[0.1, 0.0, 0.5, 1.0], [-0.1, 0.0, 0.5, 1.0]]  # two: tau2 = 0
    p[2] = [[0.0, 0.0, 0.6, 1], [0.4, 0.0, 0.3, 1], [0.0, 0.5, 0.1, 1]]
    tau21, tau32 = tau_ratios(p)
    tau = nsubjettiness(p)
    assert tau21[:2].tolist() == [0.0, 0.0] and tau32.tolist() == [0.0, 0.0, 0.0]
    assert tau21[2] == pytest.approx(tau[2, 1] / tau[2, 0])
    assert np.all(np.isfinite(tau21))


def _brute_force_efp(z: np.ndarray, theta: np.ndarray, edges: list[tuple[int, int]]) -> float:
    """Σ over all assignments of the 4 vertices to particles of Π z · Π_(k,l) θ."""
    m = len(z)
    total = 0.0
    for idx in np.ndindex(m, m, m, m):
        w = np.prod(z[list(idx)])
        for u, v in edges:
            w *= theta[idx[u], idx[v]]
        total += w
    return total


def test_efps_match_a_brute_force_sum():
    pytest.importorskip("energyflow")
    rows = [
        (0.1, 0.05, 0.4),
        (-0.2, 0.1, 0.3),
        (0.05, -0.3, 0.15),
        (0.3, np.pi - 0.05, 0.1),
        (0.0, -np.pi + 0.05, 0.05),
    ]
    p = _jet(*rows, pad=3)
    eta, phi, z = (np.array([r[k] for r in rows]) for k in range(3))
    dphi = np.pi - np.abs(np.abs(phi[:, None] - phi[None, :]) - np.pi)
    theta = np.sqrt((eta[:, None] - eta[None, :]) ** 2 + dphi**2)
    graphs = _efpset(W1_EFP_ARGS).graphs()
    assert len(graphs) == 5 and all(len(g) == 4 for g in graphs)
    expected = [_brute_force_efp(z, theta, [tuple(e) for e in g]) for g in graphs]
    values = efps(p)
    assert values.shape == (1, 5)
    np.testing.assert_allclose(values[0], expected, rtol=1e-9)
    # z = pt_rel as given (jetnet: normed=None): doubling every pt_rel multiplies a 4-vertex EFP by 16
    doubled = p.copy()
    doubled[..., 2] *= 2
    np.testing.assert_allclose(efps(doubled), 16 * values, rtol=1e-9)


def test_jet_observables_shapes_and_the_w1efp_columns_of_the_fpd_set():
    pytest.importorskip("energyflow")
    jets = toy_jets(12, 20, seed=2)
    obs = jet_observables(jets)
    n_real = int(jets.mask.sum())
    assert obs["efps"].shape == (12, 5) and obs["fpd_efps"].shape == (12, 36)
    assert obs["leading_ptrel"].shape == (12, 5)
    for key in ("etarel", "phirel", "ptrel"):
        assert obs[key].shape == (n_real,)
    np.testing.assert_allclose(obs["efps"], efps(jets), rtol=1e-10)
    np.testing.assert_allclose(obs["mass"], jet_kinematics(jets)["mass"])
    assert obs["multiplicity"].tolist() == jets.multiplicity.tolist()


def test_permutations_and_padding_change_nothing():
    pytest.importorskip("energyflow")
    jets = toy_jets(20, 20, seed=3)
    rng = np.random.default_rng(0)
    shuffled = jets.particles.copy()
    for i in range(len(shuffled)):
        shuffled[i] = shuffled[i, rng.permutation(shuffled.shape[1])]  # padding slots move too
    garbage = shuffled.copy()
    pad = garbage[..., 3] == 0
    garbage[..., :3][pad] = rng.normal(0, 5, (int(pad.sum()), 3))  # masked slots hold junk
    base = jet_observables(jets, fpd_features=False)
    for other in (shuffled, garbage):
        obs = jet_observables(other, fpd_features=False)
        for key in ("mass", "multiplicity", "tau21", "tau32", "efps", "leading_ptrel"):
            np.testing.assert_allclose(obs[key], base[key], rtol=1e-6, atol=1e-9, err_msg=key)
        for key in ("etarel", "phirel", "ptrel"):
            np.testing.assert_allclose(np.sort(obs[key]), np.sort(base[key]), rtol=1e-6, err_msg=key)


def test_leading_ptrel_sorts_and_pads():
    p = _jet((0, 0, 0.1), (0, 0, 0.7), (0, 0, 0.2))
    assert leading_ptrel(p, 5).tolist() == [[0.7, 0.2, 0.1, 0.0, 0.0]]


def test_missing_energyflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "energyflow", None)
    with pytest.raises(ImportError, match=r"pip install 'caloforge\[jets\]'"):
        efps(_jet((0, 0, 1.0)))
