"""Training guards: a run whose loss or gradient stops being finite ends with one line and keeps
its last good checkpoint (never a non-finite one); the training commands' option ranges."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from caloforge.cliutils import MAX_SEED, report_run, widths
from caloforge.detector import get_detector
from caloforge.io import VoxelShowers, write_showers
from caloforge.models._training import (
    MAX_SKIPPED_IN_A_ROW,
    TrainingDiverged,
    TrainResult,
    non_finite_entry,
    optimizer_step,
    run_loop,
    save_finite_checkpoint,
)
from caloforge.models.checkpoint import read_checkpoint
from conftest import cli_run as run
from conftest import random_points

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def point_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("points") / "train.h5"
    attrs = {"energy_min_gev": 10.0, "energy_max_gev": 90.0}
    write_showers(path, random_points(30, 60, seed=5), generator="test", attrs=attrs)
    return path


@pytest.fixture(scope="module")
def voxel_file(tmp_path_factory):
    det = get_detector("calochallenge-ds2")
    rng = np.random.default_rng(0)
    n = 40
    energy = np.exp(rng.uniform(0.0, np.log(100.0), n))
    vox = rng.gamma(2.0, 1.0, (n, 45, 16, 9)).astype(np.float32)
    vox *= (energy * 15.0 / vox.sum(axis=(1, 2, 3)))[:, None, None, None]  # 1.5 % sampling
    vox[vox < det.threshold_mev] = 0.0
    path = tmp_path_factory.mktemp("voxels") / "train.h5"
    attrs = {"energy_min_gev": 1.0, "energy_max_gev": 100.0}
    write_showers(path, VoxelShowers(energy, vox.reshape(n, -1)), det, generator="toy", attrs=attrs)
    return path


# ----------------------------------------------------------------------------- the loop's rule


class Toy:
    """A one-weight regression run for :func:`run_loop`: its loss is NaN at the steps in ``bad``;
    at ``poison`` its weight turns infinite after a normal (finite) update."""

    def __init__(self, bad=(), poison: int | None = None) -> None:
        self.net = nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.bad, self.poison = set(bad), poison
        self.step = self.skipped = 0
        self.elapsed_s = 0.0
        self.last_losses: dict[str, float] = {}

    def one_step(self) -> list[tuple[str, float | None]]:
        loss = (self.net(torch.ones(4, 1)) - 2.0).pow(2).mean()
        if self.step in self.bad:
            loss = loss * math.nan
        if not optimizer_step(loss, self.net, self.opt, 1.0):
            self.skipped += 1
            return [("loss", None)]
        if self.step == self.poison:
            with torch.no_grad():
                self.net.weight.fill_(math.inf)
        return [("loss", loss.item())]

    def save(self, path) -> None:
        save_finite_checkpoint({"format": "toy", "step": self.step, "net": self.net.state_dict()}, path)


def loop(trainer: Toy, ckpt, steps: int = 50) -> None:
    """Every step checkpointed (checkpoint_minutes=0)."""
    run_loop(trainer, steps, ckpt, 5, 0.0, None, None, 0.0)


def test_steps_skipped_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    trainer = Toy(bad=range(5, 100))
    with pytest.raises(TrainingDiverged) as info:
        loop(trainer, ckpt)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # the command line's user errors: exit 2
    assert "\n" not in message
    assert f"stopped at step {5 + MAX_SKIPPED_IN_A_ROW}" in message
    assert f"not finite in {MAX_SKIPPED_IN_A_ROW} steps in a row" in message
    assert "non-finite or extreme values" in message and "learning rate" in message
    assert f"last good checkpoint '{ckpt}' (step 5) is kept" in message
    saved = read_checkpoint(ckpt)
    assert saved["step"] == 5 and non_finite_entry(saved) is None


def test_a_high_share_of_skipped_steps_stops_the_run(tmp_path):
    trainer = Toy(bad=range(0, 100, 4))  # one step in four: never 10 in a row
    with pytest.raises(TrainingDiverged, match=r"stopped at step 20: .* in 5 of the 20 steps"):
        loop(trainer, tmp_path / "checkpoint.pt")


def test_rare_skipped_steps_complete_and_are_reported(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    trainer = Toy(bad={3})
    loop(trainer, ckpt, steps=30)
    assert trainer.step == 30 and trainer.skipped == 1
    result = TrainResult.of(trainer, ckpt, 30, True, 0.0, {"net": 2})
    assert result.skipped == 1
    report_run(result)
    out = capsys.readouterr().out
    assert "complete" in out and "1 optimiser update(s) skipped" in out


def test_non_finite_weights_are_never_written(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    trainer = Toy(poison=7)
    with pytest.raises(TrainingDiverged, match=r"not writing .*'net\.weight' holds NaN or infinite values"):
        loop(trainer, ckpt)
    saved = read_checkpoint(ckpt)
    assert saved["step"] == 7 and non_finite_entry(saved) is None


def test_non_finite_entry_finds_nested_tensors_and_floats():
    state = {"a": [torch.zeros(2), {"b": torch.tensor([1.0, math.nan])}], "n": torch.arange(3)}
    assert non_finite_entry(state) == "a.1.b"
    assert non_finite_entry({"x": 1.0, "cal": {"k": [0.5, math.inf]}}) == "cal.k.1"
    assert non_finite_entry({"rng": torch.zeros(4, dtype=torch.uint8), "n": 3, "s": "nan"}) is None


def test_a_negative_time_budget_is_refused(tmp_path):
    with pytest.raises(ValueError, match="number of minutes >= 0"):
        run_loop(Toy(), 5, tmp_path / "checkpoint.pt", 5, 0.0, None, -1.0, 0.0)


# ----------------------------------------------------------------------------- every family


def test_caloclouds2_training_on_a_nan_energy_stops(monkeypatch, capsys, point_file, tmp_path):
    import caloforge.models.caloclouds2.training as training

    load = training.load_training_data

    def poisoned(*args, **kwargs):  # past the reader's own checks
        data = load(*args, **kwargs)
        data.energy[3] = math.nan
        return data

    monkeypatch.setattr(training, "load_training_data", poisoned)
    out = tmp_path / "run"
    code, _, err = run(
        monkeypatch, capsys, "train", "caloclouds2", "--data", point_file, "--out", out, "--preset", "smoke"
    )
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "stopped at step" in err and "not finite" in err and "none is kept" in err
    assert not (out / "checkpoint.pt").exists()


def test_distillation_that_diverges_keeps_its_last_good_checkpoint(monkeypatch, point_file, tmp_path):
    import caloforge.models.caloclouds2.distillation as distillation
    from caloforge.models.registry import resolve_model

    loss, calls = distillation.consistency_distillation_loss, []

    def diverging(*args, **kwargs):  # finite for 3 steps, then NaN
        calls.append(1)
        value = loss(*args, **kwargs)
        return value if len(calls) <= 3 else value * math.nan

    monkeypatch.setattr(distillation, "consistency_distillation_loss", diverging)
    config = distillation.DistillConfig.from_preset("smoke", checkpoint_minutes=0.0)
    out = tmp_path / "cm"
    with pytest.raises(TrainingDiverged, match=r"stopped at step 13: .* \(step 3\) is kept"):
        distillation.distill(resolve_model("caloclouds2"), point_file, out, config)
    saved = read_checkpoint(out / "checkpoint.pt")
    assert saved["distill"]["step"] == 3 and non_finite_entry(saved) is None


def test_calodream_training_on_non_finite_variables_stops(monkeypatch, capsys, voxel_file, tmp_path):
    import caloforge.models.calodream.training as training

    load = training.load_voxel_data

    def poisoned(*args, **kwargs):
        data = load(*args, **kwargs)
        data.u[0, 0] = math.nan
        return data

    monkeypatch.setattr(training, "load_voxel_data", poisoned)
    out = tmp_path / "run"
    args = ("train", "calodream-energy", "--data", voxel_file, "--out", out, "--preset", "smoke")
    code, stdout, err = run(monkeypatch, capsys, *args)
    assert code == 2, stdout + err
    assert len(err.strip().splitlines()) == 1
    assert f"stopped at step {MAX_SKIPPED_IN_A_ROW}: the loss or gradient norm was not finite" in err
    assert not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- option ranges


def test_widths_parse_positive_integers_only():
    assert widths("4,64,4") == (4, 64, 4) and widths(None) is None
    for bad in ("4,0,4", "4,-2,4", "4,,4", "4,x,4", ""):
        with pytest.raises(ValueError, match=f"--widths: layer widths must be positive integers.*'{bad}'"):
            widths(bad)


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (("train", "caloclouds2"), "--widths", "4,0,4"),
        (("distill", "--teacher", "caloclouds2"), "--student-widths", "4,-1,4"),
    ],
)
def test_bad_widths_are_one_line(monkeypatch, capsys, tmp_path, command, option, value):
    args = (*command, "--data", tmp_path / "none.h5", "--out", tmp_path / "out", option, value)
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert err.strip() == (
        f"error: {option}: layer widths must be positive integers, e.g. 4,64,128,64,4; got '{value}'"
    )


TRAINING_COMMANDS = [
    ("train", "caloclouds2", "--out", "out"),
    ("distill", "--teacher", "caloclouds2", "--out", "out"),
    ("train", "calodream-energy", "--out", "out"),
    ("train", "calodream-shape", "--out", "out"),
    ("train", "calodream-vae", "--out", "out"),
]


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
@pytest.mark.parametrize("command", TRAINING_COMMANDS, ids=lambda c: c[1])
def test_the_time_budget_must_be_positive(monkeypatch, capsys, command, value):
    code, _, err = run(monkeypatch, capsys, *command, "--data", "none.h5", "--max-minutes", value)
    assert code == 2 and "Traceback" not in err
    assert "Invalid value for '--max-minutes': must be more than 0 minutes" in err


@pytest.mark.parametrize("value", ["-1", str(MAX_SEED + 1), "99999999999999999999999"])
@pytest.mark.parametrize(
    "command", [*TRAINING_COMMANDS, ("train-solver", "--model", "none.pt")], ids=lambda c: c[1]
)
def test_seeds_outside_the_range_are_usage_errors(monkeypatch, capsys, command, value):
    code, _, err = run(monkeypatch, capsys, *command, "--data", "none.h5", "--seed", value)
    assert code == 2 and "Invalid value for '--seed'" in err and "internal error" not in err


def test_the_largest_seed_trains(monkeypatch, capsys, voxel_file, tmp_path):
    assert MAX_SEED == 2**63 - 1
    out = tmp_path / "run"
    args = ("train", "calodream-energy", "--data", voxel_file, "--out", out, "--preset", "smoke")
    code, stdout, err = run(monkeypatch, capsys, *args, "--steps", 2, "--seed", MAX_SEED)
    assert code == 0, stdout + err
    assert "complete" in stdout and (out / "checkpoint.pt").exists()


def test_a_misspelled_train_keyword_is_refused_before_any_work(tmp_path):
    from caloforge.models.caloinn import CaloINNConfig, train

    with pytest.raises(TypeError, match="unexpected keyword argument 'max_minute'"):
        train(CaloINNConfig.from_preset("smoke"), tmp_path / "missing.h5", tmp_path / "run", max_minute=1)
    assert not (tmp_path / "run").exists()
