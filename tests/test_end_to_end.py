"""The whole pipeline through the command line: simulate → train → distil → generate → evaluate."""

import importlib.util
import json
import shutil

import h5py
import pytest

from caloforge.io import open_showers
from conftest import run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)


caloforge = run_cli


def test_simulate_train_generate_evaluate(monkeypatch, tmp_path):
    sim, run, gen, report = tmp_path / "g4.h5", tmp_path / "run", tmp_path / "gen.h5", tmp_path / "report"
    caloforge(
        monkeypatch, "simulate", "-n", 60, "--energy", "10:20", "--seed", 3, "--workers", 2, "--out", sim
    )
    caloforge(
        monkeypatch, "train", "caloclouds2", "--data", sim, "--out", run, "--preset", "smoke", "--threads", 1
    )
    cc1, gen_cc1 = tmp_path / "run_cc1", tmp_path / "gen_cc1.h5"
    caloforge(monkeypatch, "train", "caloclouds1", "--data", sim, "--out", cc1, "--flow-from", run,
              "--preset", "smoke", "--steps", 10, "--threads", 1)  # fmt: skip
    caloforge(
        monkeypatch, "generate", "--model", cc1, "-n", 60, "--energy", "10:20", "--seed", 4, "--out", gen_cc1
    )
    cm, gen_cm = tmp_path / "run_cm", tmp_path / "gen_cm.h5"
    caloforge(monkeypatch, "distill", "--teacher", run, "--data", sim, "--out", cm, "--preset", "smoke")
    caloforge(monkeypatch, "calibrate", "--model", cm, "--data", sim, "--showers", 8)
    options = {gen: [], gen_cm: ["--compression", "lzf", "--precision", "float32"]}
    for model, out in ((run, gen), (cm, gen_cm)):
        caloforge(
            monkeypatch,
            "generate",
            "--model",
            model,
            "-n",
            60,
            "--energy",
            "10:20",
            "--seed",
            4,
            "--out",
            out,
            *options[out],
        )
    with open_showers(gen_cm) as f:
        assert f.attrs["sampler"] == "consistency" and f.attrs["network_calls"] == 1
        assert f.attrs["precision"] == "float32"
    with h5py.File(gen_cm) as f, h5py.File(gen) as g:
        assert f["events"].compression == "lzf" and g["events"].compression == "gzip"
    bad = tmp_path / "bad.h5"
    caloforge(monkeypatch, "generate", "--model", cm, "--compression", "zip", "--out", bad, code=2)
    assert not bad.exists()
    with open_showers(gen) as f:
        assert len(f) == 60 and f.generator == "caloclouds2" and f.detector.name == "ild-ecal"
        showers = f.read()
    assert showers.n_points.min() >= 1 and (showers.points[..., 3] >= 0).all()
    caloforge(
        monkeypatch, "evaluate", sim, gen, gen_cm, gen_cc1, "--out", report, "--draws", 2, "--splits", 2,
        "--epochs", 2,
    )  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())
    assert len(metrics["candidates"]) == 3
    for candidate in metrics["candidates"]:
        assert candidate["classifier_auc"] is not None
    assert [c["generator"] for c in metrics["candidates"]] == ["caloclouds2", "caloclouds2-cm", "caloclouds1"]
    assert (report / "report.md").exists() and (report / "plots" / "n_hits.png").exists()
