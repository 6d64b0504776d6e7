"""L2LFlows: per-layer coupling flows and the energy flow (invertibility, log-determinant), the
preprocessing round trip, config checks, training, generation on the command line, bad input."""

import json

import numpy as np
import pytest
import torch

from caloforge.detector import get_detector
from caloforge.io import open_showers, read_showers, write_showers
from caloforge.models.l2lflows import L2LFlowsConfig, load_model, train
from caloforge.models.l2lflows.flows import EnergyFlow, LayerFlows, squeeze, unsqueeze
from caloforge.models.l2lflows.variables import (
    cell_features,
    cells_from_features,
    energies_from_features,
    energy_features,
    layer_energies,
)
from caloforge.models.protocol import GenerationError, GenerationRequest
from caloforge.models.registry import load_generator
from conftest import QUICK_EVALUATE, cli_run, random_points, run_cli, toy_images

torch.set_num_threads(1)
DET = get_detector("ild-ecal-30")
SMOKE = L2LFlowsConfig.from_preset("smoke")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("l2l") / "toy.h5"
    write_showers(
        path, toy_images(64), DET, generator="toy", attrs={"energy_min_gev": 10.0, "energy_max_gev": 90.0}
    )
    return path


@pytest.fixture(scope="module")
def trained(image_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("l2l_run") / "run"
    train(SMOKE, image_file, run)
    return run


# ----------------------------------------------------------------------------- flows


@pytest.mark.parametrize(("kind", "shared"), [("affine", True), ("rqs", False)])
def test_layer_flows_invert_and_their_log_det_is_the_jacobians(kind, shared):
    torch.manual_seed(0)
    flow = LayerFlows(
        3, (4, 4), 2, 2, n_blocks=4, hidden=4, depth=2, kind=kind, bins=4, bound=3.0, shared=shared
    )
    for p in flow.parameters():  # away from the identity start
        p.data.normal_(0.0, 0.2)
    flow = flow.double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.double) * 2
    ctx = flow.context(torch.randn(2, 3, 4, 4, dtype=torch.double))
    s = torch.randn(2, 3, 2, dtype=torch.double)
    z, ladj = flow(x, ctx, s)
    assert not torch.allclose(z, x) and ladj.shape == (2, 3)
    torch.testing.assert_close(flow.inverse(z, ctx, s), x, rtol=0, atol=1e-4)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow(v.reshape(1, 3, 4, 4), ctx[:1], s[:1])[0].flatten(), x[0].flatten()
    )
    torch.testing.assert_close(ladj[0].sum(), torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-6)
    # one layer at a time (sampling) is the same map as all layers at once (training)
    z1, ladj1 = flow(x[:, 1:2], ctx[:, 1:2], s[:, 1:2], slice(1, 2))
    torch.testing.assert_close(z1, z[:, 1:2])
    torch.testing.assert_close(ladj1[:, 0], ladj[:, 1])
    back = squeeze(x)
    assert back.shape == (2, 3, 4, 2, 2) and torch.equal(unsqueeze(back), x)


def test_a_new_layer_flow_is_the_identity_and_context_is_the_previous_layers():
    flow = LayerFlows(4, (6, 6), 2, 2, n_blocks=2, hidden=4, depth=1)
    x = torch.randn(3, 4, 6, 6)
    z, ladj = flow(x, flow.context(x), torch.randn(3, 4, 2))
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(ladj, torch.zeros(3, 4))
    ctx = flow.context(x)
    assert ctx.shape == (3, 4, 2, 6, 6) and (ctx[:, 0] == 0).all() and (ctx[:, 1, 0] == 0).all()
    torch.testing.assert_close(ctx[:, 3, 0], x[:, 1])
    torch.testing.assert_close(ctx[:, 3, 1], x[:, 2])
    with pytest.raises(ValueError, match="even"):
        LayerFlows(2, (3, 3), 1, 2, 1, 4, 1)


