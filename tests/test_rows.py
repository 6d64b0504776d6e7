"""Training sets too large for memory: rows read from a scratch file a batch at a time give the
same batches, and the same training, as the array in memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caloforge.atomic import DiskFullError
from caloforge.detector import get_detector
from caloforge.io import write_showers
from caloforge.models.rows import DiskRows, shower_rows
from caloforge.models.voxel_features import load_voxel_file
from conftest import random_points, toy_voxels

DET = get_detector("calochallenge-ds2")


@pytest.fixture(scope="module")
def voxel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "voxels.h5"
    attrs = {"energy_min_gev": 1.0, "energy_max_gev": 100.0}
    write_showers(path, toy_voxels(50, seed=7), DET, generator="toy", attrs=attrs)
    return path


@pytest.fixture
def small_memory(monkeypatch, tmp_path):
    """Every per-shower array counts as too large for memory; scratch files go to tmp_path."""
    monkeypatch.setenv("CALOFORGE_IN_MEMORY_GB", "0")
    monkeypatch.setenv("CALOFORGE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "rows"


def _blocks(array: np.ndarray, size: int):
    return lambda: (array[i : i + size] for i in range(0, len(array), size))


@pytest.mark.parametrize(
    "index",
    [
        torch.tensor([3, 0, 3, 9]),
        np.array([9, 1]),
        slice(2, 7),
        slice(1, None, 3),
        4,
        -1,
        torch.tensor([]),
    ],
    ids=["repeats", "numpy", "slice", "strided", "one", "negative", "empty"],
)
def test_disk_rows_read_what_memory_holds(tmp_path, index):
    array = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    rows = shower_rows(source, "test", 10, 5, _blocks(array, 3), in_memory=False, cache=tmp_path)
    assert isinstance(rows, DiskRows) and len(rows) == 10 and rows.shape == (10, 5)
    idx = index.long() if isinstance(index, torch.Tensor) else index
    expected = torch.from_numpy(array)[idx]
    assert torch.equal(rows[idx], expected)
    with pytest.raises(IndexError):
        rows[torch.tensor([10])]


def test_the_scratch_file_is_made_once_and_remade_for_a_changed_source(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    calls = []

    def chunks():
        calls.append(1)
        return iter([array])

    first = shower_rows(source, "t", 4, 3, chunks, in_memory=False, cache=tmp_path)
    second = shower_rows(source, "t", 4, 3, chunks, in_memory=False, cache=tmp_path)
    assert first.path == second.path and len(calls) == 1
    source.write_bytes(b"xy")  # a new version of the source
    third = shower_rows(source, "t", 4, 3, chunks, in_memory=False, cache=tmp_path)
    assert third.path != first.path and len(calls) == 2
    assert not list(tmp_path.glob("*.partial"))


def test_a_disk_too_small_for_the_scratch_file_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr("caloforge.atomic.free_bytes", lambda path: 1000)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    chunks = _blocks(np.zeros((100, 100), np.float32), 10)
    with pytest.raises(DiskFullError, match="not enough space to write"):
        shower_rows(source, "t", 100, 100, chunks, in_memory=False, cache=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["source.bin"]


def test_a_large_file_is_read_from_disk(voxel_file, small_memory):
    in_memory = load_voxel_file(voxel_file, "polar", "test", in_memory=True)
    streamed = load_voxel_file(voxel_file, "polar", "test")
    assert isinstance(streamed.voxels, DiskRows) and isinstance(in_memory.voxels, torch.Tensor)
    assert torch.equal(streamed.voxels[torch.arange(len(streamed.energy))], in_memory.voxels)
    assert len(list(small_memory.glob("*.f32"))) == 1


def _log(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "minutes"}
        for line in (run / "train_log.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize("command", ["caloinn", "calodream-shape"])
def test_training_from_disk_rows_is_the_training_from_memory(voxel_file, monkeypatch, tmp_path, command):
    from caloforge.models.registry import families

    training = next(t for f in families() for t in f.trainings if t.command == command)
    config = training.make_config("smoke", 0, {"steps": 4})
    training.run(config, voxel_file, tmp_path / "memory", **training.train_fixed)
    monkeypatch.setenv("CALOFORGE_IN_MEMORY_GB", "0")
    monkeypatch.setenv("CALOFORGE_CACHE_DIR", str(tmp_path / "cache"))
    training.run(config, voxel_file, tmp_path / "disk", **training.train_fixed)
    assert list((tmp_path / "cache" / "rows").glob("*.f32"))
    memory, disk = _log(tmp_path / "memory"), _log(tmp_path / "disk")
    assert len(memory) == len(disk) > 0
    for a, b in zip(memory, disk, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_the_point_standardisation_fits_block_by_block_as_at_once():
    from caloforge.models.nn.pointwise import PointScaler

    points = torch.from_numpy(random_points(40, 50, seed=2).points.astype(np.float32))
    mask = points[..., 3] > 0
    whole = PointScaler().fit(points, mask)
    blocks = PointScaler().fit_blocks((points[i : i + 7], mask[i : i + 7]) for i in range(0, 40, 7))
    for name in ("loc", "scale", "log_e_range"):
        torch.testing.assert_close(getattr(blocks, name), getattr(whole, name), rtol=1e-5, atol=1e-6)


def test_point_cloud_training_from_disk_rows(monkeypatch, tmp_path):
    """CaloClouds II on a point file whose cached points are on disk: the run of the in-memory
    points (the standardisation is summed block by block, the same up to rounding)."""
    from caloforge.models.caloclouds2 import CaloClouds2Config, train

    data = tmp_path / "points.h5"
    write_showers(data, random_points(30, 60, seed=5), generator="test", attrs={"energy_min_gev": 10.0})
    config = CaloClouds2Config.from_preset("smoke", steps=4, flow_steps=4, log_every=1, calibration_showers=8)
    train(config, data, tmp_path / "memory")
    monkeypatch.setenv("CALOFORGE_IN_MEMORY_GB", "0")
    monkeypatch.setenv("CALOFORGE_CACHE_DIR", str(tmp_path / "cache"))
    train(config, data, tmp_path / "disk")
    assert [p.name.split(".")[1] for p in (tmp_path / "cache" / "rows").glob("*.f32")] == ["points"]
    memory, disk = _log(tmp_path / "memory"), _log(tmp_path / "disk")
    assert len(memory) == len(disk) == 4
    for a, b in zip(memory, disk, strict=True):
        assert a == pytest.approx(b, rel=1e-3)


def test_two_processes_write_one_scratch_file(tmp_path):
    """The ranks of a data-parallel run load the same file at once: one writes the scratch
    rows, the other waits for it and reuses them."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import distributed_tasks as tasks

    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    markers = tmp_path / "markers"
    markers.mkdir()
    # An executor, not multiprocessing.Pool: a worker that dies, or a result that cannot be read
    # back, fails the test (BrokenProcessPool) instead of waiting for ever; the timeout bounds a
    # real deadlock of the lock.
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(tasks.write_rows, source, tmp_path / "cache", markers) for _ in range(2)]
        paths = [f.result(timeout=300) for f in futures]
    assert paths[0] == paths[1] != "wrong"
    assert len(list(markers.iterdir())) == 1  # one pass over the data wrote it
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".partial"] == []
