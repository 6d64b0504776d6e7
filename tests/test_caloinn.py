"""CaloINN: coupling blocks (invertibility, log-determinant), the preprocessing round trip,
training and resuming, generation through the protocol and the command line, bad input."""

import json

import h5py
import numpy as np
import pytest
import torch

from caloforge.detector import get_detector
from caloforge.generation import generate_file
from caloforge.io import open_showers, read_showers, write_showers
from caloforge.models.caloinn import CaloINN, CaloINNConfig, layer_features, load_model, train
from caloforge.models.caloinn import voxels_from_layer_features as decode
from caloforge.models.nn.coupling import CouplingFlow, paired_masks
from caloforge.models.protocol import CheckpointError, GenerationError, GenerationRequest
from caloforge.models.registry import load_generator
from conftest import QUICK_EVALUATE, cli_run, run_cli, toy_voxels

torch.set_num_threads(1)
DET = get_detector("calochallenge-ds2")
SMOKE = CaloINNConfig.from_preset("smoke")


@pytest.fixture(scope="module")
def voxel_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inn") / "toy.h5"
    attrs = {"energy_min_gev": 1.0, "energy_max_gev": 100.0}
    write_showers(path, toy_voxels(80), DET, generator="toy", attrs=attrs)
    return path


@pytest.fixture(scope="module")
def trained(voxel_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("inn_run") / "run"
    train(SMOKE, voxel_file, run)
    return run


# ----------------------------------------------------------------------------- blocks


def _random_flow(kind: str, conditioner: str, shape=(3, 5)) -> CouplingFlow:
    torch.manual_seed(1)
    flow = CouplingFlow(shape, 2, n_blocks=3, hidden=6, kernel=3, depth=2, kind=kind, bins=4, bound=3.0)
    if conditioner == "dense":
        flow = CouplingFlow(shape, 2, 3, 6, kind=kind, bins=4, bound=3.0, conditioner="dense")
    for p in flow.parameters():  # away from the identity start
        p.data.normal_(0.0, 0.4)
    return flow.double()


@pytest.mark.parametrize("kind", ["rqs", "affine"])
@pytest.mark.parametrize("conditioner", ["conv", "dense"])
def test_coupling_flow_inverts_and_its_log_det_is_the_jacobians(kind, conditioner):
    flow = _random_flow(kind, conditioner)
    x = torch.randn(4, 3, 5, dtype=torch.double) * 2  # some values outside the splines' bound
    c = torch.randn(4, 2, dtype=torch.double)
    z, ladj = flow(x, c)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z, c), x, rtol=0, atol=1e-7)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v, i=i: flow(v.reshape(1, 3, 5), c[i : i + 1])[0].flatten(), x[i].flatten()
        )
        torch.testing.assert_close(ladj[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-8)


def test_a_new_flow_is_the_identity_and_masks_pair_up():
    flow = CouplingFlow((4, 6), 1, n_blocks=4, hidden=8)
    x, c = torch.randn(3, 4, 6), torch.randn(3, 1)
    z, ladj = flow(x, c)
    torch.testing.assert_close(z, x, rtol=0, atol=1e-5)  # zero spline parameters: the identity
    torch.testing.assert_close(ladj, torch.zeros(3), rtol=0, atol=1e-4)
    a, b, d, e = paired_masks(4, 6, seed=2)
    assert (a ^ b).all() and (d ^ e).all() and a.sum() == 3 and not torch.equal(a, d)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("layer_variable", ["shares", "log-energy"])
def test_preprocessing_round_trip_voxels_to_network_space_and_back(layer_variable):
    showers = toy_voxels(6)
    vox, e = torch.from_numpy(showers.voxels), torch.from_numpy(showers.energy).float()
    vox[0, :144] = 0.0  # an empty first layer
    gen = torch.Generator().manual_seed(0)
    x = layer_features(vox, 45, DET.threshold_mev, gen, e * 1000, layer_variable)
    assert x.shape == (6, 45, 145)
    empty = x[..., 1:].reshape(6, -1)[vox == 0]
    assert ((empty >= -4) & (empty <= -2)).all()  # the slab
    back = decode(x, DET.threshold_mev, e * 1000, layer_variable)
    torch.testing.assert_close(back, vox, rtol=1e-4, atol=1e-4)
    # ... and through the standardisation of a model
    model = CaloINN(CaloINNConfig.from_preset("smoke", layer_variable=layer_variable), DET, (1.0, 100.0))
    model.fit_standardisation(vox, e, gen)
    back = model.voxels_from_features(model.features(vox, e, gen), e)
    torch.testing.assert_close(back, vox, rtol=1e-4, atol=1e-4)


def test_shares_put_exact_zeros_and_ones_on_slabs_and_the_total_last():
    from caloforge.models.caloinn.variables import SHARE_CUT, layer_energies_from_shares, share_features

    e_layer = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0], [2.0, 2.0, 0.0, 4.0, 0.0]])
    f = share_features(e_layer, torch.tensor([100.0, 100.0]), torch.Generator().manual_seed(1))
    assert (f[0, [0, 3]] < -SHARE_CUT).all() and f[0, 2] > SHARE_CUT  # 0 / 4, 0 / 0; 1 / 1
    assert f[1, 2] < -SHARE_CUT and f[1, 3] > SHARE_CUT and abs(f[1, 1]) < SHARE_CUT  # 2 / 6
    torch.testing.assert_close(f[:, -1], torch.log(torch.tensor([0.04, 0.08])))
    torch.testing.assert_close(layer_energies_from_shares(f, torch.tensor([100.0, 100.0])), e_layer)


