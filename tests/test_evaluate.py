"""`caloforge evaluate`: report, JSON and plots; sanity of the verdicts; input errors."""

import json

import numpy as np
import pytest

from caloforge import asset_path, metrics
from caloforge.detector import get_detector
from caloforge.evaluate import (
    DISTORTIONS,
    EvaluationConfig,
    EvaluationError,
    _distorted,
    _distorted_observables,
    _resolution,
    evaluate,
    summary_lines,
)
from caloforge.io import PointShowers, VoxelShowers, write_showers
from caloforge.observables import observables_from_file
from caloforge.projection import voxelise
from conftest import random_points, run_cli

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
    names = ["N_hits", "E_vis/E_inc", "E_cell", "E_long", "E_radial", "m1 X", "m1 Y", "m1 Z", "log E_cell"]
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


def test_cell_level_classifier_on_point_files(files, tmp_path):
    """--low-level on a cell grid: the cell-level classifier beside the SPEC 5 one, with its
    resolving power (minimum detectable AUC, the known distortion) and its report section; the
    shifted, hotter candidate is far easier to tell than the same-distribution one."""
    config = EvaluationConfig(
        n_draws=2, classifier_splits=2, classifier_epochs=3, plots=False, low_level=True
    )
    result = evaluate(files["ref"], [files["same"], files["hot"]], tmp_path / "o", config)
    same, hot = result["candidates"]
    assert result["metric_protocols"]["cell_level_auc"] == "caloforge"
    assert set(result["distortion_check"]["auc"]) == {"classifier_auc", "cell_level_auc"}
    for c in (same, hot):
        res = c["auc_resolution"]["cell_level_auc"]
        assert res["auc"] == c["cell_level_auc"] and 0.5 < res["minimum_detectable_auc"] < 0.6
    assert hot["cell_level_auc"][0] > 0.8 and hot["cell_level_auc"][0] > same["cell_level_auc"][0] + 0.2
    text = (tmp_path / "o" / "report.md").read_text()
    assert "## Cell-level classifier AUC" in text and "13 × 13 cells" in text
    assert "model-b, cell-level AUC" in text
    # the classifier weights, for each classifier; the cell-level one places most of the hot
    # candidate's showers with confidence, few of the same-distribution one's
    assert set(hot["classifier_weights"]) == {"classifier_auc", "cell_level_auc"}
    w_same, w_hot = same["classifier_weights"]["cell_level_auc"], hot["classifier_weights"]["cell_level_auc"]
    assert w_hot["candidate"]["outside"] > w_same["candidate"]["outside"] + 0.2
    assert w_hot["candidate"]["quantiles"]["50"] < w_same["candidate"]["quantiles"]["50"]
    assert len(w_hot["least_like"]) == 5 and all(10 <= s["energy_gev"] <= 90 for s in w_hot["least_like"])
    weights = [s["weight"] for s in w_hot["least_like"]]
    assert weights == sorted(weights) and weights[0] < 0.5
    assert "## Classifier weights" in text and "Least reference-like candidate showers" in text


