"""Shower files: round trips, chunked reading, foreign layouts, atomic writes, bad files."""

import os

import h5py
import numpy as np
import pytest

from caloforge.io import (
    PointShowers,
    ShowerFileError,
    ShowerWriter,
    VoxelShowers,
    open_showers,
    read_showers,
    write_showers,
)
from conftest import random_points


def _same(a: PointShowers, b: PointShowers) -> None:
    """Equal showers up to padding position and float32 rounding of GeV <-> MeV."""
    assert np.allclose(a.energy, b.energy)
    for i in range(len(a)):
        pa, pb = a.points[i][a.mask[i]], b.points[i][b.mask[i]]
        np.testing.assert_allclose(pa, pb, rtol=1e-6)


def test_point_round_trip_with_attributes(tmp_path, showers):
    path = tmp_path / "s.h5"
    write_showers(path, showers, generator="test", seed=7, attrs={"particle": "gamma"})
    with open_showers(path) as f:
        assert f.kind == "points" and len(f) == 50
        assert f.attrs["seed"] == 7 and f.attrs["particle"] == "gamma" and f.generator == "test"
        assert f.attrs["format_version"] == "1.0" and f.detector.name == "ild-ecal"
        _same(f.read(), showers)
    with h5py.File(path) as h5:  # the public CaloClouds II layout on disk
        assert h5["events"].shape == (50, 4, 40) and h5["energy"].shape == (50, 1)
        # energies on disk are GeV
        assert np.isclose(h5["events"][0, 3].sum() * 1000, showers.points[0, :, 3].sum(), rtol=1e-5)


def test_chunked_writes_and_reads(tmp_path):
    path = tmp_path / "big.h5"
    batches = [random_points(37, w, seed=s) for s, w in enumerate([5, 60, 20, 3])]
    with ShowerWriter(path, "points") as writer:
        for b in batches:
            writer.write(b)
        assert writer.n_written == 37 * 4
    everything = PointShowers.concatenate(batches)
    with open_showers(path) as f:
        chunks = list(f.iter_chunks(chunk_size=25))
        assert [len(c) for c in chunks] == [25] * 5 + [23]
        assert max(c.points.shape[1] for c in chunks) <= 60
        _same(PointShowers.concatenate(chunks), everything)
        assert len(list(f.iter_chunks(10, start=100, stop=125))) == 3


def test_voxel_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    vox = VoxelShowers(rng.uniform(1, 100, 6), rng.exponential(1.0, (6, 6480)))
    path = tmp_path / "v.h5"
    write_showers(path, vox, detector="calochallenge-ds2", generator="test")
    with h5py.File(path) as h5:
        assert np.allclose(h5["incident_energies"][:, 0], vox.energy * 1000)  # MeV on disk
    back = read_showers(path)
    assert isinstance(back, VoxelShowers)
    assert np.allclose(back.energy, vox.energy) and np.allclose(back.voxels, vox.voxels)


def test_reads_public_layout_without_attributes(tmp_path):
    """A CaloClouds II-style file: (N, 4, P), front padding, GeV, no attributes."""
    path = tmp_path / "public.h5"
    events = np.zeros((2, 4, 5), np.float32)
    events[0, :, 3:] = [[1.0, 2.0], [3.5, 7.5], [-4.0, 0.5], [0.001, 0.002]]
    events[1, :, 4] = [0.0, 29.5, 0.0, 0.003]
    with h5py.File(path, "w") as h5:
        h5["events"] = events
        h5["energy"] = np.array([[40.0], [80.0]])
    with open_showers(path) as f:
        assert f.detector.name == "ild-ecal" and f.generator == "unknown"
        s = f.read()
    assert s.n_points.tolist() == [2, 1]
    first = s.points[0][s.mask[0]]
    assert np.allclose(first, [[1.0, -4.0, 3.5, 1.0], [2.0, 0.5, 7.5, 2.0]])


def test_reads_np4_layout_and_depth_in_mm(tmp_path):
    path = tmp_path / "cc3.h5"
    events = np.zeros((1, 3, 4), np.float32)  # (N, P, 4)
    events[0, 0] = [1.0, 198.705 + 0.2, 2.0, 0.004]  # depth in mm: last layer
    events[0, 1] = [1.0, 0.1, 2.0, 0.004]  # first layer
    with h5py.File(path, "w") as h5:
        h5["events"] = events
        h5["energy"] = np.array([[50.0]])
        h5.attrs["depth_unit"] = "mm"
    s = read_showers(path)
    assert s.points[0, :2, 2].tolist() == [29.5, 0.5]
    assert np.allclose(s.points[0, :2, 3], 4.0)


