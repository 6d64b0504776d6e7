"""caloforge bench in its quick mode: every row is there, speed-ups are against Geant4 of the same run."""

import dataclasses
import importlib.util
import json
import os
import shutil
import sys

import pytest

from caloforge import cli
from caloforge.bench import BenchConfig, default_models, run_bench, to_markdown, write_results
from caloforge.models.caloclouds2 import train
from caloforge.models.caloclouds2.distillation import DistillConfig, distill
from test_caloclouds2 import TINY, data_file  # noqa: F401  (fixture)

needs_geant4 = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)


@pytest.fixture(scope="module")
def models(data_file, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("bench_models")
    teacher = train(TINY, data_file, tmp / "teacher").checkpoint
    student = distill(teacher, data_file, tmp / "cm", DistillConfig.from_preset("smoke", steps=4)).checkpoint
    return default_models([f"diffusion={teacher}", f"cm={student}"], onnx=True, workdir=tmp)


@needs_geant4
def test_quick_bench_has_every_row(models, tmp_path):
    config = dataclasses.replace(BenchConfig.quick(), threads=(1, 2))
    result = run_bench(models, config)
    rows = result["rows"]
    g4 = [r for r in rows if r["generator"] == "Geant4"]
    assert sorted((r["energy_gev"], r["threads"]) for r in g4) == [(10.0, 1), (10.0, 2), (90.0, 1), (90.0, 2)]
    for spec in models:
        mine = [r for r in rows if r["generator"] == spec.label]
        assert {(r["energy_gev"], r["batch_size"], r["threads"]) for r in mine} == {
            (e, b, t) for e in (10.0, 90.0) for b in (1, 2) for t in (1, 2)
        }
        for r in mine:
            ref = next(
                g["ms_per_shower"]
                for g in g4
                if (g["energy_gev"], g["threads"]) == (r["energy_gev"], r["threads"])
            )
            assert r["speedup"] == pytest.approx(ref / r["ms_per_shower"])
            assert r["peak_rss_mb"] > 10 and r["ms_per_shower"] > 0
    assert {r["network_calls"] for r in rows if r["generator"] == "diffusion"} == {3}
    assert {r["network_calls"] for r in rows if r["generator"].startswith("cm")} == {1}
    assert [m.label for m in models] == ["diffusion", "cm", "cm ONNX Runtime"]
    resolved = {r["precision"] for r in rows if r["generator"] == "cm"}
    assert resolved <= {"float32", "bfloat16"} and len(resolved) == 1
    json_path, md_path = write_results(result, tmp_path)
    assert json.loads(json_path.read_text())["rows"] == rows
    table = md_path.read_text()
    assert table == to_markdown(result) and table.count("\n| ") == len(rows) + 1


@needs_geant4
def test_quick_bench_times_every_family_against_its_own_geant4(monkeypatch, tmp_path):
    import gaussian_family
    from caloforge.models import registry

    monkeypatch.setenv("CALOFORGE_FAMILIES", "gaussian_family:FAMILY")
    registry.reload()
    try:
        toy = gaussian_family.save_model(tmp_path / "gaussian.pt")
        specs = default_models(["dream=calodream", f"toy={toy}"], onnx=False)
        config = dataclasses.replace(BenchConfig.quick(), threads=(1,), batch_sizes=(2,))
        rows = run_bench(specs, config)["rows"]
    finally:
        registry.reload()
    g4 = {(r["detector"], r["particle"], r["energy_gev"]) for r in rows if r["generator"] == "Geant4"}
    assert g4 == {
        (d, p, e) for d, p in (("calochallenge-ds2", "e-"), ("ild-ecal", "gamma")) for e in (10.0, 90.0)
    }
    for label, detector in (("dream", "calochallenge-ds2"), ("toy", "ild-ecal")):
        mine = [r for r in rows if r["generator"] == label]
        assert {r["energy_gev"] for r in mine} == {10.0, 90.0}
        assert all(r["detector"] == detector and r["speedup"] > 0 for r in mine)
    assert {r["precision"] for r in rows if r["generator"] == "dream"} == {"float32"}


def test_bench_cli_errors(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["caloforge", "bench", "--energies", "ten", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2 and "numbers separated by commas" in capsys.readouterr().err


def test_default_models_one_row_per_precision_and_exports_the_cm(models, tmp_path):
    diffusion, cm, _ = models
    assert (diffusion.precision, cm.precision) == ("auto", "auto")
    entries = [f"d={diffusion.path}", f"c={cm.path}"]
    specs = default_models(entries, onnx=True, workdir=tmp_path, precisions=["float32", "bfloat16"])
    assert [(s.label, s.precision) for s in specs] == [
        ("d float32", "float32"),
        ("c float32", "float32"),
        ("d bfloat16", "bfloat16"),
        ("c bfloat16", "bfloat16"),
        ("c ONNX Runtime", "float32"),
    ]
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        default_models(entries, onnx=False, precisions=["fp8"])


@needs_geant4
def test_quick_bench_full_chain_rows(tmp_path):
    """Full Geant4 and Geant4 with the default model as fast simulation, same events: one row
    each per energy and for di-photons, the fast row carrying the ratio of the two."""
    config = dataclasses.replace(BenchConfig.quick(), threads=(1,), energies=(10.0,))
    result = run_bench([], config, geant4=False, fast_sim="default")
    rows = result["rows"]
    assert [(r["generator"], r["particle"]) for r in rows] == [
        ("Geant4 full chain", "gamma (ms/event)"),
        ("Geant4 + default fast sim", "gamma (ms/event)"),
        ("Geant4 full chain", "gamma pair 25 mm (ms/event)"),
        ("Geant4 + default fast sim", "gamma pair 25 mm (ms/event)"),
    ]
    for full, fast in (rows[0:2], rows[2:4]):
        assert full["speedup"] is None
        assert fast["speedup"] == pytest.approx(full["ms_per_shower"] / fast["ms_per_shower"])
    assert "Geant4 + default fast sim" in to_markdown(result)


@pytest.mark.machine_load
def test_loaded_machine_rows_compare_the_default_threads_with_one(models):
    """One busy process beside the model: rows with the default threads (chosen as generate
    chooses them), 1 thread and all cores, not compared with Geant4, and the sentence that
    compares the default with --threads 1."""
    from caloforge.bench import LOADED

    config = dataclasses.replace(
        BenchConfig.quick(), threads=(1,), energies=(10.0,), batch_sizes=(2,), loaded=True
    )
    result = run_bench([models[1]], config, geant4=False)
    loaded = [r for r in result["rows"] if r["load"] == LOADED]
    assert loaded[0]["default_threads"] and len(loaded) >= 2
    assert all(r["speedup"] is None and r["generator"] == "cm" for r in loaded)
    # the busy process keeps one core busy: the default leaves (at least) that core to it
    assert loaded[0]["threads"] <= max(1, (os.cpu_count() or 1) - 1)
    (line,) = [line for line in to_markdown(result).splitlines() if line.startswith("- Loaded machine")]
    assert "the time with --threads 1" in line and "(default)" in to_markdown(result)


def test_default_threads_leave_busy_cpus_alone(monkeypatch):
    from caloforge import hardware

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 4)
    assert [hardware.default_threads(busy)[0] for busy in (0.0, 0.4, 0.6, 1.0, 2.2, 3.9, 8.0)] == [
        4, 4, 3, 3, 2, 1, 1
    ]  # fmt: skip
    monkeypatch.setattr(hardware, "busy_cpus", lambda: None)
    assert hardware.default_threads() == (4, "all 4 CPUs (their load cannot be read here)")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.default_threads(0.0) == (3, "OMP_NUM_THREADS")


@pytest.mark.machine_load
def test_busy_cpus_sees_a_busy_process():
    from caloforge.bench import busy_process
    from caloforge.hardware import busy_cpus

    with busy_process():
        busy = busy_cpus(0.3)
    assert busy is None or busy > 0.5  # one spinning process: about one CPU busy (None: no /proc)