def test_decoding_keeps_the_layer_energy_of_the_features():
    vox = torch.from_numpy(toy_voxels(3, seed=4).voxels)
    x = layer_features(vox, 45, DET.threshold_mev, layer_variable="log-energy")
    x[..., 0] += 0.1  # ask for 10.5 % more energy in every filled layer
    out = decode(x, DET.threshold_mev, layer_variable="log-energy").reshape(3, 45, -1)
    before, after = vox.reshape(3, 45, -1).sum(-1), out.sum(-1)
    filled = before > 0
    ratio = after[filled] / before[filled]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(np.exp(0.1))))
    assert ((out > 0) == (vox.reshape(3, 45, -1) > 0)).all()  # the same hits


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_validation_loss_and_saves_a_complete_model(trained):
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    vals = [r["val"] for r in log if "val" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    model = load_model(trained)
    assert model.complete and model.detector.name == "calochallenge-ds2"


@pytest.mark.slow
def test_a_longer_run_learns_the_energy_dependence_of_the_showers(tmp_path):
    """The smoke network trained 20 times its preset's steps on 400 toy showers (about 1.5 minutes
    on one core): the validation loss falls well below its start, and the generated showers keep
    the data's energy response and, unlike after the 30 smoke steps, the deepening of the shower
    with energy."""
    data_path = tmp_path / "toy.h5"
    write_showers(data_path, toy_voxels(400, seed=3), DET, generator="toy")
    cfg = CaloINNConfig.from_preset("smoke", steps=600, val_every=50, log_every=50)
    result = train(cfg, data_path, tmp_path / "run")
    assert result.complete and result.step == 600 and result.skipped == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    vals = [r["val"] for r in log if "val" in r]
    assert len(vals) == 12 and vals[-1] < vals[0] - 0.2 and vals[-1] <= min(vals) + 0.02

    data = read_showers(data_path)
    gen = load_generator(tmp_path / "run")
    out = gen.generate_batch({"energy": data.energy}, gen.plan(GenerationRequest()), 0, 0)

    def response_and_depth(voxels):
        layers = voxels.reshape(len(voxels), 45, -1).sum(-1)
        depth = (layers * np.arange(45)).sum(1) / np.maximum(layers.sum(1), 1e-9)
        return layers.sum(1) / data.energy, depth

    resp_data, depth_data = response_and_depth(data.voxels)
    resp_gen, depth_gen = response_and_depth(out.voxels)
    assert np.median(resp_gen) == pytest.approx(np.median(resp_data), rel=0.15)
    log_e = np.log(data.energy)
    assert np.corrcoef(log_e, depth_data)[0, 1] > 0.9  # the toy's showers deepen with log E
    assert np.corrcoef(log_e, depth_gen)[0, 1] > 0.3  # about 0 after the 30 smoke steps (0.5 here)


def test_resume_continues_exactly(voxel_file, tmp_path):
    cfg = CaloINNConfig.from_preset("smoke", steps=6, val_every=3)
    train(cfg, voxel_file, tmp_path / "full")
    train(cfg, voxel_file, tmp_path / "half", max_minutes=0.0)  # one step, then a checkpoint
    train(cfg, voxel_file, tmp_path / "half", resume=True)
    a, b = load_model(tmp_path / "full").state_dict(), load_model(tmp_path / "half").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_bad_training_input_is_refused_without_a_run(voxel_file, tmp_path, showers):
    nan = tmp_path / "nan.h5"
    write_showers(nan, toy_voxels(30), DET, generator="toy")
    with h5py.File(nan, "r+") as h5:
        h5["showers"][3, 10] = np.nan
    with pytest.raises(ValueError, match="shower 3: holds a non-finite value"):
        train(SMOKE, nan, tmp_path / "a")
    points = tmp_path / "points.h5"
    write_showers(points, showers, get_detector("ild-ecal"), generator="toy")
    with pytest.raises(ValueError, match="voxel files"):
        train(SMOKE, points, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="kernel"):
        CaloINNConfig.from_preset("smoke", kernel=2)


# ----------------------------------------------------------------------------- generation


def test_generator_follows_the_protocol(trained):
    gen = load_generator(trained)
    assert gen.family == "caloinn" and gen.output == "voxels" and gen.label == "caloinn"
    plan = gen.plan(GenerationRequest())
    assert plan.sampler.name == "inverse" and plan.sampler.network_calls == 1
    e = {"energy": np.array([5.0, 50.0, 90.0])}
    a, b = gen.generate_batch(e, plan, 3, 0), gen.generate_batch(e, plan, 3, 0)
    assert np.array_equal(a.voxels, b.voxels) and a.voxels.shape == (3, 6480)
    assert not np.array_equal(a.voxels, gen.generate_batch(e, plan, 3, 1).voxels)
    assert np.isfinite(a.voxels).all() and (a.voxels >= 0).all()
    hits = a.voxels[a.voxels > 0]
    assert hits.size and hits.min() >= DET.threshold_mev * (1 - 1e-5)
    for request, match in [
        (GenerationRequest(sampler="rk4"), "one pass"),
        (GenerationRequest(n_steps=4), "one pass"),
        (GenerationRequest(precision="bfloat16"), "float32"),
        (GenerationRequest(options={"points_per_call": 3}), "points_per_call"),
        (GenerationRequest(options={"temperature": -1.0}), "temperature"),
    ]:
        with pytest.raises(GenerationError, match=match):
            gen.plan(request)
    cooler = gen.plan(GenerationRequest(options={"temperature": 0.5}))
    assert cooler.attrs["temperature"] == 0.5


def test_workers_make_the_same_file(trained, tmp_path):
    energies = np.geomspace(2.0, 90.0, 6)
    kw = {"seed": 5, "batch_size": 2}
    one = generate_file(trained, energies, tmp_path / "one.h5", **kw)
    two = generate_file(trained, energies, tmp_path / "two.h5", workers=2, **kw)
    np.testing.assert_array_equal(read_showers(one.path).voxels, read_showers(two.path).voxels)


def test_train_generate_evaluate_on_the_command_line(monkeypatch, capsys, voxel_file, tmp_path):
    run, out, report = tmp_path / "run", tmp_path / "gen.h5", tmp_path / "report"
    run_cli(monkeypatch, "train", "caloinn", "--data", voxel_file, "--out", run, "--preset", "smoke")
    source = ("--energies-file", voxel_file, "-n", 80, "--seed", 2)
    run_cli(monkeypatch, "generate", "--model", run, *source, "--out", out)
    with open_showers(out) as f:
        assert f.kind == "voxels" and f.generator == "caloinn" and len(f) == 80
    run_cli(monkeypatch, "evaluate", voxel_file, out, "--out", report, *QUICK_EVALUATE)
    (candidate,) = json.loads((report / "metrics.json").read_text())["candidates"]
    assert candidate["generator"] == "caloinn" and "high_level_auc" in json.dumps(candidate)
    capsys.readouterr()
    bad = ("--steps", 4, "--overwrite", "--out", out)
    code, _, err = cli_run(monkeypatch, capsys, "generate", "--model", run, *source, *bad)
    assert code != 0 and "one pass" in err and len(err.strip().splitlines()) <= 3
    with open_showers(out) as f:
        assert len(f) == 80  # the existing file was left alone
    cool = tmp_path / "cool.h5"
    run_cli(monkeypatch, "generate", "--model", run, "-n", 4, "--option", "temperature=0.8", "--out", cool)
    with open_showers(cool) as f:
        assert f.attrs["temperature"] == 0.8
    code, _, err = cli_run(monkeypatch, capsys, "generate", "--model", run, "--option", "tau", "--out", cool)
    assert code != 0 and "KEY=VALUE" in err
    code, _, err = cli_run(
        monkeypatch, capsys, "generate", "--model", run, "--option", "x=1", "--out", tmp_path / "x.h5"
    )
    assert code != 0 and "option 'x'" in err and not (tmp_path / "x.h5").exists()


def test_a_foreign_or_broken_checkpoint_is_one_line(trained, tmp_path):
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    state["format_version"] = 99
    torch.save(state, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path / "v.pt")
    with h5py.File(tmp_path / "x.h5", "w"):
        pass
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "x.h5")


@pytest.mark.parametrize("bins", [1, 4, 8])
def test_our_spline_is_zukos_spline(bins):
    from zuko.transforms import MonotonicRQSTransform

    from caloforge.models.nn.coupling import rqs

    gen = torch.Generator().manual_seed(bins)
    x = torch.randn(500, generator=gen, dtype=torch.double) * 3  # a fifth outside the bound
    w, h = torch.randn(2, 500, bins, generator=gen, dtype=torch.double) * 2
    d = torch.randn(500, bins - 1, generator=gen, dtype=torch.double) * 2
    ref = MonotonicRQSTransform(w, h, d, bound=4.0)
    y_ref, ladj_ref = ref.call_and_ladj(x)
    y, ladj = rqs(x, w, h, d, 4.0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(ladj, ladj_ref, rtol=0, atol=1e-9)
    back, ladj_back = rqs(y, w, h, d, 4.0, inverse=True)
    torch.testing.assert_close(back, ref.inv(y_ref), rtol=0, atol=1e-9)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(ladj_back, ladj, rtol=0, atol=1e-8)
