"""``--device``: what each spelling resolves to with and without CUDA devices, the one-line
refusals of every command that takes it (CI has no GPU: the CUDA count is simulated), and
``calibrate`` and ``train-solver`` on the path a GPU takes, run on the CPU."""

from pathlib import Path

import pytest
import torch

import gaussian_family
from caloforge import asset_path, devices
from caloforge.calibrate import calibration_device
from caloforge.generation import generation_device
from caloforge.models import registry
from caloforge.models.registry import load_generator
from conftest import cli_run


@pytest.fixture
def cuda_devices(monkeypatch):
    """Pretend torch sees ``n`` CUDA devices (``cuda_devices(n)``)."""

    def pretend(n: int) -> None:
        monkeypatch.setattr(devices, "_cuda_count", lambda: n)

    return pretend


@pytest.fixture
def gaussian(monkeypatch, tmp_path):
    """A model of the Gaussian test family (tests/gaussian_family.py), a plug-in that generates
    on the CPU only (every built-in family generates on a GPU too)."""
    monkeypatch.setenv("CALOFORGE_FAMILIES", "gaussian_family:FAMILY")
    registry.reload()
    yield gaussian_family.save_model(tmp_path / "gaussian.pt")
    monkeypatch.delenv("CALOFORGE_FAMILIES")
    registry.reload()


@pytest.mark.parametrize(
    ("spec", "count", "want"),
    [
        ("cpu", 0, "cpu"),
        ("cpu", 2, "cpu"),
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda:0"),
        ("cuda", 2, "cuda:0"),
        ("CUDA:1", 2, "cuda:1"),
        (" cuda:0 ", 1, "cuda:0"),
    ],
)
def test_resolve_device(cuda_devices, spec, count, want):
    cuda_devices(count)
    assert devices.resolve_device(spec) == want


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("gpu", 2, "unknown device 'gpu'"),
        ("cpu:1", 2, "unknown device 'cpu:1'"),
        ("cuda:x", 2, "unknown device 'cuda:x'"),
        ("cuda", 0, "torch sees no CUDA device"),
        ("cuda:0", 0, "torch sees no CUDA device"),
        ("cuda:2", 2, "torch sees 2 CUDA device(s), cuda:0 to cuda:1"),
    ],
)
def test_resolve_device_refuses(cuda_devices, spec, count, message):
    cuda_devices(count)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        devices.resolve_device(spec)


def test_a_cpu_only_step_takes_auto_as_the_cpu_and_refuses_cuda(cuda_devices):
    cuda_devices(1)
    assert devices.resolve_device("auto", cpu_only="X training") == "cpu"
    assert devices.resolve_device("cpu", cpu_only="X training") == "cpu"
    with pytest.raises(ValueError, match="X training runs on the CPU only so far; use --device cpu or auto"):
        devices.resolve_device("cuda", cpu_only="X training")


def test_generation_device_follows_the_family(cuda_devices, gaussian):
    cuda_devices(1)
    cc2, toy = load_generator("caloclouds2-cm"), load_generator(gaussian)
    assert generation_device(cc2, "auto") == "cuda:0"  # CaloClouds II generates on a GPU
    assert generation_device(cc2, "auto", spread=True) == "cpu"  # --workers: CPU processes
    assert generation_device(toy, "auto") == "cpu"
    with pytest.raises(ValueError, match="Gaussian test generation runs on the CPU only"):
        generation_device(toy, "cuda")
    cuda_devices(0)
    assert generation_device(cc2, "auto") == "cpu"


def _commands(tmp_path):
    points = tmp_path / "points.h5"  # never read: the device is refused first
    return {
        "generate": ["generate", "-n", "2", "--out", tmp_path / "g.h5"],
        "simulate --fast-sim": ["simulate", "-n", "2", "--fast-sim", "default", "--out", tmp_path / "s.h5"],
        "bench": ["bench", "--quick", "--out", tmp_path / "bench"],
        "evaluate": ["evaluate", points, points, "--out", tmp_path / "report"],
        "calibrate": ["calibrate", "--model", tmp_path / "run", "--data", points],
        "train": ["train", "caloinn", "--data", points, "--out", tmp_path / "run"],
        "distill": ["distill", "--teacher", "caloclouds2", "--data", points, "--out", tmp_path / "cm"],
        "train-solver": ["train-solver", "--model", tmp_path / "run", "--data", points],
    }


