"""Requests refused up front, in one line, before anything is made on disk: option values of
the wrong type, sizes no machine holds, settings checked before a run creates its pieces."""

import numpy as np
import pytest

from caloforge.models.protocol import Option
from conftest import cli_run


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (Option("points_per_call", int, "h", min=1), "abc", "takes a whole number, got 'abc'"),
        (Option("points_per_call", int, "h", min=1), True, "takes a whole number, got True"),
        (Option("points_per_call", int, "h", min=1), 2.5, "takes a whole number, got 2.5"),
        (Option("points_per_call", int, "h", min=1), float("nan"), "takes a whole number, got nan"),
        (Option("points_per_call", int, "h", min=1), 0, "must be at least 1, got 0"),
        (Option("temperature", float, "h"), "abc", "takes a number, got 'abc'"),
        (Option("fast", bool, "h"), "yes", "takes true or false, got 'yes'"),
    ],
)
def test_option_values_of_the_wrong_type_name_the_option(option, value, message):
    with pytest.raises(ValueError, match=f"^--{option.name.replace('_', '-')} {message}"):
        option.convert(value)


def test_whole_floats_and_text_still_convert():
    opt = Option("points_per_call", int, "h", min=1)
    assert opt.convert(4.0) == 4 and opt.convert("12") == 12
    assert Option("fast", bool, "h").convert("TRUE") is True


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "-n", 10**15],
        ["generate", "-n", 2**63 - 1],
        ["simulate", "-n", 10**15],
        ["simulate-jets", "-n", 10**15],
    ],
    ids=["generate", "generate-int64-max", "simulate", "simulate-jets"],
)
def test_a_request_no_memory_holds_is_refused_before_anything_is_made(monkeypatch, capsys, tmp_path, command):
    code, _, err = cli_run(monkeypatch, capsys, *command, "--out", tmp_path / "out.h5")
    assert code == 2, err
    assert "GB of memory" in err and "ask for at most" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_simulate_checks_its_physics_before_making_pieces(monkeypatch, capsys, tmp_path):
    code, _, err = cli_run(
        monkeypatch, capsys, "simulate", "-n", "2", "--physics", "qgsp", "--out", tmp_path / "s.h5"
    )
    assert code == 2 and "unknown physics 'qgsp'" in err
    assert list(tmp_path.iterdir()) == []  # no .s.h5.pieces/ to block the next run


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["generate", "--foo"], "No such option: --foo"),
        (["generate", "-n", "abc", "--out", "x.h5"], "Invalid value for '-n'"),
        (["simulate"], "Missing option '--out'"),
        (["train", "caloinn", "--data", "d.h5"], "Missing option '--out'"),
        (["evaluate"], "Missing argument"),
        (["nosuchcommand"], "No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors_are_one_line(monkeypatch, capsys, args, says):
    code, _, err = cli_run(monkeypatch, capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert "--help)" in lines[0]


def test_a_group_without_a_command_still_shows_its_help(monkeypatch, capsys):
    code, out, _ = cli_run(monkeypatch, capsys, "train")
    assert code == 2 and "train [OPTIONS] COMMAND" in out and "caloinn" in out


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "-n", "4", "--engine", "dask", "--scheduler", "junk"],
        ["simulate", "-n", "2", "--scheduler", "tcp://127.0.0.1:1"],
        ["simulate", "-n", "2", "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1"],
    ],
    ids=["generate-dask-junk", "simulate-local-scheduler", "simulate-dask-unreachable"],
)
def test_an_unreachable_scheduler_leaves_nothing_behind(monkeypatch, capsys, tmp_path, command):
    pytest.importorskip("distributed")
    code, _, err = cli_run(monkeypatch, capsys, *command, "--out", tmp_path / "out.h5")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # no .out.h5.pieces/ to block the next run


# -- pieces of an interrupted run ------------------------------------------------------------


