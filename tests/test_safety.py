"""Nothing lost, nothing silently wrong: user detectors, outputs that are inputs, locks,
non-finite input, kills and signals (issue 17's cases, each as a small test)."""

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from caloforge.detector import DetectorError, get_detector
from caloforge.io import PointShowers, ShowerFileError, VoxelShowers, open_showers, write_showers
from caloforge.pieces import pieces_dir
from caloforge.safety import OutputBusyError, check_outputs, lock_path, output_lock
from conftest import cli_run, random_points

needs_geant4 = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)
CLI = [sys.executable, "-m", "caloforge.cli"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.h5"
    write_showers(path, random_points(20, 30, seed=3), generator="unit-test", seed=3)
    return path


def _points_file(path: Path, energy=None, points=None) -> Path:
    showers = random_points(5, 8, seed=1)
    if energy is not None:
        showers.energy[:] = energy
    if points is not None:
        showers.points[2, 0] = points
    write_showers(path, showers)
    return path


# --- 1 and 8: user detectors drive the simulation and are validated -----------------------


def _my_detector(tmp_path, monkeypatch, capsys, **changes) -> Path:
    template = tmp_path / f"d{len(list(tmp_path.glob('*.yaml')))}.yaml"
    assert cli_run(monkeypatch, capsys, "detector", "ild-ecal", "--save", template)[0] == 0
    data = yaml.safe_load(template.read_text())
    for key, value in changes.items():
        target = data["readout"] if key.startswith("readout.") else data
        target[key.removeprefix("readout.")] = value
    template.write_text(yaml.safe_dump(data))
    return template


def test_detector_file_named_like_a_builtin_but_different_is_refused(tmp_path, monkeypatch, capsys):
    path = _my_detector(tmp_path, monkeypatch, capsys, absorber_material="G4_Pb")
    with pytest.raises(DetectorError, match=r"name of a built-in detector.*absorber_material"):
        get_detector(path)
    same = _my_detector(tmp_path, monkeypatch, capsys)
    assert get_detector(same) == get_detector("ild-ecal")  # the unchanged template is fine


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"active_thickness_mm": float("nan")}, "finite"),
        ({"half_size_mm": float("inf")}, "finite"),
        ({"absorber_material": "G4_UNOBTAINIUM"}, "unknown material"),
        ({"gun_distance_mm": -5.0}, "gun_distance_mm' must not be negative"),
        ({"readout.n_cells": 99.5}, "whole number"),
    ],
)
def test_detector_values_are_validated(tmp_path, monkeypatch, capsys, change, message):
    path = _my_detector(tmp_path, monkeypatch, capsys, name="mine", **change)
    with pytest.raises(DetectorError, match=message):
        get_detector(path)


