"""``--device``: what each spelling resolves to with and without CUDA devices, and the one-line
refusals of every command that takes it (CI has no GPU: the CUDA count is simulated)."""

import pytest

import gaussian_family
from caloforge import devices
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


@pytest.mark.parametrize(
    ("command", "what"),
    [("train-solver", "solver training"), ("calibrate", "calibration")],
)
def test_steps_without_a_gpu_path_refuse_cuda_by_name(
    monkeypatch, capsys, cuda_devices, tmp_path, command, what
):
    cuda_devices(1)
    code, _, err = cli_run(monkeypatch, capsys, *_commands(tmp_path)[command], "--device", "cuda:0")
    assert code == 2, err
    assert f"{what} runs on the CPU only so far" in err


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
