"""Jet files (our layout and JetNet's) and reference jets from Pythia 8 + FastJet."""

import builtins

import h5py
import numpy as np
import pytest

from caloforge.jets import pythia
from caloforge.jets.io import UNKNOWN_TYPE, JetFileError, jet_file_info, read_jets, write_jets
from caloforge.jets.pythia import JetSimulationConfig, simulate_jets
from caloforge.models.epic.training import load_jets
from conftest import cli_run, toy_jets


def _jetnet_file(path, jets):
    """A file as JetNet ships them: two datasets, no attributes."""
    with h5py.File(path, "w") as f:
        f["particle_features"] = jets.particles
        f["jet_features"] = jets.jet


def test_round_trip_and_truncation(tmp_path):
    jets = toy_jets(20, 30, seed=1)
    write_jets(tmp_path / "a.h5", jets, generator="toy", seed=3)
    back = read_jets(tmp_path / "a.h5")
    np.testing.assert_array_equal(back.particles, jets.particles)
    assert back.attrs["generator"] == "toy" and back.jet_type == "t"
    short = read_jets(tmp_path / "a.h5", n_particles=10)
    assert short.particles.shape == (20, 10, 4)
    assert (short.jet[:, 3] <= 10).all() and (short.multiplicity == 10).all()
    with pytest.raises(JetFileError, match="holds 30 particles per jet; 150"):
        read_jets(tmp_path / "a.h5", n_particles=150)


def test_reads_jetnet_layout_with_the_type_from_the_name(tmp_path):
    jets = toy_jets(12, 30, seed=2)
    _jetnet_file(tmp_path / "g150.hdf5", jets)
    back = read_jets(tmp_path / "g150.hdf5", n_particles=30)
    assert back.jet_type == "g" and len(back) == 12
    _jetnet_file(tmp_path / "mine.hdf5", jets)  # no attribute, no type in the name: read all the same
    assert read_jets(tmp_path / "mine.hdf5").jet_type == UNKNOWN_TYPE
    assert jet_file_info(tmp_path / "mine.hdf5", "q")["jet_type"] == "q"  # --jet-type
    _jetnet_file(tmp_path / "top_quark_test.hdf5", jets)  # two types in the name: it says none
    assert jet_file_info(tmp_path / "top_quark_test.hdf5")["jet_type"] == UNKNOWN_TYPE
    _jetnet_file(tmp_path / "top_test.hdf5", jets)
    assert jet_file_info(tmp_path / "top_test.hdf5", "g")["jet_type"] == "t"  # the name says it
    with pytest.raises(JetFileError, match="unknown --jet-type 'x'"):
        jet_file_info(tmp_path / "mine.hdf5", "x")
    _jetnet_file(tmp_path / "many.hdf5", toy_jets(25, 30, seed=3))
    with pytest.raises(ValueError, match="does not say its jet type"):  # training needs the type
        load_jets(tmp_path / "many.hdf5", n_particles=30)


@pytest.mark.parametrize("damage", ["nan", "empty", "mask", "shape"])
def test_bad_jet_files_are_one_line_errors(tmp_path, damage):
    jets = toy_jets(6, 8, seed=3)
    p = jets.particles.copy()
    if damage == "nan":
        p[2, 0, 0] = np.nan
    elif damage == "empty":
        p[4] = 0.0
    elif damage == "mask":
        p[1, 0, 3] = 0.5
    path = tmp_path / "t.hdf5"
    with h5py.File(path, "w") as f:
        f["particle_features"] = p if damage != "shape" else p[..., :3]
        f["jet_features"] = jets.jet
    with pytest.raises(JetFileError) as err:
        read_jets(path)
    assert "\n" not in str(err.value)
    if damage == "nan":
        assert "jet 2" in str(err.value)


def test_simulated_jets_are_top_jets_and_reproducible(tmp_path, monkeypatch):
    monkeypatch.setattr(pythia, "JETS_PER_PIECE", 2)
    config = JetSimulationConfig("t", n_particles=40)
    simulate_jets(tmp_path / "a.h5", 4, config, seed=9)
    jets = read_jets(tmp_path / "a.h5")
    assert jet_file_info(tmp_path / "a.h5")["attrs"]["generator"] == "pythia8+fastjet"
    assert len(jets) == 4 and jets.n_particles == 40
    assert (jets.jet[:, 0] >= 800).all() and (np.abs(jets.jet[:, 1]) < 2.5).all()
    assert (jets.jet[:, 2] > 20).all()  # massive jets
    pt = jets.particles[..., 2]
    assert (np.diff(pt, axis=1) <= 1e-7).all()  # sorted by pT, padding (0) last
    assert (pt.sum(axis=1) <= 1.0 + 1e-4).all() and (pt.sum(axis=1) > 0.5).all()
    assert (np.abs(jets.particles[..., 1]) <= np.pi).all()
    # Two processes, pieces of two jets: the same file.
    simulate_jets(tmp_path / "b.h5", 4, config, seed=9, workers=2)
    np.testing.assert_array_equal(read_jets(tmp_path / "b.h5").particles, jets.particles)
    with pytest.raises(FileExistsError):
        simulate_jets(tmp_path / "a.h5", 4, config, seed=9)


def test_simulate_jets_bad_input(monkeypatch, capsys, tmp_path):
    code, _, err = cli_run(
        monkeypatch, capsys, "simulate-jets", "--type", "x", "-n", "2", "--out", tmp_path / "j.h5"
    )
    assert code == 2 and "unknown jet type 'x'" in err
    real_import = builtins.__import__

    def no_pythia(name, *args, **kwargs):
        if name == "pythia8mc":
            raise ImportError("no module", name="pythia8mc")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pythia)
    code, _, err = cli_run(monkeypatch, capsys, "simulate-jets", "-n", "2", "--out", tmp_path / "j.h5")
    assert code == 2 and "pip install 'caloforge[jets]'" in err
    assert not (tmp_path / "j.h5").exists()