def test_unreadable_detector_files_are_one_line(tmp_path, sample):
    with pytest.raises(DetectorError, match="is not a text"):
        get_detector(sample.rename(tmp_path / "binary.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\nreadout: {")
    with pytest.raises(DetectorError, match="is not valid yaml") as caught:
        get_detector(broken)
    assert "\n" not in str(caught.value)


@needs_geant4
def test_simulate_uses_and_records_a_user_detector(tmp_path, monkeypatch, capsys):
    mine = _my_detector(
        tmp_path,
        monkeypatch,
        capsys,
        name="my-ecal",
        absorber_material="G4_Pb",
        threshold_mev=0.2,
        **{"readout.cell_size_mm": 10.0, "readout.n_cells": 51},
    )
    common = ["simulate", "-n", "2", "--energy", "5", "--seed", "3"]
    assert cli_run(monkeypatch, capsys, *common, "--detector", mine, "--out", tmp_path / "mine.h5")[0] == 0
    assert cli_run(monkeypatch, capsys, *common, "--out", tmp_path / "ild.h5")[0] == 0
    with open_showers(tmp_path / "mine.h5") as f, open_showers(tmp_path / "ild.h5") as g:
        assert f.detector.name == "my-ecal" and f.detector.absorber_material == "G4_Pb"
        assert f.detector.readout.cell_size_mm == 10.0 and f.detector.threshold_mev == 0.2
        assert f.read().points.shape != g.read().points.shape or not np.array_equal(
            f.read().points, g.read().points
        )
    # Resuming with the built-in geometry under the same name is refused.
    code, _, err = cli_run(monkeypatch, capsys, *common, "-n", "3", "--out", tmp_path / "mine.h5", "--resume")
    assert code == 2 and "cannot resume" in err


# --- 3: outputs never overwrite inputs; existing files need --overwrite ----------------------


def test_outputs_that_are_inputs_are_refused(tmp_path, monkeypatch, capsys, sample):
    before = digest(sample)
    cases = [
        ["observables", sample, "--json", sample],
        ["observables", sample, "--json", sample, "--overwrite"],
        ["detector", "ild-ecal", "--save", sample],
        ["generate", "-n", "3", "--energies-file", sample, "--out", sample, "--overwrite"],
        ["simulate", "-n", "1", "--out", tmp_path / "v.h5", "--voxel-out", tmp_path / "v.h5"],
        ["calibrate", "--model", "default", "--data", sample, "--out", sample, "--overwrite"],
    ]
    for args in cases:
        code, _, err = cli_run(monkeypatch, capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
    assert digest(sample) == before
    assert not (tmp_path / "v.h5").exists()


def test_export_never_replaces_its_own_checkpoint(tmp_path, monkeypatch, capsys):
    from caloforge.models.registry import resolve_model

    ckpt = tmp_path / "cm.pt"
    shutil.copy(resolve_model("default"), ckpt)
    before = digest(ckpt)
    code, _, err = cli_run(
        monkeypatch, capsys, "export", "--model", ckpt, "--out", ckpt, "--overwrite", "-f", "torchscript"
    )
    assert code == 2 and "is also the --model" in err and digest(ckpt) == before


def test_existing_outputs_need_overwrite(tmp_path, monkeypatch, capsys, sample):
    json_out = tmp_path / "obs.json"
    json_out.write_text("keep me")
    code, _, err = cli_run(monkeypatch, capsys, "observables", sample, "--json", json_out)
    assert code == 2 and "--overwrite" in err and json_out.read_text() == "keep me"
    assert cli_run(monkeypatch, capsys, "observables", sample, "--json", json_out, "--overwrite")[0] == 0
    saved = tmp_path / "d.yaml"
    saved.write_text("keep me")
    assert cli_run(monkeypatch, capsys, "detector", "ild-ecal", "--save", saved)[0] == 2
    assert saved.read_text() == "keep me"


def test_output_that_is_a_directory_is_a_user_error(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = cli_run(monkeypatch, capsys, "generate", "-n", "2", "--out", folder, "--overwrite")
    assert code == 2 and "directory" in err
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["folder"]


# --- 4 and 7: non-finite and out-of-physics values, option ranges -----------------------------


@pytest.mark.parametrize(
    ("energy", "points", "message"),
    [
        (float("nan"), None, "dataset 'energy', shower 0: incident energy nan"),
        (0.0, None, "incident energy 0 GeV"),
        (-5.0, None, "incident energy -5 GeV"),
        (1e30, None, "incident energy 1e\\+30 GeV"),
        (None, [np.inf, 0, 3.5, 1.0], "dataset 'events', shower 2: holds a non-finite value"),
        (None, [1.0, np.nan, 3.5, 1.0], "shower 2: holds a non-finite value"),
        (None, [1.0, 1.0, 3.5, -1.0], "shower 2: holds a negative energy deposit"),
        (None, [1e30, 1.0, 3.5, 1.0], "shower 2: holds a non-finite value .* or one beyond 1e\\+08"),
    ],
)
def test_bad_values_are_refused_at_read_time(tmp_path, energy, points, message):
    path = _points_file(tmp_path / "bad.h5", energy, points)
    with open_showers(path) as f, pytest.raises(ShowerFileError, match=message) as caught:
        f.read()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_bad_voxels_are_refused(tmp_path):
    det = get_detector("calochallenge-ds2")
    voxels = np.zeros((3, det.n_channels), np.float32)
    voxels[1, 7] = np.nan
    write_showers(tmp_path / "v.h5", VoxelShowers(np.full(3, 10.0), voxels), det)
    with open_showers(tmp_path / "v.h5") as f, pytest.raises(ShowerFileError, match="'showers', shower 1"):
        f.read()


def test_training_and_generation_refuse_bad_files(tmp_path, monkeypatch, capsys):
    bad = _points_file(tmp_path / "bad.h5", energy=float("nan"))
    for args in (
        ["train", "caloclouds2", "--data", bad, "--out", tmp_path / "run", "--preset", "smoke"],
        ["generate", "--energies-file", bad, "--out", tmp_path / "g.h5"],
        ["observables", bad],
    ):
        code, _, err = cli_run(monkeypatch, capsys, *args)
        assert code == 2 and "not a finite energy" in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "g.h5").exists()
    assert not (tmp_path / "run").exists()  # a run refused on its data leaves no directory
    code, _, err = cli_run(
        monkeypatch, capsys, "train", "caloclouds2", "--data", bad, "--out", bad, "--preset", "smoke"
    )
    assert code == 2 and "is a file: give a directory" in err


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--energy", "10:nan"],
        ["generate", "--energy", "10:inf"],
        ["generate", "--energy-log", "1:nan"],
        ["simulate", "--energy", "nan"],
        ["generate", "--seed", "99999999999999999999999"],
        ["simulate", "--seed", "-1"],
        ["bench", "--energies", "-5"],
        ["bench", "--quick", "--energies", "-5"],
        ["bench", "--threads", "0"],
        ["export", "--max-points", "100000000", "-f", "torchscript"],
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args):
    code, _, err = cli_run(monkeypatch, capsys, *args, "--out", tmp_path / "x.out")
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "x.out").exists()


def test_corrupt_detector_attribute_names_the_file(tmp_path, sample):
    with h5py.File(sample, "r+") as f:
        f.attrs["detector_json"] = "{not json"
    with pytest.raises(ShowerFileError, match=f"'{sample}'.*detector_json"):
        open_showers(sample)