def test_voxel_files_get_calochallenge_metrics(tmp_path):
    det = get_detector("calochallenge-ds2")
    ref = voxelise(random_points(120, 60, seed=1, n_layers=45), det)
    cand = voxelise(random_points(120, 60, seed=2, n_layers=45), det)
    write_showers(tmp_path / "r.h5", ref, detector=det)
    write_showers(tmp_path / "c.h5", VoxelShowers(cand.energy, cand.voxels), detector=det)
    config = EvaluationConfig(
        n_draws=2, classifier_splits=1, classifier_epochs=1, plots=False, low_level=True
    )
    result = evaluate(tmp_path / "r.h5", [tmp_path / "c.h5"], tmp_path / "out", config)
    cc = result["candidates"][0]["calochallenge"]
    assert {"E_layer", "EC_x", "width_x", "sparsity"} <= set(cc["separation_power"])
    assert len(cc["fpd"]) == 2 and len(cc["kpd"]) == 2
    text = (tmp_path / "out" / "report.md").read_text()
    assert "CaloChallenge metrics" in text and "Resolving power of the CaloChallenge classifiers" in text
    # the floor row: two halves of the reference (60 each), same groups, FPD/KPD with errors
    floor = result["calochallenge_floor"]
    assert floor["n_per_half"] == 60 and set(floor["separation_power"]) == set(cc["separation_power"])
    assert all(0 <= v <= 1 for v in floor["separation_power"].values()) and len(floor["fpd"]) == 2
    assert " vs itself (floor, halves of 60) |" in text
    # every AUC has its resolving power; the 5 % check ran once, at half the reference (60 per class)
    kinds = {"classifier_auc", "high_level_auc", "low_level_auc"}
    check = result["distortion_check"]
    assert set(check["auc"]) == kinds and check["n_per_class"] == 60
    resolution = result["candidates"][0]["auc_resolution"]
    assert set(resolution) == kinds
    for key in kinds - {"classifier_auc"}:
        assert resolution[key]["auc"] == list(cc[key]) and resolution[key]["minimum_detectable_auc"] > 0.5


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


# --------------------------------------------------------------------------------------
# Existing reports, resolving power of the AUCs, held-out figures
# --------------------------------------------------------------------------------------

TINY = EvaluationConfig(n_draws=2, classifier_splits=2, classifier_epochs=2, plots=False)


def _heldout_cm(weights: str = "caloclouds2_cm_cpu.pt") -> dict:
    entries = json.loads(asset_path("heldout_figures.json").read_text())["figures"]["caloclouds2-cm"]
    (entry,) = [e for e in entries if e["model"] == weights]
    return entry


@pytest.mark.parametrize("weights", ["caloclouds2_cm_cpu.pt", "caloclouds2_cm_fast_cpu.pt"])
def test_heldout_figure_of_each_shipped_model_sharing_a_label(weights):
    from types import SimpleNamespace

    from caloforge.evaluate import _heldout, _heldout_figures

    figures = _heldout_figures()
    sample = SimpleNamespace(generator="caloclouds2-cm", attrs={"model": f"/somewhere/{weights}"})
    assert _heldout(sample, figures) == _heldout_cm(weights)
    assert asset_path(weights).is_file()
    other = SimpleNamespace(generator="caloclouds2-cm", attrs={"model": "runs/mine/checkpoint.pt"})
    assert _heldout(other, figures) is None
    # measured on the full ild-ecal: quoted there, not beside an evaluation on a window of it
    assert _heldout(sample, figures, "ild-ecal") == _heldout_cm(weights)
    assert _heldout(sample, figures, "ild-ecal-30") is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """150 reference showers, two candidates of 60 labelled as the shipped CM model; one of them
    names other weights. The report is written over an old one with ``overwrite=True``."""
    d = tmp_path_factory.mktemp("tiny")
    paths = {"ref": d / "ref.h5", "shipped": d / "shipped.h5", "own": d / "own.h5", "out": d / "out"}
    write_showers(paths["ref"], _shower_like(150, 11), generator="geant4")
    for name, model, seed in (("shipped", "caloclouds2_cm_cpu.pt", 12), ("own", "runs/mine", 13)):
        write_showers(paths[name], _shower_like(60, seed), generator="caloclouds2-cm", attrs={"model": model})
    paths["out"].mkdir()
    (paths["out"] / "report.md").write_text("old report\n")
    (paths["out"] / "metrics.json").write_text("{}\n")
    result = evaluate(paths["ref"], [paths["shipped"], paths["own"]], paths["out"], TINY, overwrite=True)
    return paths, result


def test_existing_report_is_refused_before_any_work_and_kept(files, tmp_path):
    for name in ("report.md", "metrics.json"):
        out = tmp_path / name.split(".")[0]
        out.mkdir()
        (out / name).write_bytes(b"an old report \x00\xff\n")
        with pytest.raises(FileExistsError, match=r"already holds a report .*pass --overwrite to replace it"):
            evaluate(files["ref"], [files["same"]], out, FAST)
        assert (out / name).read_bytes() == b"an old report \x00\xff\n"
        assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written