@pytest.mark.parametrize(
    "command",
    ["generate", "simulate --fast-sim", "bench", "evaluate", "calibrate", "train", "distill", "train-solver"],
)
def test_cuda_without_cuda_is_one_line_exit_2_and_writes_nothing(
    monkeypatch, capsys, cuda_devices, tmp_path, command
):
    cuda_devices(0)
    code, _, err = cli_run(monkeypatch, capsys, *_commands(tmp_path)[command], "--device", "cuda")
    assert code == 2, err
    assert "torch sees no CUDA device" in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_calibrate_and_train_solver_take_cuda_where_torch_sees_one(
    monkeypatch, capsys, cuda_devices, tmp_path
):
    """No step refuses a CUDA device by name: with two GPUs (simulated), ``--device cuda:N``
    reaches the family's calibrator and the solver training as ``cuda:N`` and ``auto`` as
    ``cuda:0`` (the two are stood in for: running them needs the GPU)."""
    from caloforge.models import calodream
    from caloforge.models.caloclouds2 import calibration
    from caloforge.odesolvers import BNSSolver

    seen: list[tuple[str, str | None]] = []

    def calibrator(path, data, out, *, seed, progress, device="cpu", **options):
        seen.append(("calibrate", device))
        return "calibrated"

    def train_solver(model, data, steps, *, device=None, **kwargs):
        seen.append(("train-solver", device))
        return BNSSolver(steps)

    monkeypatch.setattr(calibration, "calibrate_command", calibrator)
    monkeypatch.setattr(calodream, "train_solver", train_solver)
    cuda_devices(2)
    specs = {"cuda:1": "cuda:1", "cuda": "cuda:0", "auto": "cuda:0"}
    calibrate = ["calibrate", "--model", "caloclouds2", "--data", asset_path("ild_reference.h5")]
    solver = ["train-solver", "--model", asset_path("calodream_ds2_cpu.pt"), "--steps", "2"]
    solver += ["--data", asset_path("ds2_reference.h5")]
    for i, spec in enumerate(specs):
        for args, name in ((calibrate, "c"), (solver, "s")):
            code, _, err = cli_run(
                monkeypatch, capsys, *args, "--out", tmp_path / f"{name}{i}.pt", "--device", spec
            )
            assert code == 0, err
    want = [(step, device) for device in specs.values() for step in ("calibrate", "train-solver")]
    assert seen == want


def test_a_calibrator_without_a_device_keyword_runs_on_the_cpu(monkeypatch, capsys, cuda_devices, tmp_path):
    """A plug-in family's calibrator written before ``device`` existed: ``auto`` runs it on the
    CPU, called as before (without the keyword), and a CUDA device is refused by name."""
    from caloforge.models.caloclouds2 import calibration

    called: list[Path] = []

    def older(path, data, out, *, seed, progress):
        called.append(out)
        return "calibrated"

    cuda_devices(1)
    assert calibration_device(calibration.calibrate_command, "CaloClouds II", "auto") == "cuda:0"
    assert calibration_device(older, "Toy", "auto") == "cpu"
    with pytest.raises(ValueError, match="Toy calibration runs on the CPU only so far"):
        calibration_device(older, "Toy", "cuda:0")
    monkeypatch.setattr(calibration, "calibrate_command", older)
    base = ["calibrate", "--model", "caloclouds2", "--data", asset_path("ild_reference.h5"), "--out"]
    code, _, err = cli_run(monkeypatch, capsys, *base, tmp_path / "a.pt")
    assert code == 0 and called == [tmp_path / "a.pt"], err
    code, _, err = cli_run(monkeypatch, capsys, *base, tmp_path / "b.pt", "--device", "cuda")
    assert code == 2 and "CaloClouds II calibration runs on the CPU only" in err, err


def _tensors_on(state: object) -> set[str]:
    """The devices of every tensor in a loaded checkpoint (loaded without ``map_location``)."""
    if isinstance(state, torch.Tensor):
        return {state.device.type}
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (list, tuple)):
        return set().union(*map(_tensors_on, state)) if state else set()
    return set()


def _small_calodream(path: Path) -> Path:
    """An untrained ``smoke`` CaloDREAM log-energy shape model with its energy network (the
    shipped one's dopri5 references take a minute)."""
    from caloforge.detector import get_detector
    from caloforge.models.calodream import CaloDreamConfig
    from caloforge.models.calodream.model import CaloDream
    from caloforge.models.checkpoint import save_checkpoint

    config, detector = (
        CaloDreamConfig.from_preset("smoke", shape_target="log-energy"),
        get_detector("calochallenge-ds2"),
    )
    model = CaloDream(config, detector, "shape", (1.0, 1000.0))
    model.energy_model = CaloDream(config, detector, "energy", (1.0, 1000.0))
    save_checkpoint(model.inference_state(), path)
    return path