def test_energies_file_sizes(tmp_path, monkeypatch, capsys, sample):
    empty = tmp_path / "empty.h5"
    write_showers(empty, PointShowers(np.zeros(0), np.zeros((0, 1, 4))))
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "--energies-file", empty, "--out", tmp_path / "a.h5"
    )
    assert code == 2 and "holds no showers" in err
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "--energies-file", sample, "-n", "21", "--out", tmp_path / "a.h5"
    )
    assert code == 2 and "asks for more showers" in err and "(20)" in err
    code, _, _ = cli_run(
        monkeypatch, capsys, "generate", "--energies-file", sample, "--out", tmp_path / "a.h5"
    )
    assert code == 0
    with open_showers(tmp_path / "a.h5") as f:
        assert len(f) == 20  # every shower of the file, not the default 100


# --- 5: one writer per output ---------------------------------------------------------------


def test_second_writer_refused_while_first_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "g.h5"
    with output_lock(out):
        code, _, err = cli_run(monkeypatch, capsys, "generate", "-n", "2", "--out", out)
        assert code == 2 and "being written by another caloforge run" in err and f"pid {os.getpid()}" in err
    assert not lock_path(out).exists() and not out.exists()
    assert cli_run(monkeypatch, capsys, "generate", "-n", "2", "--out", out)[0] == 0


def test_lock_of_a_killed_run_is_not_in_the_way(tmp_path):
    out = tmp_path / "g.h5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from caloforge.safety import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
        with output_lock(out):
            pass
    holder.kill()
    holder.wait()
    assert lock_path(out).exists()  # left behind by kill -9 ...
    with output_lock(out):  # ... and yet free
        pass


def test_check_outputs_sees_links(tmp_path, sample):
    link = tmp_path / "link.h5"
    link.symlink_to(sample)
    with pytest.raises(ValueError, match="is also the input"):
        check_outputs({"--out": link}, {"input": sample})


# --- 2 and 6: interrupts and kills ------------------------------------------------------------


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@needs_geant4
def test_early_interrupt_of_simulate_keeps_the_old_file(tmp_path):
    out = tmp_path / "s.h5"
    args = [*CLI, "simulate", "-n", "2", "--energy", "5", "--seed", "1", "--out", str(out)]
    subprocess.run(args, check=True, capture_output=True)
    before = digest(out)
    proc = subprocess.Popen(
        [*args[:-4], "-n", "400", "--overwrite", "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.0)  # before any block is done
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "nothing" not in err, err
    assert "Traceback" not in err
    assert digest(out) == before


@needs_geant4
def test_kill_9_of_simulate_loses_at_most_the_blocks_in_flight(tmp_path):
    out = tmp_path / "s.h5"
    args = [
        *CLI,
        "simulate",
        "-n",
        "200",
        "--energy",
        "5",
        "--seed",
        "5",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pieces = pieces_dir(out)
    _wait_for(lambda: pieces.is_dir() and len(list(pieces.glob("piece-*.npz"))) >= 2)
    workers = _children(proc.pid)
    proc.kill()
    proc.wait()
    _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), timeout=10)
    assert not out.exists()
    kept = len(list(pieces.glob("piece-*.npz")))
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, check=True)
    assert f"wrote {200 - 10 * kept} showers (200 in total)" in " ".join(resumed.stdout.split())
    assert not pieces.exists() and not list(tmp_path.glob(".s.h5.*partial*"))
    fresh = tmp_path / "fresh.h5"
    subprocess.run([*args[:-2], "--out", str(fresh)], check=True, capture_output=True)
    with h5py.File(out) as a, h5py.File(fresh) as b:
        width = min(a["events"].shape[2], b["events"].shape[2])
        assert np.array_equal(a["events"][..., :width], b["events"][..., :width])


def test_sigterm_and_double_ctrl_c_of_generate(tmp_path):
    out = tmp_path / "g.h5"
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [*CLI, "generate", "-n", "100000", "--batch-size", "8", "--workers", "2", "--out", str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda p=proc: len(_children(p.pid)) >= 2 and list(tmp_path.glob(".g.h5.*partial*")))
        workers = _children(proc.pid)
        proc.send_signal(sig)
        if sig == signal.SIGINT:
            time.sleep(0.05)
            proc.send_signal(sig)  # a second Ctrl-C while stopping
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        assert not out.exists() and not list(tmp_path.glob(".g.h5.*"))
        _wait_for(lambda w=workers: not any(Path(f"/proc/{p}").exists() for p in w), timeout=10)


def test_workers_of_a_killed_generate_do_not_outlive_it(tmp_path):
    proc = subprocess.Popen(
        [*CLI, "generate", "-n", "100000", "--workers", "2", "--out", str(tmp_path / "g.h5")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(lambda: len(_children(proc.pid)) >= 2)
    workers = _children(proc.pid)
    proc.kill()
    proc.wait()
    _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), timeout=10)
