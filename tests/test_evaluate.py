"""`caloforge evaluate`: report, JSON and plots; sanity of the verdicts; input errors."""

import json

import numpy as np
import pytest

from caloforge.detector import get_detector
from caloforge.evaluate import EvaluationConfig, EvaluationError, evaluate
from caloforge.io import PointShowers, VoxelShowers, write_showers
from caloforge.projection import voxelise
from conftest import random_points

FAST = EvaluationConfig(n_draws=4, classifier_splits=2, classifier_epochs=3)


def _shower_like(n: int, seed: int, scale: float = 1.0, shift_mm: float = 0.0) -> PointShowers:
    """Crude showers: Gaussian transverse profile, depth ~ Gamma, energy ~ incident energy."""
    rng = np.random.default_rng(seed)
    energy = rng.uniform(10, 90, n)
    k = 120
    pts = np.zeros((n, k, 4), np.float32)
    pts[..., 0] = rng.normal(shift_mm, 12, (n, k))
    pts[..., 1] = rng.normal(0, 12, (n, k))
    pts[..., 2] = np.clip(np.floor(rng.gamma(4.0, 3.5, (n, k))), 0, 29) + 0.5
    pts[..., 3] = rng.exponential(1.0, (n, k)) * (energy[:, None] / 50) * scale
    return PointShowers(energy, pts)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    paths = {
        "ref": d / "ref.h5",
        "same": d / "same.h5",
        "hot": d / "hot.h5",
    }
    write_showers(paths["ref"], _shower_like(1200, 1), generator="geant4")
    write_showers(paths["same"], _shower_like(600, 2), generator="model-a")
    write_showers(paths["hot"], _shower_like(600, 3, scale=1.05, shift_mm=5.0883), generator="model-b")
    return paths


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = evaluate(files["ref"], [files["same"], files["hot"]], out, FAST)
    return out, result


def test_outputs_exist_and_json_is_complete(report):
    out, _ = report
    assert (out / "report.md").exists()
    data = json.loads((out / "metrics.json").read_text())
    names = ["N_hits", "E_vis/E_inc", "E_cell", "E_long", "E_radial", "m1 X", "m1 Y", "m1 Z"]
    assert data["w1_observables"] == names and data["w1_unit"] == 0.01
    assert set(names) <= set(data["w1_floor"])
    for cand in data["candidates"]:
        assert set(names) <= set(cand["w1"]) and len(cand["classifier_auc"]) == 2
        assert cand["w1"]["meta"]["draw_size"] == 600
    for name in ("n_hits", "cell_energy", "longitudinal_profile", "radial_profile", "classifier_scores"):
        png = out / data["figures"][name]
        assert png.stat().st_size > 5000 and png.with_suffix(".pdf").exists()
    text = (out / "report.md").read_text()
    assert "floor" in text and "model-a" in text and "units of 0.01" in text and "![n_hits]" in text


def test_same_distribution_at_floor_shifted_above(report):
    _, result = report
    floor = result["w1_floor"]
    same, hot = result["candidates"]
    for key in ("N_hits", "E_vis/E_inc", "m1 X", "E_radial"):
        # at the floor: within a few standard deviations of it
        assert same["w1"][key][0] < floor[key][0] + 4 * max(floor[key][1], same["w1"][key][1]) + 1.0
    assert hot["w1"]["E_vis/E_inc"][0] > 3 * floor["E_vis/E_inc"][0]
    assert hot["w1"]["m1 X"][0] > 3 * floor["m1 X"][0]
    assert abs(same["classifier_auc"][0] - 0.5) < 0.06
    assert hot["classifier_auc"][0] > 0.7


def test_voxel_files_get_calochallenge_metrics(tmp_path):
    det = get_detector("calochallenge-ds2")
    ref = voxelise(random_points(120, 60, seed=1, n_layers=45), det)
    cand = voxelise(random_points(120, 60, seed=2, n_layers=45), det)
    write_showers(tmp_path / "r.h5", ref, detector=det)
    write_showers(tmp_path / "c.h5", VoxelShowers(cand.energy, cand.voxels), detector=det)
    config = EvaluationConfig(n_draws=2, classifier_splits=1, classifier_epochs=1, plots=False)
    result = evaluate(tmp_path / "r.h5", [tmp_path / "c.h5"], tmp_path / "out", config)
    cc = result["candidates"][0]["calochallenge"]
    assert {"E_layer", "EC_x", "width_x", "sparsity"} <= set(cc["separation_power"])
    assert len(cc["fpd"]) == 2 and len(cc["kpd"]) == 2
    assert "CaloChallenge metrics" in (tmp_path / "out" / "report.md").read_text()


def test_errors(files, tmp_path):
    det2 = tmp_path / "ds2.h5"
    ds2 = get_detector("calochallenge-ds2")
    write_showers(det2, voxelise(random_points(10, 5, n_layers=45), ds2), detector=ds2)
    with pytest.raises(EvaluationError, match="same detector"):
        evaluate(files["ref"], [det2], tmp_path / "o1", FAST)
    narrow = tmp_path / "narrow.h5"
    showers = _shower_like(60, 5)
    write_showers(narrow, PointShowers(showers.energy + 100, showers.points))
    with pytest.raises(EvaluationError, match="same spectrum"):
        evaluate(files["ref"], [narrow], tmp_path / "o2", FAST)
    empty = tmp_path / "empty.h5"
    write_showers(empty, PointShowers(np.zeros(0), np.zeros((0, 1, 4))))
    with pytest.raises(EvaluationError, match="holds no showers"):
        evaluate(files["ref"], [empty], tmp_path / "o4", FAST)
    with pytest.raises(EvaluationError, match="at least one candidate"):
        evaluate(files["ref"], [], tmp_path / "o3", FAST)


def test_small_candidate_is_handled_with_a_note(files, tmp_path):
    small = tmp_path / "small.h5"
    write_showers(small, _shower_like(30, 9))
    result = evaluate(files["ref"], [small], tmp_path / "o", EvaluationConfig(n_draws=3, plots=False))
    assert result["candidates"][0]["w1"]["meta"]["draw_size"] == 30
    assert result["candidates"][0]["classifier_auc"] is None
    assert any("classifier not run" in n for n in result["notes"])
    assert any("W1 draws use 30 showers" in n for n in result["notes"])