def test_calibrate_and_train_solver_run_on_the_device_they_are_given(monkeypatch, capsys, tmp_path):
    """``--device cpu`` through the device path a GPU takes (the networks placed on the given
    device, the draws on the host): the calibrations and the solver are fitted and stored as
    CPU tensors and plain numbers, so the checkpoints load anywhere."""
    from caloforge.models.caloclouds2 import calibration as points_calibration
    from caloforge.models.calodream import bns, generation, load_model
    from caloforge.models.calodream import calibration as voxel_calibration

    placed: list[str] = []

    def place(model, device):
        placed.append(str(device))
        return generation.place(model, device)

    fit = points_calibration.calibrate

    def calibrate(*args, **kwargs):
        placed.append(kwargs["device"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(voxel_calibration, "place", place)
    monkeypatch.setattr(bns, "place", place)
    monkeypatch.setattr(points_calibration, "calibrate", calibrate)
    points, voxels = asset_path("ild_reference.h5"), asset_path("ds2_reference.h5")
    dream = _small_calodream(tmp_path / "small.pt")
    runs = {
        "cm.pt": ["calibrate", "--model", "caloclouds2-cm", "--data", points, "--showers", "4"],
        "dream.pt": ["calibrate", "--model", dream, "--data", voxels, "--showers", "20", "--bins", "2"],
        "bns.pt": [
            "train-solver", "--model", dream, "--data", voxels, "--steps", "2", "--n-train", "2",
            "--batch-size", "2", "--iterations", "1",
        ],
    }  # fmt: skip
    for name, args in runs.items():
        code, _, err = cli_run(monkeypatch, capsys, *args, "--out", tmp_path / name, "--device", "cpu")
        assert code == 0, err
    assert placed == ["cpu"] * 3
    states = {name: torch.load(tmp_path / name, weights_only=False) for name in runs}
    assert all(_tensors_on(state) == {"cpu"} for state in states.values())
    shipped = torch.load(asset_path("caloclouds2_cm_cpu.pt"), weights_only=False)["calibration"]
    assert states["cm.pt"]["calibration"]["ratio_coeffs"] != shipped["ratio_coeffs"]
    assert all(type(c) is float for c in states["cm.pt"]["calibration"]["ratio_coeffs"])
    assert load_model(tmp_path / "dream.pt").calibration.source.shape[0] == 2
    shape = states["bns.pt"]["sampler"]["shape"]
    assert shape["method"] == "bns" and all(type(t) is float for t in shape["bns"]["time_logits"])


def test_generate_refuses_cuda_for_a_cpu_family_and_auto_takes_the_cpu(
    monkeypatch, capsys, cuda_devices, gaussian, tmp_path
):
    cuda_devices(1)
    out = tmp_path / "v.h5"
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "-n", "2", "--model", gaussian, "--device", "cuda", "--out", out
    )
    assert code == 2 and "Gaussian test generation runs on the CPU only" in err
    assert not out.exists()
    code, _, err = cli_run(monkeypatch, capsys, "generate", "-n", "2", "--model", gaussian, "--out", out)
    assert code == 0, err  # --device auto: the CPU, even where torch sees a GPU
    assert out.exists()


def test_trainings_with_a_gpu_path_take_cuda(cuda_devices):
    """Every training that declares ``gpu`` resolves ``--device cuda:N`` where torch sees the
    device (the run itself needs a GPU; on the CPU the same path is tested in
    tests/test_data_parallel.py)."""
    from caloforge.models.registry import families

    cuda_devices(2)
    trainings = [t for f in families() for t in f.trainings]
    assert all(t.gpu for t in trainings), [t.command for t in trainings if not t.gpu]
    for t in trainings:
        assert t.device("cuda:1") == "cuda:1"
        assert t.device("auto") == "cuda:0"


def test_several_processes_take_one_gpu_each(cuda_devices):
    cuda_devices(2)
    assert devices.processes_device("cuda", "cuda:0", 2) == "cuda:0"  # ranks on cuda:0 and cuda:1
    assert devices.processes_device("auto", "cuda:0", 4) == "cpu"  # more ranks than GPUs: the CPU
    with pytest.raises(ValueError, match="one GPU per process, and torch sees 2; use --nproc 2 or fewer"):
        devices.processes_device("cuda", "cuda:0", 4)
    with pytest.raises(ValueError, match="give --device cuda"):
        devices.processes_device("cuda:1", "cuda:1", 2)
    assert devices.processes_device("cuda:1", "cuda:1", 1) == "cuda:1"


def test_nproc_beyond_the_gpus_is_one_line_exit_2(monkeypatch, capsys, cuda_devices, tmp_path):
    cuda_devices(1)
    points = tmp_path / "points.h5"  # never read: refused first
    args = [
        "train",
        "caloinn",
        "--data",
        points,
        "--out",
        tmp_path / "run",
        "--device",
        "cuda",
        "--nproc",
        "2",
    ]
    code, _, err = cli_run(monkeypatch, capsys, *args)
    assert code == 2 and "one GPU per process, and torch sees 1" in err
    assert len(err.strip().splitlines()) == 1