def test_failed_write_leaves_existing_file_untouched(tmp_path, showers):
    path = tmp_path / "keep.h5"
    write_showers(path, showers[:5])
    before = path.read_bytes()
    with pytest.raises(RuntimeError), ShowerWriter(path, "points") as writer:
        writer.write(showers)
        raise RuntimeError("simulated crash")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.h5"]  # no temporary left


def test_interrupt_keeps_the_previous_file(tmp_path, showers):
    path = tmp_path / "partial.h5"
    write_showers(path, showers[:3])
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt), ShowerWriter(path, "points") as w:
        w.write(showers[:10])
        raise KeyboardInterrupt
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["partial.h5"]


def test_temporary_files_of_killed_writers_are_removed(tmp_path, showers):
    path = tmp_path / "x.h5"
    dead = tmp_path / ".x.h5.999999999.abcd.partial.h5"  # no such pid
    alive = tmp_path / f".x.h5.{os.getpid()}.abcd.partial.h5"
    dead.write_bytes(b"left by kill -9")
    alive.write_bytes(b"another writer of this process")
    write_showers(path, showers[:2])
    assert not dead.exists() and alive.exists()


def test_append(tmp_path, showers):
    path = tmp_path / "a.h5"
    write_showers(path, showers[:10], seed=3)
    with ShowerWriter(path, "points", append=True) as w:
        assert w.n_written == 10
        w.write(showers[10:])
    _same(read_showers(path), showers)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda h5: h5.create_dataset("other", data=[1]), "neither"),
        (
            lambda h5: (
                h5.create_dataset("events", data=np.zeros((3, 5, 7))),
                h5.create_dataset("energy", data=np.zeros((3, 1))),
            ),
            "expected \\(N, 4, P\\)",
        ),
        (
            lambda h5: (
                h5.create_dataset("events", data=np.zeros((3, 4, 7))),
                h5.create_dataset("energy", data=np.zeros((2, 1))),
            ),
            "to match 3 showers",
        ),
        (
            lambda h5: (
                h5.create_dataset("showers", data=np.zeros((3, 100))),
                h5.create_dataset("incident_energies", data=np.zeros((3, 1))),
            ),
            "6480",
        ),
    ],
)
def test_mis_shaped_files(tmp_path, build, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        build(h5)
    with pytest.raises(ShowerFileError, match=message):
        open_showers(path)


def test_corrupt_and_truncated_files(tmp_path, showers):
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ShowerFileError, match="not a readable HDF5"):
        open_showers(not_hdf5)
    good = tmp_path / "good.h5"
    write_showers(good, random_points(300, 200, seed=5), compression=None)
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ShowerFileError):
        with open_showers(truncated) as f:
            f.read()
    with pytest.raises(ShowerFileError, match="does not exist"):
        open_showers(tmp_path / "missing.h5")


def test_writer_rejects_wrong_kind(tmp_path, showers):
    with (
        pytest.raises(ShowerFileError, match="cannot write points"),
        ShowerWriter(tmp_path / "v.h5", "voxels", "calochallenge-ds2") as w,
    ):
        w.write(showers)
    assert not (tmp_path / "v.h5").exists()


def test_empty_files_have_datasets(tmp_path):
    write_showers(tmp_path / "p.h5", PointShowers(np.zeros(0), np.zeros((0, 1, 4))))
    write_showers(
        tmp_path / "v.h5", VoxelShowers(np.zeros(0), np.zeros((0, 6480))), detector="calochallenge-ds2"
    )
    for name in ("p.h5", "v.h5"):
        with open_showers(tmp_path / name) as f:
            assert len(f) == 0 and list(f.iter_chunks(10)) == []


@pytest.mark.parametrize(("compression", "level"), [("gzip", 1), ("lzf", None), (None, None)])
def test_writer_compressions(tmp_path, compression, level):
    showers = random_points(10, 20, seed=2)
    with ShowerWriter(tmp_path / "c.h5", "points", compression=compression) as w:
        w.write(showers)
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["events"].compression == compression and f["events"].compression_opts == level
    np.testing.assert_allclose(read_showers(tmp_path / "c.h5").points, showers.points, rtol=1e-6)
    with pytest.raises(ShowerFileError, match="unknown compression 'zip'"):
        ShowerWriter(tmp_path / "d.h5", "points", compression="zip")
    assert not (tmp_path / "d.h5").exists()


def test_writer_buffers_small_batches(tmp_path):
    showers = random_points(70, 30, seed=9)
    with ShowerWriter(tmp_path / "one.h5", "points") as w:
        for i in range(len(showers)):
            w.write(showers[i : i + 1])
            assert w.n_written == i + 1
    with ShowerWriter(tmp_path / "all.h5", "points") as w:
        w.write(showers)
    a, b = read_showers(tmp_path / "one.h5"), read_showers(tmp_path / "all.h5")
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.points, b.points)
