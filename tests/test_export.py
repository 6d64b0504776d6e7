"""Export of CaloClouds II to ONNX and TorchScript: the explicit-noise wrapper, both formats, errors."""

import json
import sys

import numpy as np
import pytest
import torch

from caloforge.calibrate import NPointsCalibration, assign_layers
from caloforge.detector import get_detector
from caloforge.models.caloclouds2 import (
    POINTS_PAD,
    CaloClouds2,
    CaloClouds2Config,
    SamplerSpec,
)
from caloforge.models.caloclouds2.export import (
    EXPORT_FORMATS,
    ExportedCaloClouds2,
    _assign_layers,
    default_max_points,
    export_model,
)
from caloforge.models.caloclouds2.generation import generate_batch as _generate_batch
from caloforge.models.nn.showerflow import largest_remainder
from conftest import random_points

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TINY = CaloClouds2Config(name="tiny", flow_hidden=(16,), flow_transforms=1, net_widths=(4, 16, 4))
ENERGY = torch.tensor([20.0, 50.0, 85.0])


def _model(sampler: SamplerSpec) -> CaloClouds2:
    """A randomly initialised CaloClouds II with fitted standardisations and a non-trivial N calibration."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CaloClouds2(TINY, get_detector("ild-ecal"), max_points=64, energy_range=(10, 90))
    showers = random_points(30, 64, seed=5)
    model.flow.fit_standardisation(model.flow.features(showers, torch.Generator().manual_seed(0)))
    model.scaler.fit(torch.from_numpy(showers.points), torch.from_numpy(showers.mask))
    model.calibration = NPointsCalibration(64.0, 128, [0.0, 0.0, 0.5, 1.0], (0.0, 1.0))  # r = 1 + u / 2
    model.sampler = sampler
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CaloClouds2:
    return _model(SamplerSpec("heun", 3))


def _inputs(module: ExportedCaloClouds2, batch: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    noise = module.example_inputs(batch, torch.Generator().manual_seed(seed))[1:]
    return (ENERGY[:batch], *noise)


def _reference_noise(model: CaloClouds2, module: ExportedCaloClouds2, seed: int) -> tuple[torch.Tensor, ...]:
    """The noise ``_generate_batch`` draws with ``seed`` (one group of showers), as wrapper inputs."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(ENERGY)
    flow_noise = torch.randn(batch, module.n_features, generator=gen)
    n = model.calibration(model.flow.sample_from_noise(ENERGY, flow_noise).n_points)
    order = torch.argsort(n, stable=True)
    width = -(-int(n.max()) // POINTS_PAD) * POINTS_PAD  # generate() pads its point groups
    filler = torch.Generator().manual_seed(99)  # slots generate() does not draw: any noise
    point_noise = torch.randn(batch, module.max_points, 4, generator=filler)
    point_noise[order, :width] = torch.randn(batch, width, 4, generator=gen)
    out = [ENERGY, flow_noise, point_noise]
    if module.step_noise_steps:
        step_noise = torch.randn(module.step_noise_steps, batch, module.max_points, 4, generator=filler)
        for i in range(module.step_noise_steps):
            step_noise[i, order, :width] = torch.randn(batch, width, 4, generator=gen)
        out.append(step_noise)
    return tuple(out)


# ----------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize(
    "spec",
    [
        SamplerSpec("heun", 3),
        SamplerSpec("euler", 2),
        SamplerSpec("consistency", 1),
        SamplerSpec("consistency", 3),
    ],
    ids=["heun3", "euler2", "cm1", "cm3"],
)
def test_wrapper_equals_generate_batch(spec):
    model = _model(spec)
    module = ExportedCaloClouds2(model, max_points=128)  # wider than any shower: padding is computed
    showers, n_flow = _generate_batch(model, ENERGY, torch.Generator().manual_seed(7), points_per_call=10**6)
    counts, n, points, _ = module(*_reference_noise(model, module, 7))
    assert torch.equal(n, torch.from_numpy(showers.n_points).long())
    width = showers.points.shape[1]
    torch.testing.assert_close(points[:, :width], torch.from_numpy(showers.points), rtol=1e-4, atol=1e-4)
    assert (points[:, width:] == 0).all()
    flow = model.flow.sample_from_noise(ENERGY, _reference_noise(model, module, 7)[1])
    assert torch.equal(flow.n_points, n_flow)
    assert torch.equal(counts, largest_remainder(flow.point_fractions, n))