def test_overwrite_replaces_the_report(tiny):
    paths, result = tiny
    text = (paths["out"] / "report.md").read_text()
    assert text.startswith("# Evaluation against geant4") and "old report" not in text
    data = json.loads((paths["out"] / "metrics.json").read_text())
    assert [c["label"] for c in data["candidates"]] == [c["label"] for c in result["candidates"]]
    assert not list(paths["out"].glob("*.partial"))


def test_output_and_input_errors(files, tmp_path):
    with pytest.raises(EvaluationError, match="is the input file"):
        evaluate(files["ref"], [files["same"]], files["same"], FAST)
    with pytest.raises(EvaluationError, match="is a directory"):
        evaluate(files["ref"], [tmp_path], tmp_path / "o", FAST)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(EvaluationError, match="is a file"):
        evaluate(files["ref"], [files["same"]], tmp_path / "plain", FAST)


def test_auc_standard_error_and_minimum_detectable():
    # Hanley & McNeil at A = 0.5: sqrt((n_a + n_b + 1) / (12 n_a n_b)); at A = 0.8, n = 50, 50:
    # Q1 = 2/3, Q2 = 32/45, SE^2 = (0.16 + 49 (2/3 - 0.64) + 49 (32/45 - 0.64)) / 2500.
    assert metrics.auc_standard_error(0.5, 100, 100) == pytest.approx(np.sqrt(201 / 120_000))
    expected = np.sqrt((0.16 + 49 * (2 / 3 - 0.64) + 49 * (32 / 45 - 0.64)) / 2500)
    assert expected == pytest.approx(0.0445, abs=1e-4)
    assert metrics.auc_standard_error(0.8, 50, 50) == pytest.approx(expected)
    assert metrics.minimum_detectable_auc(100, 100) == pytest.approx(0.5 + 2 * np.sqrt(201 / 120_000))
    assert metrics.minimum_detectable_auc(10_000, 10_000) < metrics.minimum_detectable_auc(100, 100)


def test_resolving_power_fields(tiny):
    _, result = tiny
    check = result["distortion_check"]
    assert check["n_per_class"] == 60
    assert check["auc"]["classifier_auc"]["distortion"] == DISTORTIONS["points"].name
    assert check["size_from"] == "the smallest candidate"
    for cand in result["candidates"]:
        res = cand["auc_resolution"]["classifier_auc"]
        # 2 of 10 folds of 60 showers per class were tested
        n = 12
        assert res["n_test_per_class"] == [n, n]
        assert res["standard_error"] == pytest.approx(np.sqrt((2 * n + 1) / (12 * n * n)))
        assert res["minimum_detectable_auc"] == pytest.approx(0.5 + 2 * res["standard_error"])
        assert res["minimum_detectable_auc"] > 0.5
        assert res["auc"] == cand["classifier_auc"]
        assert res["distortion_auc"] == check["auc"]["classifier_auc"]["auc"]


def test_tiny_sample_is_called_too_small(tiny):
    paths, result = tiny
    check = result["distortion_check"]["auc"]["classifier_auc"]
    assert not check["detects"] and check["auc"][0] < check["minimum_detectable_auc"]
    assert {c["auc_resolution"]["classifier_auc"]["verdict"] for c in result["candidates"]} == {"too_small"}
    text = " ".join((paths["out"] / "report.md").read_text().split())
    assert (
        "too small a sample: this classifier cannot tell showers 5 % wider from Geant4 at this size, "
        "so an AUC near 0.5 does not mean indistinguishable"
    ) in text
    lines = summary_lines(result)
    assert any(line.startswith("warning: too small a sample for the SPEC 5") for line in lines)


