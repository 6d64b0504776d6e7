"""The family protocol and registry: lookup by format key, safe checkpoints, capabilities, and a
family defined outside caloforge (the analytic Gaussian of gaussian_family.py) running through
generate, --workers and evaluate."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import gaussian_family
from caloforge import asset_path
from caloforge.generation import generate_file
from caloforge.io import read_showers
from caloforge.models import CheckpointError, Family, GenerationError, GenerationRequest, registry
from caloforge.models.checkpoint import read_checkpoint
from conftest import run_cli

caloforge = run_cli
# Workers are single-threaded; one thread here too, so that "the same file" is bit for bit
# (other thread counts change the order of float sums, not the showers' randomness).
torch.set_num_threads(1)


@pytest.fixture
def gaussian(monkeypatch, tmp_path):
    """The Gaussian test family, registered as a plug-in (child processes see it too)."""
    monkeypatch.setenv("CALOFORGE_FAMILIES", "gaussian_family:FAMILY")
    registry.reload()
    yield gaussian_family.save_model(tmp_path / "gaussian.pt")
    monkeypatch.delenv("CALOFORGE_FAMILIES")
    registry.reload()


def test_registry_finds_families_by_format_and_imports_no_network_code():
    code = (
        "import sys; from caloforge.models import registry; "
        "names = [f.name for f in registry.families()]; "
        "print(names, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    families = ["bibae", "caloclouds1", "caloclouds2", "calodream", "caloinn", "epic", "l2lflows"]
    assert out.strip() == f"{families} False"
    assert registry.family_for_format("caloforge-caloclouds2").name == "caloclouds2"
    with pytest.raises(CheckpointError, match="no model family reads checkpoints of format 'nope'"):
        registry.family_for_format("nope")
    with pytest.raises(ValueError, match="already read by the family 'calodream'"):
        registry.register(Family("clone", "Clone", ("caloforge-calodream",), loader="x:y"))


@pytest.mark.parametrize(
    "name",
    [
        "default",
        "caloclouds2",
        "caloclouds1",
        "calodream",
        "calodream-lavit",
        "calodream-ds3",
        "caloinn",
        "epic-gan",
        "epic-fm",
        "epic-jedi",
        "epic-fm-g30",
        "epic-fm-q30",
    ],
)
def test_shipped_models_load_through_the_registry(name):
    generator = registry.load_generator(name)
    family = registry.get_family(generator.family)
    assert name == "default" or name in family.shipped
    assert family.output == generator.output
    if generator.output == "jets":
        assert generator.detector is None and "num_particles" in [c.name for c in generator.conditions]
    else:
        polar = generator.detector.name.startswith("calochallenge-")
        assert generator.output == ("voxels" if polar else "points")
        (energy,) = generator.conditions
        assert energy.name == "energy" and energy.low < energy.high
    plan = generator.plan(GenerationRequest())
    assert plan.sampler.network_calls >= 1 and plan.precision in ("float32", "bfloat16")


def _malicious_files(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    plain = tmp_path / "plain_pickle.pt"
    plain.write_bytes(pickle.dumps({"format": "caloforge-caloclouds2", "model": Payload()}))
    saved = tmp_path / "torch_saved.pt"
    torch.save({"format": "caloforge-calodream", "model": Payload()}, saved)
    return plain, saved


@pytest.mark.parametrize("command", ["generate", "info", "export", "calibrate", "bench"])
def test_a_malicious_checkpoint_runs_nothing(monkeypatch, capsys, tmp_path, command):
    marker = tmp_path / "pwned"
    for evil in _malicious_files(tmp_path, marker):
        out = tmp_path / "out.h5"
        args = {
            "generate": ["generate", "--model", evil, "-n", 2, "--out", out],
            "info": ["info", evil],
            "export": ["export", "--model", evil, "--out", tmp_path / "x.onnx"],
            "calibrate": ["calibrate", "--model", evil, "--data", asset_path()],
            "bench": [
                "bench",
                "--quick",
                "--no-geant4",
                "--no-onnx",
                "--model",
                f"x={evil}",
                "--out",
                tmp_path,
            ],
        }[command]
        caloforge(monkeypatch, *args, code=2)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "never unpickle" in err, err
        assert not marker.exists() and not out.exists()
    with pytest.raises(CheckpointError, match="is refused"):
        read_checkpoint(evil)


def test_foreign_and_corrupt_files_are_one_line(monkeypatch, capsys, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    for path, message in ((foreign, "has no format key"), (garbage, "not a readable checkpoint")):
        caloforge(monkeypatch, "generate", "--model", path, "--out", tmp_path / "o.h5", code=2)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_capabilities_a_family_lacks_are_one_line_errors(monkeypatch, capsys, tmp_path):
    caloforge(monkeypatch, "export", "--model", "calodream", "--out", tmp_path / "d.onnx", code=2)
    assert "CaloDREAM models cannot be exported as onnx" in capsys.readouterr().err
    caloforge(
        monkeypatch,
        "generate",
        "--model",
        "calodream",
        "--precision",
        "bfloat16",
        "--out",
        tmp_path / "d.h5",
        code=2,
    )
    assert "CaloDREAM models run in float32" in capsys.readouterr().err
    caloforge(
        monkeypatch,
        "calibrate",
        "--model",
        "calodream",
        "--data",
        asset_path(),
        "--sigma-max",
        5,
        "--out",
        tmp_path / "c.pt",
        code=2,
    )
    assert "--sigma-max is not a CaloDREAM calibration option" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_info_describes_models(monkeypatch, capsys):
    caloforge(monkeypatch, "info", "default", "calodream-lavit")
    out = capsys.readouterr().out
    assert "model families" in out and "caloforge-calodream" in out
    assert "points of gamma showers in ild-ecal" in out and "voxels of e- showers in calochallenge-ds2" in out
    assert "export (onnx, torchscript)" in out and "(latent, laViT)" in out


def test_calodream_workers_make_the_same_file(tmp_path):
    energies = np.geomspace(2.0, 90.0, 6)
    kw = {"seed": 5, "batch_size": 2}
    one = generate_file("calodream", energies, tmp_path / "one.h5", **kw)
    two = generate_file("calodream", energies, tmp_path / "two.h5", workers=2, **kw)
    a, b = read_showers(one.path), read_showers(two.path)
    np.testing.assert_array_equal(a.voxels, b.voxels)
    # batches are independent streams: a piece of the run, started at its batch, is the same
    from caloforge.models.calodream import generate, load_model

    model = load_model(registry.resolve_model("calodream"))
    (piece,) = list(generate(model, energies[2:4], batch_size=2, seed=5, first_batch=1))
    np.testing.assert_array_equal(piece.voxels, a.voxels[2:4])


def test_a_family_from_outside_runs_through_generate_workers_and_evaluate(
    gaussian, monkeypatch, capsys, tmp_path
):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    common = [
        "--model",
        gaussian,
        "--energies-file",
        asset_path(),
        "-n",
        120,
        "--seed",
        3,
        "--batch-size",
        16,
    ]
    caloforge(monkeypatch, "generate", *common, "--out", one)
    caloforge(monkeypatch, "generate", *common, "--workers", 2, "--out", two)
    a, b = read_showers(one), read_showers(two)
    np.testing.assert_array_equal(a.points, b.points)
    assert len(a) == 120 and (a.n_points > 100).all()
    with pytest.raises(GenerationError, match="outside the trained range"):
        generate_file(gaussian, [500.0], tmp_path / "x.h5")
    caloforge(monkeypatch, "info", gaussian)
    assert "gaussian (Gaussian test)" in capsys.readouterr().out
    report = tmp_path / "report"
    caloforge(
        monkeypatch,
        "evaluate",
        asset_path(),
        one,
        "--out",
        report,
        "--draws",
        2,
        "--splits",
        2,
        "--epochs",
        3,
        "--no-plots",
    )
    metrics = json.loads((report / "metrics.json").read_text())
    (candidate,) = metrics["candidates"]
    assert candidate["classifier_auc"][0] > 0.9  # an analytic toy is easy to tell from Geant4


def test_a_family_from_outside_trains_through_the_trainer_contract(gaussian, tmp_path):
    """A plug-in family declares a Training and gets ``caloforge train <command>`` with the shared
    loop: a fit that finds the numbers the data were made with, a time budget and --resume."""
    data, run = tmp_path / "data.h5", tmp_path / "run"
    truth = gaussian_family.save_model(tmp_path / "truth.pt", points_per_gev=20.0, width_mm=15.0, depth=9.0)
    generate_file(truth, np.linspace(10.0, 90.0, 200), data, seed=1)
    env = os.environ | {"CALOFORGE_FAMILIES": "gaussian_family:FAMILY"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(gaussian_family.__file__), env.get("PYTHONPATH", "")]
    )

    def train(*extra):
        args = [sys.executable, "-m", "caloforge", "train", "gaussian", "--data", data, "--out", run, *extra]
        return subprocess.run(list(map(str, args)), env=env, capture_output=True, text=True, timeout=300)

    help_text = subprocess.run(
        [sys.executable, "-m", "caloforge", "train", "gaussian", "--help"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert "--lr" in help_text and "--steps" in help_text and "--resume" in help_text
    first = train("--preset", "smoke", "--max-minutes", "0.0001")  # stops after its first step
    assert first.returncode == 0, first.stderr
    assert "stopped at step 1 of 200" in first.stdout
    again = train("--preset", "smoke")
    assert again.returncode == 2 and "exists: resume it" in again.stdout + again.stderr
    done = train("--preset", "smoke", "--resume")
    assert done.returncode == 0, done.stderr
    assert "complete" in done.stdout and "Gaussian test: 3 parameters" in done.stdout
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["complete"] and state["train"]["step"] == 200
    assert state["points_per_gev"] == pytest.approx(20.0, rel=0.15)
    assert state["width_mm"] == pytest.approx(15.0, rel=0.15)
    assert state["depth"] == pytest.approx(9.0, rel=0.15)
    fitted = registry.load_generator(run)
    assert fitted.complete and fitted.family == "gaussian"
    assert len(registry.get_family("gaussian").trainings) == 1


@pytest.mark.parametrize("model", ["epic-fm", "default"])
def test_a_command_reads_its_model_once(monkeypatch, tmp_path, model):
    registry.reload()
    reads = []
    real = registry.read_checkpoint
    monkeypatch.setattr(registry, "read_checkpoint", lambda path: reads.append(path) or real(path))
    energy = [] if model.startswith("epic") else ["--energy", 50]
    caloforge(monkeypatch, "generate", "--model", model, "-n", 4, *energy, "--out", tmp_path / "x.h5")
    assert len(reads) == 1
