"""The published evaluation protocols (``--protocol calochallenge|jetnet``): each convention held
to a hand-computed case, and our files read with exactly the calls the public tools make."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from caloforge import calochallenge, metrics
from caloforge.detector import get_detector
from caloforge.evaluate import EvaluationConfig, EvaluationError, evaluate
from caloforge.io import VoxelShowers, write_showers
from caloforge.jets import metrics as jm
from caloforge.jets.io import read_jets, write_jets
from caloforge.jets.observables import jet_observables
from caloforge.metrics import fpd_jetnet, kpd, kpd_jetnet
from conftest import cli_run, random_points, toy_jets, toy_voxels

DS2 = get_detector("calochallenge-ds2")


def _mmd_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of the degree-4 kernel (x·y/d + 1)⁴, pair by pair."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((u @ v / d + 1.0) ** 4)

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kpd_kernel_is_degree_four_by_hand():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(0.5, 1.0, size=(6, 3))
    # Without replacement, batch = the whole sample: one MMD², the hand value.
    assert kpd(x, y, n_batches=1, batch_size=6, normalise=False)[0] == pytest.approx(_mmd_by_hand(x, y))
    # jetnet's draws: batch i takes indices with replacement from default_rng(seed + 1000 i);
    # duplicated rows count as distinct pairs (only the diagonal is left out).
    values = []
    for i in range(3):
        r = np.random.default_rng(7 + 1000 * i)
        ix, iy = r.choice(6, size=5), r.choice(6, size=5)
        values.append(_mmd_by_hand(x[ix], y[iy]))
    med, spread = kpd_jetnet(x, y, n_batches=3, batch_size=5, normalise=False, seed=7)
    assert med == pytest.approx(np.median(values))
    q16, q84 = np.percentile(values, [16.275, 83.725])
    assert spread == pytest.approx((q84 - q16) / 2)


def test_jetnet_fpd_bootstraps_any_sample_and_extrapolates_in_one_over_n(monkeypatch):
    # Constant samples one unit apart in each of 3 features: every draw has distance 3 (no
    # spread, no 1/N term), so the intercept is 3 exactly — drawn with replacement from 4 rows.
    x, y = np.zeros((4, 3)), np.ones((4, 3))
    value, _ = fpd_jetnet(x, y, min_samples=10, max_samples=40, n_points=4, normalise=False)
    assert value == pytest.approx(3.0)
    # Normalised by the reference's max |value| per feature (jetnet): x / 2 and y / 2.
    value, _ = fpd_jetnet(2 * np.ones((5, 2)), 4 * np.ones((5, 2)), min_samples=10, max_samples=20)
    assert value == pytest.approx(2.0)
    # The sizes: evenly spaced in 1/N (1/10 … 1/40), truncated; the fit a + b/N through the means.
    sizes = []

    def distance_at(x, y, pairs):
        pairs = list(pairs)
        sizes.append(len(pairs[0][0]))
        return 1.0 + 50.0 / len(pairs[0][0])  # a = 1, b = 50

    monkeypatch.setattr(metrics, "_frechet_of_draws", distance_at)
    value, error = fpd_jetnet(x, y, min_samples=10, max_samples=40, n_points=4, normalise=False)
    assert sizes == [10, 13, 20, 40] and value == pytest.approx(1.0) and error == pytest.approx(0.0, abs=1e-6)


def test_calochallenge_high_level_inputs_by_hand():
    vox = np.zeros((1, DS2.n_channels), np.float32)
    vox[0, 3 * 144 + 0 * 9 + 2] = 1.0  # layer 3, angle bin 0, ring 2 (9.3-13.95 mm)
    vox[0, 3 * 144 + 8 * 9 + 2] = 1.0  # the opposite angle bin, same ring
    vox[0, 10 * 144 + 4 * 9 + 0] = 2.0  # layer 10, ring 0
    vox[0, 7 * 144] = 0.0151  # below the exact threshold 0.0151515… MeV: dropped
    x = calochallenge.high_level_inputs(VoxelShowers([10.0], vox), DS2)
    n = 45
    assert x.shape == (1, 2 + 8 * n)
    e_layer, ec_x, ec_y, w_x, w_y = (x[0, 1 + k * n : 1 + (k + 1) * n] for k in range(5))
    e_tot, sparsity = x[0, 1 + 5 * n], x[0, 2 + 5 * n : 2 + 6 * n]
    ec_r, w_r = x[0, 2 + 6 * n : 2 + 7 * n], x[0, 2 + 7 * n :]
    assert x[0, 0] == pytest.approx(4.0)  # log10(10 GeV in MeV)
    assert e_layer[3] == pytest.approx(np.log10(2.0 + 1e-8)) and e_layer[7] == pytest.approx(-8.0)
    assert e_tot == pytest.approx(np.log10(4.0 + 1e-8))
    assert ec_x[3] == pytest.approx(0.0, abs=1e-12) and ec_y[3] == pytest.approx(0.0, abs=1e-12)
    r = 11.625  # ring 2's centre; angle centres -π + π/16 and its opposite
    assert w_x[3] == pytest.approx(r * abs(np.cos(-np.pi + np.pi / 16)) / 100)
    assert w_y[3] == pytest.approx(r * abs(np.sin(-np.pi + np.pi / 16)) / 100)
    assert ec_r[3] == pytest.approx(0.11625) and w_r[3] == pytest.approx(0.0)
    assert ec_r[10] == pytest.approx(0.02325)
    assert sparsity[3] == pytest.approx(142 / 144) and sparsity[7] == 1.0
    low = calochallenge.low_level_inputs(VoxelShowers([10.0], vox), DS2)
    assert low[0, 0] == 4.0 and low[0, 1 + 7 * 144] == 0.0 and low[0, 1 + 10 * 144 + 36] == 2.0 / 10_000


def test_calochallenge_classifier_reports_the_calibrated_validation_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 4)), rng.normal(1.5, 1.0, size=(200, 4))
    # One batch of 1000 holds the whole training split: one Adam step (lr 2e-4) per epoch.
    fit = calochallenge.classifier_auc(a, b, epochs=40, hidden=32, seed=3)
    # 60/20/20 of 200 per class: the AUC is measured on the 40 validation showers per class,
    # on scores calibrated by isotonic regression (a step function: few distinct values, ties).
    assert fit.n_test == (40, 40) and fit.n_per_class == 200
    labels = np.r_[np.zeros(40), np.ones(40)]
    assert fit.auc == pytest.approx(roc_auc_score(labels, np.r_[fit.scores_a, fit.scores_b]))
    assert len(np.unique(np.r_[fit.scores_a, fit.scores_b])) < 40
    assert fit.auc > 0.6 and fit.auc_std > 0  # one run: its standard error
    runs = calochallenge.classifier_auc(a, b, n_runs=2, epochs=2, hidden=32, seed=3)
    assert len(runs.aucs) == 2 and runs.auc_std == pytest.approx(np.std(runs.aucs))


def _official_cls_low_input(path) -> np.ndarray:
    """What the CaloChallenge's evaluate.py builds for cls-low from a file (check_file,
    extract_shower_and_energy, the threshold, prepare_low_data_for_classifier)."""
    with h5py.File(path, "r") as given_file:
        assert given_file["showers"].shape[1] == 6480
        assert given_file["incident_energies"].shape[0] == given_file["showers"].shape[0]
        shower, energy = given_file["showers"][:], given_file["incident_energies"][:]
    shower = np.where(shower < 0.5e-3 / 0.033, np.zeros_like(shower), shower)
    return np.concatenate([np.log10(energy), shower / energy, 0.0 * np.ones_like(energy)], axis=1)


def test_our_voxel_files_go_through_the_official_calochallenge_calls(tmp_path):
    write_showers(tmp_path / "ours.h5", toy_voxels(8), detector=DS2)
    with h5py.File(tmp_path / "ours.h5", "r") as f:  # the challenge's own files are float64
        assert f["showers"].dtype == np.float64 and f["incident_energies"].dtype == np.float64
        assert f["showers"].attrs["units"] == f["incident_energies"].attrs["units"] == "MeV"
    data = _official_cls_low_input(tmp_path / "ours.h5")
    assert data.dtype == np.float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # evaluate.py does this at import
    try:
        layer = torch.nn.Linear(data.shape[1] - 1, 4)
        batch = torch.tensor(data)
        assert layer(batch[:, :-1]).shape == (8, 4)
        with pytest.raises(RuntimeError):  # a float32 file (before): the official call fails
            layer(torch.tensor(data.astype(np.float32))[:, :-1])
    finally:
        torch.set_default_dtype(old)


def test_our_jet_files_go_through_jetnets_reader(tmp_path):
    jets = toy_jets(10, 30, seed=4)
    write_jets(tmp_path / "t.hdf5", jets, generator="epic-fm")
    # jetnet.datasets.JetNet.getData for jet_type "t", 30 particles, all features:
    with h5py.File(tmp_path / "t.hdf5", "r") as f:
        pf = np.array(f["particle_features"])[:, :30]
        jf = np.array(f["jet_features"])
        assert f["particle_features"].attrs["features"] == "etarel,phirel,ptrel,mask"
        assert f["jet_features"].attrs["units"] == "GeV,1,GeV,1"
    jf = np.concatenate((np.full([len(jf), 1], 2), jf[:, :3], np.minimum(jf[:, 3:], 30)), axis=1)
    assert pf.shape == (10, 30, 4) and jf.shape == (10, 5)
    np.testing.assert_allclose(pf[..., :3], jets.particles[..., :3])  # etarel, phirel, ptrel, mask
    np.testing.assert_array_equal(pf[..., 3], jets.particles[..., 3])
    np.testing.assert_allclose(jf[:, 1:], jets.jet)  # pt, eta, mass, num_particles


def test_calochallenge_protocol_in_evaluate(tmp_path, monkeypatch):
    # The challenge draws 10k-50k showers for FPD and 10k per KPD batch: smaller here.
    monkeypatch.setattr(calochallenge, "FPD_MIN_SAMPLES", 100)
    monkeypatch.setattr(calochallenge, "FPD_MAX_SAMPLES", 200)
    monkeypatch.setattr(calochallenge, "KPD_BATCH_SIZE", 100)
    write_showers(tmp_path / "r.h5", toy_voxels(100, seed=1), detector=DS2)
    write_showers(tmp_path / "c.h5", toy_voxels(100, seed=2), detector=DS2)
    config = EvaluationConfig(
        n_draws=2, classifier_splits=1, classifier_epochs=1, plots=False, protocol="calochallenge"
    )
    result = evaluate(tmp_path / "r.h5", [tmp_path / "c.h5"], tmp_path / "out", config)
    cc = result["candidates"][0]["calochallenge"]
    assert result["protocol"] == "calochallenge"
    assert result["metric_protocols"]["fpd"] == "calochallenge"
    assert result["metric_protocols"]["classifier_auc"] == "caloforge"
    # 60/20/20 of 100 per class: the high-level AUC on 20 validation showers per class
    assert result["candidates"][0]["auc_resolution"]["high_level_auc"]["n_test_per_class"] == [20, 20]
    assert len(cc["fpd"]) == 2 and cc["fpd"][0] >= 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Protocol: **calochallenge**" in text and "FPD ×10³" in text and "isotonic" in text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["protocol"] == "calochallenge"


@pytest.mark.parametrize(
    ("kind", "protocol", "message"),
    [
        ("showers", "calochallenge", "calochallenge protocol needs voxel showers on a polar"),
        ("showers", "jetnet", "jetnet protocol does not apply to shower files"),
        ("jets", "calochallenge", "calochallenge protocol does not apply to jet files"),
        ("jets", "cc", "unknown protocol 'cc'"),
    ],
)
def test_protocols_refused_where_they_do_not_apply(tmp_path, kind, protocol, message):
    path = tmp_path / "f.h5"
    if kind == "showers":
        write_showers(path, random_points(20, 10), generator="geant4")
    else:
        write_jets(path, toy_jets(40, 8, seed=1))
    with pytest.raises(EvaluationError, match=message):
        evaluate(path, [path], tmp_path / "out", EvaluationConfig(protocol=protocol))


def test_jetnet_protocol_in_evaluate(tmp_path):
    pytest.importorskip("energyflow")
    write_jets(tmp_path / "ref.h5", toy_jets(400, 12, seed=1), generator="pythia8+fastjet")
    write_jets(tmp_path / "cand.h5", toy_jets(300, 12, seed=2), generator="epic-fm")
    config = EvaluationConfig(
        n_draws=2, draw_size=2000, classifier_splits=2, classifier_epochs=1, plots=False, protocol="jetnet"
    )
    result = evaluate(tmp_path / "ref.h5", [tmp_path / "cand.h5"], tmp_path / "out", config)
    assert result["protocol"] == "jetnet" and result["metric_protocols"]["kl"] == "caloforge"
    # 2,000-jet batches drawn with replacement from 300 (jetnet's draws; caloforge's refuse this)
    cand = result["candidates"][0]
    assert (
        np.isfinite(cand["kpd"][0]) and result["jetnet_batches"] == 2 and result["jetnet_batch_size"] == 2000
    )
    # W1m: all 300 candidate jets against all 400 reference jets, 2 batches of 2,000 drawn with
    # replacement, seed 42 (jetnet's default at --seed 0) — not half A against 150 jets.
    mass = [jet_observables(read_jets(tmp_path / f))["mass"] for f in ("ref.h5", "cand.h5")]
    expected = jm.w1m(*mass, num_eval_samples=2000, num_batches=2, seed=42, replace=True)
    assert cand["w1m"] == pytest.approx([v / jm.UNITS["w1m"] for v in expected])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Protocol: **jetnet**" in text and "drawn with replacement" in text
    assert any("whole reference (400 jets)" in note for note in result["notes"])


def test_cli_protocol_and_jet_type_errors_are_one_line(tmp_path, monkeypatch, capsys):
    write_showers(tmp_path / "p.h5", random_points(20, 10), generator="geant4")
    code, _, err = cli_run(
        monkeypatch,
        capsys,
        "evaluate",
        tmp_path / "p.h5",
        tmp_path / "p.h5",
        "--out",
        tmp_path / "o",
        "--protocol",
        "jetnet",
    )
    assert code == 2 and "jetnet protocol does not apply to shower files" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o" / "report.md").exists()
    write_jets(tmp_path / "jets.h5", toy_jets(40, 8, seed=1))  # the writer's attribute says "t"
    with h5py.File(tmp_path / "jets.h5", "a") as f:
        del f.attrs["jet_type"]
    code, _, err = cli_run(
        monkeypatch,
        capsys,
        "evaluate",
        tmp_path / "jets.h5",
        tmp_path / "jets.h5",
        "--out",
        tmp_path / "o2",
        "--jet-type",
        "x",
    )
    assert code == 2 and "unknown --jet-type 'x'" in err and len(err.strip().splitlines()) == 1