def test_verdicts_follow_the_check():
    fit = metrics.ClassifierResult(0.52, 0.01, np.zeros(1000), np.ones(1000), n_per_class=1000)
    minimum = metrics.minimum_detectable_auc(1000, 1000)

    def check(auc: float) -> dict:
        return {
            "auc": {
                "classifier_auc": {
                    "auc": [auc, 0.01],
                    "detects": auc >= minimum,
                    "distortion": "showers 5 % wider",
                }
            }
        }

    consistent = _resolution(fit, check(0.7), "classifier_auc", "Geant4")
    assert consistent["verdict"] == "consistent"
    assert consistent["sentence"] == (
        "consistent with the reference at this sample size (it would detect showers 5 % wider: AUC 0.700)"
    )
    assert _resolution(fit, check(0.51), "classifier_auc", "Geant4")["verdict"] == "too_small"
    fit.auc = 0.9
    assert _resolution(fit, check(0.7), "classifier_auc", "Geant4")["verdict"] == "distinguishable"
    assert _resolution(fit, None, "classifier_auc", "Geant4")["verdict"] == "unchecked"


def test_distortion_widens_showers_before_the_projection(files):
    det = get_detector("ild-ecal")
    index = np.arange(0, 40, 3)
    plain = observables_from_file(files["ref"], det, max_showers=40).subset(index)
    wide = _distorted_observables(files["ref"], det, index, EvaluationConfig(chunk_size=7, max_showers=40))
    np.testing.assert_array_equal(wide.energy, plain.energy)
    # The same energy, spread 5 % wider: less of it in the core ring, more in the outer ones.
    np.testing.assert_allclose(wide.e_vis, plain.e_vis, rtol=0.02)
    assert wide.e_radial[:, 0].sum() < plain.e_radial[:, 0].sum()
    assert wide.e_radial[:, -3:].sum() > plain.e_radial[:, -3:].sum()


def test_voxel_distortion_moves_energy_one_ring_out():
    det = get_detector("calochallenge-ds2")
    vox = np.zeros((1, det.n_channels), np.float32)
    vox[0, 0] = 100.0  # layer 0, first angle, innermost ring
    vox[0, det.readout.n_radial - 1] = 10.0  # its outermost ring
    out = _distorted(VoxelShowers(np.array([10.0]), vox), det).voxels[0]
    assert out[0] == pytest.approx(95.0) and out[1] == pytest.approx(5.0)
    assert out[det.readout.n_radial - 1] == pytest.approx(10.0)  # the last ring keeps its own
    assert out.sum() == pytest.approx(vox.sum())


def test_heldout_figure_beside_the_shipped_models_auc(tiny):
    paths, result = tiny
    figure = _heldout_cm()
    mean, std = figure["auc"]["classifier_auc"]
    line = (
        f"held-out figure ({figure['source']}, {figure['n_showers']:,} showers): AUC {mean:.3f} ± {std:.3f}"
    )
    shipped, own = result["candidates"]
    assert shipped["heldout"] == figure and own["heldout"] is None  # own weights: no figure
    report_lines = (paths["out"] / "report.md").read_text().splitlines()
    assert [row.split(" | ")[0] for row in report_lines if line in row] == [f"| {shipped['label']}"]
    (printed,) = [s for s in summary_lines(result) if s.startswith(f"classifier AUC {shipped['label']}:")]
    assert printed.endswith(f"; {line})")
    assert "(minimum detectable " in printed and "; showers 5 % wider: " in printed


def test_cli_refuses_an_existing_report_and_overwrites_with_the_flag(tiny, monkeypatch, capsys, tmp_path):
    paths, _ = tiny
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("keep me\n")
    args = ("evaluate", paths["ref"], paths["shipped"], "--out", out, "--draws", 2, "--splits", 2)
    args += ("--epochs", 2)
    run_cli(monkeypatch, *args, "--no-plots", code=2)
    assert "--overwrite" in capsys.readouterr().err and (out / "report.md").read_text() == "keep me\n"
    run_cli(monkeypatch, *args, "--no-plots", "--overwrite")
    printed = " ".join(capsys.readouterr().out.split())
    assert "classifier AUC caloclouds2-cm: " in printed and "(minimum detectable 0.7" in printed
    assert "warning: too small a sample" in printed and "held-out figure (docs/results.md" in printed
    assert (out / "report.md").read_text() != "keep me\n"


