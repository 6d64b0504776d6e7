"""The command line: summaries and one-line errors with non-zero exit codes."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from caloforge.io import write_showers
from conftest import cli_run as run
from conftest import random_points


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.h5"
    write_showers(path, random_points(30, 50, seed=1), generator="unit-test", seed=1)
    return path


def test_info_lists_detectors_and_summarises_file(monkeypatch, capsys, sample):
    code, out, _ = run(monkeypatch, capsys, "info", str(sample))
    assert code == 0
    assert "ild-ecal" in out and "calochallenge-ds2" in out
    assert "30" in out and "unit-test" in out and "points/shower" in out


def test_observables_summary_and_json(monkeypatch, capsys, sample, tmp_path):
    out_json = tmp_path / "obs.json"
    code, out, _ = run(monkeypatch, capsys, "observables", str(sample), "--json", str(out_json))
    assert code == 0 and "N_hits" in out and "E_long_1" in out
    data = json.loads(out_json.read_text())
    assert data["n_showers"] == 30 and len(data["features"]) == 25


def test_detector_command_saves_template(monkeypatch, capsys, tmp_path):
    target = tmp_path / "mine.yaml"
    code, out, _ = run(monkeypatch, capsys, "detector", "ild-ecal", "--save", str(target))
    assert code == 0 and "198.705" in out
    code, out, _ = run(monkeypatch, capsys, "detector", str(target))
    assert code == 0 and "ild-ecal" in out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not hdf5"), "not a readable HDF5"),
        (lambda p: h5py.File(p, "w").create_dataset("events", data=np.zeros((2, 3, 3))), "neither"),
    ],
)
@pytest.mark.parametrize("command", ["info", "observables"])
def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path, make, message, command):
    path = tmp_path / "input.h5"
    make(path)
    code, _, err = run(monkeypatch, capsys, command, str(path))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_shapes_error(monkeypatch, capsys, tmp_path):
    path = tmp_path / "shape.h5"
    with h5py.File(path, "w") as h5:
        h5["events"] = np.zeros((2, 4, 3))
        h5["energy"] = np.zeros((5, 1))
    code, _, err = run(monkeypatch, capsys, "info", str(path))
    assert code == 2 and "to match 2 showers" in err


def test_unknown_detector(monkeypatch, capsys):
    code, _, err = run(monkeypatch, capsys, "detector", "atlas")
    assert code == 2 and "unknown detector 'atlas'" in err


def test_entry_point_and_debug_traceback(tmp_path):
    missing = str(tmp_path / "missing.h5")
    plain = subprocess.run(
        [sys.executable, "-m", "caloforge.cli", "info", missing], capture_output=True, text=True
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-m", "caloforge.cli", "--debug", "info", missing], capture_output=True, text=True
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    version = subprocess.run(
        [sys.executable, "-m", "caloforge.cli", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and "caloforge" in version.stdout


def test_progress_in_a_log_is_a_line_every_few_seconds(capsys):
    from caloforge.cliutils import LogProgress

    with LogProgress(every=0.0) as log:  # every update is "a few seconds" later
        task = log.add_task("geant4", total=200, rate="")
        log.update(task, completed=50, rate="3.1 showers/s")
        log.update(task, completed=200)
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines[0].startswith("geant4: 50/200 (25 %), ") and "ETA" in lines[0] and "3.1 showers/s" in lines[0]
    )
    assert lines[-1].startswith("geant4: 200/200 (100 %)")
    with LogProgress(every=60.0) as log:  # a quick task prints nothing
        task = log.add_task("observables", total=10, rate="")
        log.advance(task, 10)
    assert capsys.readouterr().err == ""