def test_wrapper_output_is_consistent(model):
    module = ExportedCaloClouds2(model)
    assert module.max_points == default_max_points(model) == 96  # 64 * (1 + 1/2)
    counts, n, points, needed = module(*_inputs(module, 3))
    assert torch.equal(needed, n)  # wide enough: nothing dropped
    assert counts.dtype == n.dtype == torch.int64 and points.dtype == torch.float32
    assert counts.shape == (3, 30) and points.shape == (3, 96, 4)
    assert torch.equal(counts.sum(1), n) and (n >= 1).all() and (n <= module.max_points).all()
    assert (counts >= 0).all() and torch.isfinite(points).all()
    for b in range(3):
        real, pad = points[b, : n[b]], points[b, n[b] :]
        assert (pad == 0).all() and (real[:, 3] > 0).all()
        layers = real[:, 2].floor().long()
        assert torch.equal(real[:, 2], layers + 0.5)
        assert torch.equal(torch.bincount(layers, minlength=30), counts[b])
    again = module(*_inputs(module, 3))
    assert all(torch.equal(a, b) for a, b in zip(again, (counts, n, points, needed), strict=True))


def test_small_max_points_drops_deepest_points(model):
    full = ExportedCaloClouds2(model)
    small = ExportedCaloClouds2(model, max_points=12)
    energy, flow_noise, point_noise = _inputs(full, 3)
    counts, n, _, _ = full(energy, flow_noise, point_noise)
    counts_s, n_s, points_s, needed_s = small(energy, flow_noise, point_noise[:, :12])
    assert (
        torch.equal(needed_s, n) and torch.equal(n_s, n.clamp(max=12)) and torch.equal(counts_s.sum(1), n_s)
    )
    assert (counts_s <= counts).all()
    assert (points_s[..., 3] > 0).sum(1).tolist() == n_s.tolist()


def test_assign_layers_equals_library():
    g = torch.Generator().manual_seed(3)
    points = torch.randn(4, 50, 4, generator=g)
    points[..., 2] = torch.randint(0, 5, (4, 50), generator=g).float()  # many ties in depth
    n = torch.tensor([50, 31, 7, 1])
    mask = torch.arange(50) < n.unsqueeze(1)
    counts = largest_remainder(torch.rand(4, 30, generator=g), n)
    assert torch.equal(_assign_layers(points, mask, counts), assign_layers(points, mask, counts))


def test_largest_remainder_breaks_ties_like_a_stable_sort():
    g = torch.Generator().manual_seed(0)
    frac = torch.randint(0, 3, (200, 30), generator=g).double() + (torch.arange(30) == 0)
    totals = torch.randint(1, 500, (200,), generator=g)
    f = frac / frac.sum(1, keepdim=True)
    exact = f * totals.double().unsqueeze(1)
    base = exact.floor()
    order = torch.argsort(exact - base, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(30).expand_as(order).contiguous())
    missing = totals - base.sum(1).long()
    assert torch.equal(largest_remainder(frac, totals), base.long() + (rank < missing.unsqueeze(1)).long())


def test_sample_from_noise_equals_sample(model):
    sample = model.flow.sample(ENERGY, torch.Generator().manual_seed(4))
    noise = torch.randn(3, model.flow.n_features, generator=torch.Generator().manual_seed(4))
    again = model.flow.sample_from_noise(ENERGY, noise)
    for name in ("n_points", "layer_counts", "e_vis", "energy_weights", "cog"):
        assert torch.equal(getattr(sample, name), getattr(again, name)), name