def _ranked(aucs, verdict="distinguishable", heldout=None):
    """A shower result with candidates of the given (AUC, spread) on 1,000 test showers per class."""
    cands = []
    for i, (auc, spread) in enumerate(aucs):
        res = {"auc": [auc, spread], "n_test_per_class": [1000, 1000], "verdict": verdict,
               "distortion": "showers 5 % wider", "sentence": "...",
               "minimum_detectable_auc": 0.526}  # fmt: skip
        held = None if heldout is None else {"auc": {"classifier_auc": heldout[i]}, "n_showers": 10_000}
        cands.append({"label": f"m{i}", "auc_resolution": {"classifier_auc": res}, "heldout": held})
    return {"reference": {"label": "Geant4"}, "candidates": cands}


def test_ranking_says_which_model_is_closest_and_which_it_cannot_tell_apart():
    from caloforge.evaluate.report import ranking

    clear = ranking(_ranked([(0.90, 0.01), (0.62, 0.01), (0.75, 0.01)]))
    assert "closest to Geant4 first: m1 (0.620), then m2 (0.750), then m0 (0.900)" in clear[0]
    assert "m1 is closest to Geant4, ahead of every other candidate by more than 2σ" in clear[1]
    # 0.62 vs 0.64 on 1,000 showers per class: SE ≈ 0.0126 each, 2σ ≈ 0.036 > 0.02
    tied = ranking(_ranked([(0.64, 0.01), (0.62, 0.01), (0.90, 0.01)]))
    assert "cannot tell m1 from m0" in tied[1] and "m2" not in tied[1]
    small = ranking(_ranked([(0.51, 0.03), (0.50, 0.03)], "too_small", heldout=[[0.90, 0.01], [0.65, 0.02]]))
    assert "cannot rank them" in small[1]
    assert "held-out figures" in small[2] and "m1 (0.650 ± 0.020), then m0 (0.900 ± 0.010)" in small[2]
    # too small to see the distortion, but one candidate is far off all the same: said so
    mixed = ranking(_ranked([(0.51, 0.03), (0.91, 0.01)], "too_small"))
    assert "cannot rank them" not in mixed[1] and "(m0) do not mean indistinguishable" in mixed[1]
    assert "m1 differ from Geant4 all the same" in mixed[1]


