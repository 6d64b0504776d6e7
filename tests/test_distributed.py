"""Data-parallel training (``--nproc``, torchrun): two processes follow one process's loss
curve at the same global batch, resume across process counts, stop together, fail in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import distributed_tasks as tasks
from caloforge.io import write_showers
from caloforge.models._distributed import World, agree, launch, shard, world
from caloforge.models.caloclouds2 import CaloClouds2Config
from conftest import CALOCLOUDS2_TINY, cli_run, random_points

TINY = replace(CALOCLOUDS2_TINY, log_every=1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.h5"
    write_showers(path, random_points(30, 60, seed=5), generator="test", attrs={"energy_min_gev": 10.0})
    return path


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    return {f"model.{k}": v for k, v in state["model"].items()} | {
        f"train_net.{k}": v for k, v in state["train_net"].items()
    }


def _close(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if wa[name].is_floating_point():
            torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


def test_one_process_world():
    assert world() == World(0, 1)
    assert agree([True, False], [True]) == (True, False, True)
    assert [shard(5, World(r, 2)) for r in range(2)] == [slice(0, 2), slice(2, 5)]


@pytest.fixture(scope="module")
def one_process(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("one")
    tasks.train_caloclouds2(TINY, data_file, run)
    return run


def test_two_processes_follow_one_process(data_file, one_process, tmp_path):
    result = launch(tasks.train_caloclouds2, 2, TINY, data_file, tmp_path, threads=1)
    assert result.complete and result.step == TINY.steps
    one, two = _log(one_process), _log(tmp_path)
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, TINY.steps + 1))
    for a, b in zip(one, two, strict=True):  # the same global batches: equal up to rounding
        for key in ("edm_loss", "flow_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    _close(one_process, tmp_path)
    a = torch.load(one_process / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert a["calibration"].keys() == b["calibration"].keys() and b["complete"]


def test_resume_on_another_process_count(data_file, one_process, tmp_path):
    first = launch(tasks.train_caloclouds2, 2, TINY, data_file, tmp_path, False, 0.0, threads=1)
    assert first.step == 1 and not first.complete  # max_minutes=0: one step, then a checkpoint
    resumed = tasks.train_caloclouds2(TINY, data_file, tmp_path, resume=True)
    assert resumed.complete
    _close(one_process, tmp_path)


def test_a_failing_rank_is_its_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(ValueError, match="rank one broke"):
        launch(tasks.fail_on, 2, 1, "rank one broke", threads=1, grace_s=5.0)
    assert time.monotonic() - start < 60


def test_one_process_trainers_refuse_several(tmp_path):
    with pytest.raises(ValueError, match="trains in one process, not 2"):
        launch(tasks.single_process_loop, 2, tmp_path, threads=1)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_torchrun_start_of_a_one_process_command_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "4")  # what torchrun sets; the command never joined a group
    with pytest.raises(ValueError, match="trains in one process, not 4"):
        tasks.single_process_loop(tmp_path)


def test_too_many_processes_for_the_batch(data_file, tmp_path):
    small = CaloClouds2Config.from_dict(TINY.to_dict() | {"batch_size": 1})
    with pytest.raises(ValueError, match="at most 1 process"):
        launch(tasks.train_caloclouds2, 2, small, data_file, tmp_path, threads=1)


def _caloforge() -> list[str]:
    return [sys.executable, "-m", "caloforge"]


def _smoke_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "caloclouds2", "--data", str(data), "--out", str(out), "--preset", "smoke",
            "--steps", str(steps), "--threads", "1"]  # fmt: skip


def test_ctrl_c_stops_every_rank_with_a_checkpoint(data_file, tmp_path):
    out = tmp_path / "run"
    cmd = [*_caloforge(), *_smoke_args(data_file, out, 100_000), "--nproc", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] >= 1 and not state["complete"]
    resumed = subprocess.run(
        [*_caloforge(), *_smoke_args(data_file, out, 100_000), "--resume", "--max-minutes", "0.01"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] > state["step"]


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun"
)
def test_torchrun_start(data_file, tmp_path):
    out = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "caloforge",
        *_smoke_args(data_file, out, 6),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("complete after") == 1  # rank 0 reports
    assert torch.load(out / "checkpoint.pt", weights_only=True)["complete"]


def test_nproc_inside_torchrun_is_refused(monkeypatch, capsys, data_file, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli_run(monkeypatch, capsys, *_smoke_args(data_file, tmp_path / "run", 6), "--nproc", "2")
    assert code == 2 and "give the process count to torchrun only" in err
    assert not (tmp_path / "run").exists()


def test_a_killed_rank_is_named_not_the_gloo_error_of_its_peer():
    from caloforge.engines import WorkerDied

    with pytest.raises(WorkerDied, match=r"^rank 1 of the 2-process training died \(SIGKILL"):
        launch(tasks.killed_on, 2, 1, threads=1, grace_s=5.0)