def test_wrapper_refuses_bad_arguments(model):
    with pytest.raises(ValueError, match="does not fit this model: use heun or euler"):
        ExportedCaloClouds2(model, sampler=SamplerSpec("consistency", 1))
    with pytest.raises(ValueError, match="--max-points 0 is outside"):
        ExportedCaloClouds2(model, max_points=0)
    with pytest.raises(ValueError, match="never makes more than"):
        ExportedCaloClouds2(model, max_points=100_000_000)  # refused before any allocation
    module = ExportedCaloClouds2(_model(SamplerSpec("consistency", 2)))
    with pytest.raises(ValueError, match="needs step_noise"):
        module(*_inputs(module, 2)[:3])


# ----------------------------------------------------------------------------- files


def test_onnx_matches_pytorch(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export_model(model, tmp_path / "model.onnx", "onnx")
    assert path == tmp_path / "model.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["detector"] == "ild-ecal" and meta["max_points"] == "96"
    assert (float(meta["energy_min_gev"]), float(meta["energy_max_gev"])) == (10.0, 90.0)
    assert (
        json.loads(meta["sampler"])["name"] == "heun" and meta["inputs"] == "energy, flow_noise, point_noise"
    )

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["energy", "flow_noise", "point_noise"]
    assert [o.name for o in session.get_outputs()] == ["layer_counts", "n_points", "points", "n_needed"]
    module = ExportedCaloClouds2(model)
    for batch in (1, 3):
        inputs = _inputs(module, batch, seed=batch)
        counts, n, points, _ = module(*inputs)
        feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
        counts_o, n_o, points_o, needed_full = session.run(None, feed)
        _assert_runtime_close(counts_o, n_o, points_o, counts.numpy(), n.numpy(), points.numpy())
        # The point axis is dynamic: fewer slots keep the shallowest points, as in PyTorch.
        feed["point_noise"] = feed["point_noise"][:, :12]
        counts_o, n_o, points_o, needed_o = session.run(None, feed)
        counts, n, points, _ = module(*inputs[:2], inputs[2][:, :12])
        assert points_o.shape == (batch, 12, 4)
        # What a shower asks for does not depend on the slots; it gets min(asked, slots) points.
        np.testing.assert_array_equal(needed_o, needed_full)
        np.testing.assert_array_equal(n_o, np.minimum(needed_o, 12))
        np.testing.assert_array_equal(counts_o.sum(1), n_o)
        _assert_runtime_close(counts_o, n_o, points_o, counts.numpy(), n.numpy(), points.numpy())


def test_onnx_consistency_sampler_with_step_noise(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model(SamplerSpec("consistency", 2))
    path = export_model(model, tmp_path / "cm.onnx", "onnx", max_points=32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = ExportedCaloClouds2(model, max_points=32)
    inputs = _inputs(module, 3)
    assert inputs[3].shape == (1, 3, 32, 4)
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    counts_o, n_o, points_o, _ = session.run(None, feed)
    counts, n, points, _ = module(*inputs)
    _assert_runtime_close(counts_o, n_o, points_o, counts.numpy(), n.numpy(), points.numpy())


def _assert_runtime_close(counts_o, n_o, points_o, counts, n, points):
    """ONNX Runtime's kernels round differently from PyTorch's (per CPU): a count may move by one
    and a point near a layer boundary may change layer; the rest agrees to float precision."""
    assert np.abs(n_o - n).max() <= 1 and np.abs(counts_o - counts).sum(1).max() <= 2
    same = n_o == n
    a, b = points_o[same], points[same]
    layer_ok = np.floor(a[..., 2]) == np.floor(b[..., 2])
    assert layer_ok.mean() > 0.98
    scale = np.abs(points).max()
    np.testing.assert_allclose(a[..., :2][layer_ok], b[..., :2][layer_ok], rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(a[..., 3].sum(-1), b[..., 3].sum(-1), rtol=1e-3, atol=1e-6)


def test_torchscript_round_trip(model, tmp_path):
    path = export_model(model, tmp_path / "model.pt", "torchscript", max_points=80)
    extra = {"caloforge.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["caloforge.json"])
    assert meta["max_points"] == "80" and meta["detector"] == "ild-ecal"
    module = ExportedCaloClouds2(model, max_points=80)
    for batch in (1, 3):
        inputs = _inputs(module, batch, seed=batch)
        for got, want in zip(loaded(*inputs), module(*inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-4)  # fused vs batched matmul kernels


def test_export_from_checkpoint(model, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save(model.metadata() | {"model": model.state_dict()}, ckpt)
    path = export_model(ckpt, tmp_path / "model.pt", "torchscript", max_points=16, sampler="euler", n_steps=2)
    module = ExportedCaloClouds2(model, max_points=16, sampler=SamplerSpec("euler", 2))
    inputs = _inputs(module, 2)
    for got, want in zip(torch.jit.load(str(path))(*inputs), module(*inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_export_errors(model, tmp_path, monkeypatch):
    assert EXPORT_FORMATS == ("onnx", "torchscript")
    with pytest.raises(ValueError, match="unknown export format 'tflite': use one of onnx, torchscript"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match="opset 16 or later"):
        export_model(model, tmp_path / "m.onnx", "onnx", opset=13)
    with pytest.raises(ValueError, match="sampler 'consistency' does not fit"):
        export_model(model, tmp_path / "m.pt", "torchscript", sampler="consistency")
    with pytest.raises(ValueError, match="does not exist, create it first"):
        export_model(model, tmp_path / "missing" / "m.pt", "torchscript")
    with pytest.raises(ValueError, match="does not exist"):  # CheckpointError
        export_model(tmp_path / "nothing.pt", tmp_path / "m.pt", "torchscript")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'caloforge\[export\]'"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_cli_writes_once(monkeypatch, tmp_path, capsys):
    import sys

    from caloforge import cli

    out = tmp_path / "shipped.onnx"
    for expected in (0, 2):
        monkeypatch.setattr(sys, "argv", ["caloforge", "export", "--model", "caloclouds2", "--out", str(out)])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        assert code == expected
    assert "exists" in capsys.readouterr().err
    from caloforge.export import load_exported

    gen = load_exported(out, threads=1)
    (showers,) = list(gen.generate([15.0, 60.0], batch_size=2, seed=1))
    assert gen.detector.name == "ild-ecal" and gen.network_calls == 25
    assert len(showers) == 2 and (showers.n_points > 100).all()


def test_onnx_generator_gives_every_shower_its_points(tmp_path):
    pytest.importorskip("onnxruntime")
    from caloforge.models.caloclouds2.export import OnnxGenerator

    model = _model(SamplerSpec("consistency", 1))
    generator = OnnxGenerator(export_model(model, tmp_path / "cm.onnx", "onnx"), threads=1)
    runs = []
    run = generator.session.run

    def recording(fetch, feed):
        out = run(fetch, feed)
        runs.append((feed["point_noise"].shape[1], dict(zip(fetch, out, strict=True))))
        return out

    generator.session.run = recording
    energies = [12.0, 12.0, 90.0, 88.0, 50.0, 60.0]  # the second batch needs more points than the first
    batches = list(generator.generate(energies, batch_size=2, seed=3))
    assert runs[0][0] == 1 and list(runs[0][1]) == ["n_needed"]  # the first batch learns the width
    full = [out for _, out in runs if "points" in out]
    assert len(full) > len(batches)  # the second batch's guess was too narrow: run again, wider
    # Each batch's last run gave every shower all its points.
    last_of_batch = []
    for width, out in runs:
        if "points" in out and (out["n_needed"] <= width).all():
            last_of_batch.append(out)
    assert len(last_of_batch) == len(batches)
    for batch, out in zip(batches, last_of_batch, strict=True):
        assert np.array_equal(out["n_points"], out["n_needed"]) and np.array_equal(
            batch.n_points, out["n_points"]
        )
    again = list(generator.generate(energies, batch_size=2, seed=3))
    for a, b in zip(batches, again, strict=True):
        np.testing.assert_array_equal(a.points, b.points)  # reproducible from the seed
