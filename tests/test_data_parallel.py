"""Every data-parallel family follows one process on two (gloo on CPUs): the same logged
losses and weights at the same global batch, resumable on another process count. The device
path (``--device``, ``--precision``, :mod:`caloforge.models._placement`) is the one these runs
take on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import distributed_tasks as tasks
from caloforge.detector import get_detector
from caloforge.io import write_showers
from caloforge.jets.io import write_jets
from caloforge.models._distributed import launch
from caloforge.models.registry import families
from conftest import random_points, toy_images, toy_jets, toy_voxels

ATTRS = {"energy_min_gev": 1.0, "energy_max_gev": 100.0}


@pytest.fixture(scope="module")
def voxel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dp") / "voxels.h5"
    det = get_detector("calochallenge-ds2")
    write_showers(path, toy_voxels(60, seed=3), det, generator="toy", attrs=ATTRS)
    return path


@pytest.fixture(scope="module")
def point_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dp") / "points.h5"
    write_showers(path, random_points(30, 60, seed=5), generator="test", attrs={"energy_min_gev": 10.0})
    return path


@pytest.fixture(scope="module")
def jet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dp") / "jets.h5"
    write_jets(path, toy_jets(80, 12, seed=4), generator="toy")
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dp") / "images.h5"
    attrs = {"energy_min_gev": 10.0, "energy_max_gev": 90.0}
    write_showers(path, toy_images(40, seed=3), get_detector("ild-ecal-30"), generator="toy", attrs=attrs)
    return path


def _training(command: str):
    return next(t for f in families() for t in f.trainings if t.command == command)


#: (command, data fixture, config overrides): every training that runs data-parallel.
CASES = [
    ("caloclouds1", "point_file", {"calibration_showers": 8}),
    ("caloinn", "voxel_file", {}),
    ("l2lflows", "image_file", {}),
    ("bibae", "image_file", {"post_steps": 3}),
    ("calodream-energy", "voxel_file", {}),
    ("calodream-vae", "voxel_file", {}),
    ("calodream-shape", "voxel_file", {}),
    ("epic-fm", "jet_file", {"n_particles": 12}),
    ("epic-jedi", "jet_file", {"n_particles": 12}),
    ("epic-gan", "jet_file", {"n_particles": 12}),
]


def test_every_data_parallel_training_is_tested_here():
    declared = {t.command for f in families() for t in f.trainings if t.distributed}
    assert declared - {"caloclouds2"} == {c for c, _, _ in CASES}  # CaloClouds II: test_distributed.py


def _config(training, overrides: dict, steps: int = 6):
    config = training.make_config("smoke", 0, {})
    fields = {"steps": steps, "log_every": 1, **overrides}
    if hasattr(config, "val_every"):
        fields["val_every"] = 3
    return replace(config, **fields)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        for key, value in ra.items():
            if key not in ("minutes",):
                assert rb[key] == pytest.approx(value, rel=2e-4, abs=2e-5), (key, ra["step"])
    sa = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for name, value in sa.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sb[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize(("command", "data", "overrides"), CASES, ids=[c for c, _, _ in CASES])
def test_two_processes_follow_one(command, data, overrides, request, tmp_path):
    training = _training(command)
    data_path = request.getfixturevalue(data)
    config = _config(training, overrides)
    kwargs = dict(training.train_fixed)
    if command == "caloclouds1":
        kwargs["flow_from"] = "caloclouds2"  # the shipped Shower Flow
    one = tmp_path / "one"
    training.run(config, data_path, one, **kwargs)
    two = tmp_path / "two"
    result = launch(tasks.train_family, 2, training, config, data_path, two, kwargs, threads=1)
    assert result.complete and result.step == config.steps
    _assert_same_run(one, two)


def test_resume_on_another_process_count(voxel_file, tmp_path):
    """Half a run on two processes, the rest on one: the run one process makes alone."""
    training = _training("caloinn")
    config = _config(training, {}, steps=6)
    alone = tmp_path / "alone"
    training.run(config, voxel_file, alone)
    split = tmp_path / "split"
    stop = {"max_minutes": 0.0}
    first = launch(tasks.train_family, 2, training, config, voxel_file, split, stop, threads=1)
    assert not first.complete and first.step == 1
    training.run(config, voxel_file, split, resume=True)
    _assert_same_run(alone, split)


def test_bfloat16_autocast_trains_on_the_cpu(voxel_file, tmp_path):
    """The mixed-precision path a GPU takes (``precision=bfloat16``), here on the CPU: it trains,
    and its checkpoint resumes in float32 (checkpoints hold float32 weights either way)."""
    training = _training("calodream-energy")
    config = _config(training, {}, steps=4)
    run = tmp_path / "bf16"
    result = training.run(config, voxel_file, run, part="energy", precision="bfloat16", max_minutes=0.0)
    assert result.step == 1
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    done = training.run(config, voxel_file, run, part="energy", resume=True, precision="float32")
    assert done.complete and all(torch.isfinite(torch.tensor(v)) for v in done.losses.values())


def test_float32_only_families_refuse_bfloat16(voxel_file, tmp_path):
    training = _training("caloinn")
    with pytest.raises(ValueError, match="CaloINN training runs in float32 only"):
        training.run(_config(training, {}), voxel_file, tmp_path / "run", precision="bfloat16")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cuda_without_cuda_is_one_line(voxel_file, tmp_path):
    training = _training("caloinn")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        training.run(_config(training, {}), voxel_file, tmp_path / "run", device="cuda")


def test_distillation_on_two_processes_follows_one(point_file, tmp_path):
    from caloforge.models.caloclouds2.distillation import DistillConfig, distill
    from caloforge.models.registry import resolve_model

    teacher = resolve_model("caloclouds2")
    config = DistillConfig.from_preset("smoke", steps=4, log_every=1)
    distill(teacher, point_file, tmp_path / "one", config)
    result = launch(tasks.distill_run, 2, teacher, point_file, tmp_path / "two", config, threads=1)
    assert result.complete
    _assert_same_run(tmp_path / "one", tmp_path / "two")