def _store_with_a_piece(tmp_path, values):
    from caloforge.pieces import PieceStore

    out = tmp_path / "out.h5"
    store = PieceStore.open(out, {"seed": 1}, resume=False, overwrite=False)
    store.save(0, 2, {"energy": np.asarray(values, np.float32)})
    return out, store


def test_a_corrupt_manifest_is_refused_and_the_pieces_are_kept(tmp_path):
    from caloforge.io import ShowerFileError
    from caloforge.pieces import PieceStore

    out, store = _store_with_a_piece(tmp_path, [1.0, 2.0])
    (store.directory / "manifest.json").write_text("{not json")
    with pytest.raises(ShowerFileError, match=r"is unreadable .* its pieces are kept"):
        PieceStore.open(out, {"seed": 1}, resume=True, overwrite=False)
    assert len(list(store.directory.glob("piece-*.npz"))) == 1


def test_a_piece_with_non_finite_values_is_refused(tmp_path):
    from caloforge.io import ShowerFileError

    _, store = _store_with_a_piece(tmp_path, [1.0, np.nan])
    with pytest.raises(ShowerFileError, match="non-finite values in energy"):
        store.load(0)


def test_a_stray_file_named_like_a_piece_is_named(tmp_path):
    from caloforge.io import ShowerFileError
    from caloforge.pieces import PieceStore

    out, store = _store_with_a_piece(tmp_path, [1.0, 2.0])
    (store.directory / "piece-abc-xyz.npz").write_bytes(b"")
    with pytest.raises(ShowerFileError, match=r"piece-abc-xyz\.npz' is not a piece this job wrote"):
        PieceStore.open(out, {"seed": 1}, resume=True, overwrite=False)


def test_a_gun_that_misses_the_detector_is_refused(monkeypatch, capsys, tmp_path):
    out = tmp_path / "s.h5"
    code, _, err = cli_run(monkeypatch, capsys, "simulate", "-n", "2", "--gun-offset", "1000,0", "--out", out)
    assert code == 2 and "misses the front face of 'ild-ecal'" in err
    assert list(tmp_path.iterdir()) == []


def test_converting_an_empty_file_is_refused(monkeypatch, capsys, tmp_path):
    from caloforge.io import write_showers
    from conftest import random_points

    empty = tmp_path / "empty.h5"
    write_showers(empty, random_points(1, 10)[:0])
    code, _, err = cli_run(
        monkeypatch, capsys, "convert", empty, "--detector", "ild-ecal-30", "--out", tmp_path / "img.h5"
    )
    assert code == 2 and "holds no showers" in err
    assert [p.name for p in tmp_path.iterdir()] == ["empty.h5"]


# -- jet files that evaluation and training must refuse alike --------------------------------


def _jets(n: int = 30, particles: int = 5):
    from caloforge.jets.io import Jets

    rng = np.random.default_rng(0)
    parts = np.zeros((n, particles, 4), np.float32)
    count = rng.integers(2, particles + 1, n)
    for i, k in enumerate(count):
        parts[i, :k, :2] = rng.normal(0, 0.2, (k, 2))
        parts[i, :k, 2] = rng.uniform(0.01, 0.3, k)
        parts[i, :k, 3] = 1.0
    jet = np.column_stack([rng.uniform(500, 900, n), rng.normal(0, 1, n), rng.uniform(50, 200, n), count])
    return Jets(parts, jet.astype(np.float32), "t")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p, j: j.__setitem__((3, 0), -5.0), "jet 3 has a negative pT or mass"),
        (lambda p, j: j.__setitem__((4, 2), -1.0), "jet 4 has a negative pT or mass"),
        (lambda p, j: j.__setitem__((5, 3), j[5, 3] + 1), "jet 5 has a num_particles that disagrees"),
        (lambda p, j: p.__setitem__((6, 0, 3), 0.0), "jet 6 has"),  # a gap (or the count)
        (
            lambda p, j: p.__setitem__((7, -1, 0), 0.5) if p[7, -1, 3] == 0 else None,
            "jet 7 has non-zero padding",
        ),
    ],
    ids=["negative-pt", "negative-mass", "num-particles", "gap", "padding"],
)
def test_corrupt_jet_files_are_refused_by_evaluate(monkeypatch, capsys, tmp_path, corrupt, message):
    import h5py

    from caloforge.jets.io import write_jets

    jets = _jets()
    jets.particles[7, -1] = 0.0  # make sure jet 7 has padding to corrupt
    jets.jet[7, 3] = jets.particles[7, :, 3].sum()
    good, bad = tmp_path / "good.h5", tmp_path / "bad.h5"
    write_jets(good, jets)
    write_jets(bad, jets)
    with h5py.File(bad, "r+") as f:
        p, j = f["particle_features"][...], f["jet_features"][...]
        corrupt(p, j)
        f["particle_features"][...], f["jet_features"][...] = p, j
    code, _, err = cli_run(
        monkeypatch, capsys, "evaluate", good, bad, "--out", tmp_path / "report", "--no-plots"
    )
    assert code == 2 and message in err, err


