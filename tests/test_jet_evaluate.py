"""Jet evaluation (`caloforge evaluate` on jet files): metrics, report, floor, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from caloforge.evaluate import EvaluationConfig, EvaluationError, evaluate
from caloforge.io import write_showers
from caloforge.jets import metrics as jm
from caloforge.jets.evaluate import _open
from caloforge.jets.io import JetFileError, write_jets
from conftest import cli_run, random_points
from test_jet_observables import toy_jets

pytest.importorskip("energyflow")

FAST = EvaluationConfig(n_draws=3, classifier_splits=2, classifier_epochs=2, plots=False)


@pytest.fixture(scope="module")
def jet_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jets")
    paths = {"ref": d / "t.h5", "same": d / "same.h5", "wide": d / "wide.h5", "showers": d / "showers.h5"}
    write_jets(paths["ref"], toy_jets(600, 16, seed=1), generator="pythia8+fastjet")
    write_jets(paths["same"], toy_jets(300, 16, seed=2), generator="epic-fm")
    write_jets(paths["wide"], toy_jets(300, 16, seed=3, eta_scale=1.5), generator="epic-gan")
    write_showers(paths["showers"], random_points(20, 10), generator="geant4")
    return paths


@pytest.fixture(scope="module")
def report(jet_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("jet_report")
    result = evaluate(jet_files["ref"], [jet_files["same"], jet_files["wide"]], out, FAST)
    return out, result


def test_report_files_floor_row_and_units(report):
    out, result = report
    assert result["kind"] == "jets"
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    assert not (out / "plots").exists()
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_per_sample"] == 300 and data["batch_size"] == 150 and data["n_batches"] == 3
    assert [c["label"] for c in data["candidates"]] == ["epic-fm", "epic-gan"]
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| sample | W1m [10⁻³] | W1p [10⁻³] | W1efp [10⁻⁵] | FPD [10⁻⁴] | KPD [10⁻⁴]")
    assert "KL τ32 [10⁻³] | classifier AUC |" in table[0]
    assert table[1].startswith("| Pythia vs Pythia (floor) |")
    assert table[2].startswith("| epic-fm |") and table[3].startswith("| epic-gan |")
    for entry in (data["floor"], *data["candidates"]):
        for key in ("w1m", "w1p", "w1efp", "fpd", "kpd", "kl_mass", "kl_ptrel", "kl_tau21", "kl_tau32"):
            assert len(entry[key]) == 2 and np.isfinite(entry[key]).all(), key
        assert 0.0 <= entry["classifier_auc"][0] <= 1.0


def test_same_distribution_near_the_floor_distorted_far_above(report):
    _, result = report
    floor, (same, wide) = result["floor"], result["candidates"]
    assert same["w1m"][0] < 3 * floor["w1m"][0] + 2.0
    assert wide["w1m"][0] > 3 * same["w1m"][0]
    assert wide["w1p_etarel"][0] > 3 * same["w1p_etarel"][0]
    assert wide["w1efp"][0] > 2 * same["w1efp"][0]
    assert wide["kl_mass"][0] > 2 * same["kl_mass"][0]
    assert wide["fpd"][0] > same["fpd"][0]
    assert wide["classifier_auc"][0] > same["classifier_auc"][0] + 0.1


def test_mixed_jet_and_shower_files_are_refused(jet_files, tmp_path):
    with pytest.raises(EvaluationError, match="is not a jet file but the reference"):
        evaluate(jet_files["ref"], [jet_files["showers"]], tmp_path / "o1", FAST)
    with pytest.raises(EvaluationError, match="is a jet file but the reference"):
        evaluate(jet_files["showers"], [jet_files["same"]], tmp_path / "o2", FAST)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate(jet_files["ref"], [tmp_path / "missing.h5"], tmp_path / "o3", FAST)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_existing_report_is_refused_and_kept(jet_files, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "report.md").write_text("an old report\n")
    with pytest.raises(FileExistsError, match="already holds a report"):
        evaluate(jet_files["ref"], [jet_files["same"]], out, FAST)
    assert (out / "report.md").read_text() == "an old report\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_particle_counts_and_jet_types(jet_files, tmp_path):
    write_jets(tmp_path / "big.h5", toy_jets(30, 25, seed=4), generator="x")
    with pytest.raises(JetFileError, match=r"holds 25 particles per jet, the reference .* only 16"):
        _open(jet_files["ref"], [tmp_path / "big.h5"], [])
    write_jets(tmp_path / "g.h5", toy_jets(30, 10, seed=5, jet_type="g"), generator="x")
    notes: list[str] = []
    _, n_particles = _open(jet_files["ref"], [tmp_path / "g.h5"], notes)
    assert n_particles == 10
    assert any("leading 10 are used" in n for n in notes) and any("type 'g'" in n for n in notes)


def test_batches_kl_and_w1_helpers():
    batches = jm.draw_batches(100, 80, 20, 4, seed=1)
    assert len(batches) == 4 and all(len(a) == len(b) == 20 for a, b in batches)
    assert len(np.unique(np.concatenate([a for a, _ in batches]))) == 80  # disjoint where they fit
    assert jm.draw_batches(100, 80, 20, 4, seed=1)[0][0].tolist() == batches[0][0].tolist()
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    assert jm.kl_divergence(x, rng.normal(size=5000)) < 0.02
    assert jm.kl_divergence(x, rng.normal(0.5, 1.0, 5000)) > 0.08
    jets = toy_jets(60, 10, seed=6)
    w1p = jm.w1p(jets, jets, num_eval_samples=60, num_batches=2)
    assert set(w1p) == {"w1p", "etarel", "phirel", "ptrel"}
    assert w1p["w1p"][0] == pytest.approx(0.0, abs=1e-12)  # the same jets in every batch
    with pytest.raises(ValueError, match="num_eval_samples"):
        jm.draw_batches(10, 10, 11, 2)


def test_cli_prints_the_jet_table_with_plots(jet_files, monkeypatch, capsys, tmp_path):
    write_jets(tmp_path / "small_ref.h5", toy_jets(120, 10, seed=7), generator="pythia8+fastjet")
    write_jets(tmp_path / "g.h5", toy_jets(60, 10, seed=8, jet_type="g"), generator="epic-jedi")
    out = tmp_path / "rep"
    code, stdout, stderr = cli_run(
        monkeypatch, capsys, "evaluate", tmp_path / "small_ref.h5", tmp_path / "g.h5", "--out", out,
        "--draws", "2", "--splits", "2", "--epochs", "1",
    )  # fmt: skip
    assert code == 0, stderr
    assert "Jet metrics" in stdout and "Pythia vs Pythia (floor)" in stdout and "epic-jedi" in stdout
    assert "W1m [10⁻³]" in stdout and "note:" in stdout and "type 'g'" in stdout
    assert f"report: {out / 'report.md'}" in stdout
    for name in ("jet_mass", "constituent_ptrel", "tau21", "tau32", "multiplicity", "efp"):
        assert (out / "plots" / f"{name}.png").is_file() and (out / "plots" / f"{name}.pdf").is_file()
    assert "![jet_mass](plots/jet_mass.png)" in (out / "report.md").read_text()
    code, _, stderr = cli_run(
        monkeypatch,
        capsys,
        "evaluate",
        tmp_path / "small_ref.h5",
        jet_files["showers"],
        "--out",
        tmp_path / "x",
    )
    assert code != 0 and "is not a jet file" in stderr