def test_energy_flow_inverts_and_its_log_det_is_the_jacobians():
    torch.manual_seed(1)
    flow = EnergyFlow(5, 1, transforms=2, hidden=8, bins=4).double()
    x, c = torch.randn(3, 5, dtype=torch.double), torch.randn(3, 1, dtype=torch.double)
    z, ladj = flow(x, c)
    torch.testing.assert_close(flow.inverse(z, c), x, rtol=0, atol=1e-4)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c[:1])[0][0], x[0])
    torch.testing.assert_close(ladj[0], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------- preprocessing


def test_features_round_trip_keeps_the_showers():
    t = DET.threshold_mev
    images = torch.from_numpy(toy_images(4).voxels).reshape(4, 30, 30, 30)
    images[0, 29] = 0.0  # an empty layer
    e = layer_energies(images)
    gen = torch.Generator().manual_seed(0)
    g, y = energy_features(e, t, gen), cell_features(images, e, t, gen)
    assert torch.isfinite(g).all() and torch.isfinite(y).all()
    e_back = energies_from_features(g, t)
    torch.testing.assert_close(e_back, e, rtol=1e-5, atol=1e-4)
    back = cells_from_features(y, e_back, t)
    torch.testing.assert_close(back, images, rtol=1e-4, atol=1e-4)
    assert (back[0, 29] == 0).all()


def test_config_is_checked():
    for bad, match in [
        ({"hidden": 0}, "hidden"),
        ({"coupling": "spline"}, "coupling"),
        ({"lr": float("nan")}, "lr"),
        ({"val_fraction": 0.7}, "val_fraction"),
        ({"n_context": -1}, "n_context"),
    ]:
        with pytest.raises(ValueError, match=match):
            L2LFlowsConfig.from_preset("smoke", **bad)
    with pytest.raises(ValueError, match="preset"):
        L2LFlowsConfig.from_preset("huge")
    for name in ("cpu", "paper", "smoke"):
        config = L2LFlowsConfig.from_preset(name)
        assert L2LFlowsConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ----------------------------------------------------------------------------- training and generation


def test_training_writes_an_ema_checkpoint_and_resumes(trained, image_file, tmp_path):
    model = load_model(trained)
    assert model.complete and model.shape == (30, 30, 30)
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    ema = state["train"]["ema"]["module"]
    for key, value in ema.items():  # the inference weights are the averaged ones
        torch.testing.assert_close(state["model"][f"net.{key}"], value)
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert log and all(np.isfinite(v) for row in log for k, v in row.items() if k.startswith("nll"))
    short = tmp_path / "short"
    train(SMOKE, image_file, short, max_minutes=0)
    assert not load_model(short).complete
    train(SMOKE, image_file, short, resume=True)
    resumed = load_model(short)
    assert resumed.complete
    for key, value in resumed.state_dict().items():  # a resumed run is the uninterrupted one
        torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_generator_follows_the_protocol(trained):
    gen = load_generator(trained)
    assert gen.family == "l2lflows" and gen.output == "voxels" and gen.particle == "gamma"
    plan = gen.plan(GenerationRequest())
    e = {"energy": np.array([15.0, 50.0, 85.0])}
    a, b = gen.generate_batch(e, plan, 3, 0), gen.generate_batch(e, plan, 3, 0)
    assert np.array_equal(a.voxels, b.voxels) and a.voxels.shape == (3, 27000)
    assert not np.array_equal(a.voxels, gen.generate_batch(e, plan, 3, 1).voxels)
    assert np.isfinite(a.voxels).all() and (a.voxels >= 0).all()
    hits = a.voxels[a.voxels > 0]
    assert hits.size and hits.min() >= DET.threshold_mev * (1 - 1e-5)
    assert gen.describe()["parameters"] > 0
    for request, match in [
        (GenerationRequest(sampler="rk4"), "one pass"),
        (GenerationRequest(precision="bfloat16"), "float32"),
        (GenerationRequest(options={"tau": 3}), "tau"),
        (GenerationRequest(options={"temperature": -1.0}), "temperature"),
    ]:
        with pytest.raises(GenerationError, match=match):
            gen.plan(request)


def test_train_generate_evaluate_on_the_command_line(monkeypatch, capsys, image_file, tmp_path):
    run, out, again, report = tmp_path / "run", tmp_path / "gen.h5", tmp_path / "again.h5", tmp_path / "rep"
    run_cli(monkeypatch, "train", "l2lflows", "--data", image_file, "--out", run, "--preset", "smoke")
    source = ("--energies-file", image_file, "-n", 20, "--seed", 2)
    run_cli(monkeypatch, "generate", "--model", run / "checkpoint.pt", *source, "--out", out)
    run_cli(monkeypatch, "generate", "--model", run / "checkpoint.pt", *source, "--out", again)
    with open_showers(out) as f:
        assert f.kind == "voxels" and f.generator == "l2lflows" and len(f) == 20
    showers = read_showers(out)
    np.testing.assert_array_equal(showers.voxels, read_showers(again).voxels)
    layers = showers.voxels.reshape(20, 30, -1).sum(-1)
    assert np.isfinite(layers).all() and (layers >= 0).all() and (layers.sum(-1) > 0).all()
    run_cli(monkeypatch, "evaluate", image_file, out, "--out", report, *QUICK_EVALUATE)
    assert (report / "metrics.json").exists()


def test_a_point_file_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    points = tmp_path / "points.h5"
    write_showers(points, random_points(30, 20), get_detector("ild-ecal"), generator="toy")
    with pytest.raises(ValueError, match="caloforge convert --detector ild-ecal-30"):
        train(SMOKE, points, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    code, _, err = cli_run(
        monkeypatch, capsys, "train", "l2lflows", "--data", points, "--out", tmp_path / "b"
    )
    assert code != 0 and "holds points" in err and len(err.strip().splitlines()) <= 3