def test_an_unknown_jet_type_is_refused(tmp_path):
    import h5py

    from caloforge.jets.io import JetFileError, read_jets, write_jets

    path = tmp_path / "j.h5"
    write_jets(path, _jets())
    with h5py.File(path, "r+") as f:
        f.attrs["jet_type"] = "x"
    with pytest.raises(JetFileError, match="unknown jet_type 'x'"):
        read_jets(path)


def test_standard_physics_without_its_data_names_what_is_missing(monkeypatch, capsys, tmp_path):
    data = tmp_path / "g4data"
    (data / "G4EMLOW8.6").mkdir(parents=True)
    monkeypatch.setenv("GEANT4_DATA_DIR", str(data))
    out = tmp_path / "runs"
    out.mkdir()
    code, _, err = cli_run(
        monkeypatch, capsys, "simulate", "-n", "1", "--physics", "standard", "--out", out / "s.h5"
    )
    assert code == 2 and "lacks the Geant4 data sets G4ENSDFSTATE, PhotonEvaporation" in err
    assert list(out.iterdir()) == []  # checked before the pieces folder


def test_absurd_sampler_steps_are_refused_before_any_allocation(monkeypatch, capsys, tmp_path):
    out = tmp_path / "g.h5"
    code, _, err = cli_run(monkeypatch, capsys, "generate", "-n", "2", "--steps", "1000000000", "--out", out)
    assert code == 2 and "a sampler takes 1 to 10,000 steps" in err
    assert not out.exists()


def test_jetnet_files_counting_every_constituent_are_read(tmp_path):
    """JetNet's num_particles counts all constituents; the clouds hold the leading 30 (or here 5):
    read as jetnet reads them, capped, not refused."""
    import h5py

    from caloforge.jets.io import read_jets, write_jets

    jets = _jets()
    jets.particles[:, :, 3] = 1.0
    jets.particles[:, :, 2] = np.where(jets.particles[:, :, 2] > 0, jets.particles[:, :, 2], 0.05)
    jets.jet[:, 3] = 5
    path = tmp_path / "t.h5"
    write_jets(path, jets)
    with h5py.File(path, "r+") as f:
        f["jet_features"][:, 3] = 45.0  # the whole jet's constituents
    assert (read_jets(path).jet[:, 3] == 5).all()


def test_calibrating_a_run_that_is_training_is_refused(monkeypatch, capsys, tmp_path):
    import shutil

    from caloforge.models._training import run_lock
    from caloforge.models.registry import resolve_model

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(resolve_model("caloclouds2"), run / "checkpoint.pt")
    with run_lock(run):  # the training
        code, _, err = cli_run(monkeypatch, capsys, "calibrate", "--model", run, "--data", tmp_path / "d.h5")
    assert code == 2 and "is being written by another caloforge run" in err
