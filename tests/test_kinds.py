"""Output kinds (caloforge.kinds): each built-in kind recognises, writes, reads and encodes its own
files; unknown kinds are one-line errors; registered kinds are found."""

import dataclasses

import numpy as np
import pytest

from caloforge import kinds as kinds_module
from caloforge.generation import write_batches
from caloforge.jets.io import Jets
from caloforge.kinds import (
    POINTS,
    file_kind,
    get_kind,
    kind_of_file,
    kind_of_result,
    kinds,
    register_kind,
)
from caloforge.models.protocol import OUTPUT_KINDS
from conftest import random_points, toy_voxels


def _jets(n: int = 3) -> Jets:
    particles = np.zeros((n, 4, 4), np.float32)
    particles[:, :2] = [[0.1, -0.2, 0.6, 1.0], [-0.1, 0.1, 0.4, 1.0]]
    return Jets(particles, np.array([[1000.0, 0.5, 170.0, 2.0]] * n, np.float32), "t")


#: kind name -> (a small batch, the detector its writer takes)
BATCHES = {
    "points": (lambda: random_points(5, 8, seed=3), "ild-ecal"),
    "voxels": (lambda: toy_voxels(4, seed=2), "calochallenge-ds2"),
    "jets": (_jets, None),
}


def _same(kind_name: str, a, b) -> None:
    assert len(a) == len(b)
    if kind_name == "points":  # equal up to padding and float32 rounding of GeV <-> MeV
        assert np.allclose(a.energy, b.energy)
        for i in range(len(a)):
            np.testing.assert_allclose(a.points[i][a.mask[i]], b.points[i][b.mask[i]], rtol=1e-6)
    elif kind_name == "voxels":
        assert np.allclose(a.energy, b.energy) and np.allclose(a.voxels, b.voxels)
    else:
        assert a.jet_type == b.jet_type
        np.testing.assert_array_equal(a.particles, b.particles)
        np.testing.assert_array_equal(a.jet, b.jet)


@pytest.fixture
def files(tmp_path):
    """A file of every built-in kind, written by generation.write_batches (two batches each)."""
    out = {}
    for name, (make, detector) in BATCHES.items():
        path = tmp_path / f"{name}.h5"
        batch = make()
        assert write_batches(path, name, detector, "test", iter([batch, batch]), seed=1) == 2 * len(batch)
        out[name] = (path, batch)
    return out


def test_builtin_kinds_are_the_protocols():
    assert [k.name for k in kinds()][:3] == list(OUTPUT_KINDS) == ["points", "voxels", "jets"]
    assert get_kind("jets").calorimeter is False and get_kind("points").positions is True


@pytest.mark.parametrize("name", list(BATCHES))
def test_kind_recognises_its_own_files_only(files, name):
    kind = get_kind(name)
    for other, (path, _) in files.items():
        assert kind.is_file(path) is (other == name)
    assert kind_of_file(files[name][0]) is kind


@pytest.mark.parametrize("name", list(BATCHES))
def test_writer_and_reader_round_trip(files, name, tmp_path):
    kind = get_kind(name)
    path, batch = files[name]
    back = kind.read(path)
    assert isinstance(back, kind.batch_type())
    _same(name, type(batch).concatenate([batch, batch]), back)
    _same(name, batch, kind.read(path, start=0, stop=len(batch)))
    # the writer itself, as write_batches uses it
    single = tmp_path / f"single-{name}.h5"
    with kind.open_writer(single, BATCHES[name][1], batch, generator="t", seed=None, attrs={},
                          compression=None) as writer:  # fmt: skip
        writer.write(batch)
    _same(name, batch, kind.read(single))


@pytest.mark.parametrize("name", list(BATCHES))
def test_piece_encoding_round_trips(name):
    kind = get_kind(name)
    batch = BATCHES[name][0]()
    arrays = kind.encode_piece(batch)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    _same(name, batch, kind.decode_piece(arrays))


@pytest.mark.parametrize("name", list(BATCHES))
def test_info_rows(files, name):
    kind = get_kind(name)
    path, batch = files[name]
    rows = dict(kind.info_rows(path))
    assert rows["kind"].startswith(name) and rows["generator"] == "test"
    assert rows[kind.noun] == str(2 * len(batch))  # "showers" or "jets"


def test_foreign_files_have_no_kind(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    assert kind_of_file(junk) is None and kind_of_file(tmp_path / "missing.h5") is None
    assert file_kind(junk) is POINTS  # the shower reader says why it cannot read it


def test_unknown_kind_is_one_line():
    expected = "unknown output kind 'images': use one of points, voxels, jets"
    with pytest.raises(ValueError, match=expected) as e:
        get_kind("images")
    assert "\n" not in str(e.value)


def test_registered_kind_is_found():
    toy = dataclasses.replace(POINTS, name="toy-points", noun="toys", noun_one="toy")
    try:
        assert register_kind(toy) is toy
        assert get_kind("toy-points") is toy and toy in kinds()
        assert kind_of_result({"kind": "toy-points"}) is toy
        assert kind_of_result({"w1_observables": []}) is POINTS  # shower results carry no kind
    finally:
        kinds_module.reload()
    with pytest.raises(ValueError, match="unknown output kind"):
        get_kind("toy-points")


def test_importing_kinds_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, caloforge.kinds; print(any(m in sys.modules for m in ('h5py', 'torch')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