def test_heldout_figures_are_the_ones_the_docs_quote():
    """assets/heldout_figures.json is the one source of the quoted held-out AUCs: each is written in
    docs/results.md as mean ± std, and the README's headline figures are among them."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    figures = json.loads(asset_path("heldout_figures.json").read_text())["figures"]
    results, readme = (root / "docs" / "results.md").read_text(), (root / "README.md").read_text()
    by_model = {}
    for entries in figures.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            by_model[entry["model"]] = entry["auc"]
            for key, (mean, std) in entry["auc"].items():
                assert f"{mean:.3f} ± {std:.3f}" in results, (entry["model"], key)
    readme_quotes = {
        "caloclouds2_cpu.pt": ("classifier_auc", "classifier AUC {:.3f} (25 evaluations)"),
        "caloclouds2_cm_cpu.pt": ("classifier_auc", "**{:.3f}** (CM, 1 evaluation"),
        "caloclouds2_cm_fast_cpu.pt": ("classifier_auc", "at AUC {:.3f}."),
        "calodream_ds2_cpu.pt": ("high_level_auc", "CaloChallenge high-level AUC **{:.3f} ±"),
        "caloinn_ds2_cpu.pt": ("high_level_auc", "high-level AUC **{:.3f} ±"),
    }
    for model, (key, text) in readme_quotes.items():
        assert text.format(by_model[model][key][0]) in readme, (model, text)


# ---------------------------------------------------------------------------
# report.html: one self-contained page, opened in a real headless browser
# ---------------------------------------------------------------------------


def _chromium() -> str | None:
    """Chromium to open reports in (``CALOFORGE_CHROMIUM`` or on PATH); None if there is none."""
    import os
    import shutil

    names = (os.environ.get("CALOFORGE_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome")
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _need_browser() -> str:
    """The Chromium executable for the browser test; the test skips without Chromium and
    Playwright, except where ``CALOFORGE_REQUIRE_BROWSER=1`` (CI installs both) makes it fail."""
    import importlib.util
    import os

    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install playwright)")
    chromium = _chromium()
    if chromium is None:
        missing.append("chromium (apt-get install chromium)")
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CALOFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return chromium


def test_report_html_is_self_contained(report):
    out, result = report
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<figure") == len(result["figures"])
    assert page.count('src="data:image/png;base64,') == len(result["figures"])
    assert 'src="plots/' not in page and "http://" not in page and "https://" not in page
    # the verdict comes first, the floor row is marked, numbers link to their plots
    assert page.index('id="verdict"') < page.index('id="w1-scores"') < page.index('id="figures"')
    assert '<tr class="floor">' in page and 'href="#fig-n-hits"' in page
    verdict = page[page.index('<section class="verdict">') : page.index("</section>")]
    assert "Ranked by SPEC 5 high-level AUC" in verdict and "W1 above the floor" in verdict
    # the shifted, 5 % hotter candidate is the one above the floor in E_vis/E_inc and m1 X
    w1_line = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("- W1 "))
    assert "model-b on " in w1_line and "E_vis/E_inc" in w1_line.split("model-b on ")[1]


#: What the browser test does in Chromium, run in a fresh Python process (no state of other
#: tests, such as an event loop left behind, can reach Playwright's sync API): prints JSON.
_BROWSER_SCRIPT = """
import json, sys
from playwright.sync_api import sync_playwright
page_file, chromium, shot = sys.argv[1:4]
flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
order = "Array.from(document.querySelectorAll('table')[0].tBodies[0].rows).map(r => r.cells[0].textContent)"
messages, requests = [], []
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=flags, timeout=180_000)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(180_000)
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file)
        page.wait_for_load_state("load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        page.click("table th:nth-child(3)")
        up = page.evaluate(order)
        page.click("table th:nth-child(3)")
        down = page.evaluate(order)
        page.screenshot(path=shot, full_page=True)
        height = page.evaluate("document.body.scrollHeight")
    finally:
        browser.close()
print(json.dumps({"images": images, "messages": messages, "requests": requests, "up": up, "down": down,
                  "height": height}))
"""


def test_report_html_opens_in_headless_chromium(report, tmp_path):
    """As a user opens it: every figure decoded and shown, no console error, a page of
    plausible size, and a click on a header (E_vis/E_inc: the shifted candidate is far off)
    sorts the table both ways with the floor kept first."""
    import subprocess
    import sys

    chromium = _need_browser()
    out, result = report
    moved = tmp_path / "mailed.html"  # a page that was mailed: nothing beside it
    moved.write_bytes((out / "report.html").read_bytes())
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [sys.executable, "-c", _BROWSER_SCRIPT, moved.as_uri(), chromium, str(shot)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    images, messages, requests = seen["images"], seen["messages"], seen["requests"]
    up, down, height = seen["up"], seen["down"], seen["height"]
    assert sorted(alt for alt, *_ in images) == sorted(result["figures"])
    assert all(done and w > 100 and h > 100 for _, done, w, h in images), images
    assert not [m for m in messages if m.startswith(("error", "pageerror"))], messages
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert up[0] == down[0] == "geant4 vs itself (floor)" and up[1:] == down[:0:-1] == ["model-a", "model-b"]
    assert height > 2000 and shot.stat().st_size > 50_000
