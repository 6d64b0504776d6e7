"""CaloDREAM: layer-energy variables, transfusion masking, ViT patching, VAE, solvers, training, CLI."""

import importlib.util
import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from caloforge.detector import get_detector
from caloforge.io import open_showers, write_showers
from caloforge.models.calodream import (
    CaloDream,
    CaloDreamConfig,
    SolverSpec,
    calibrated_voxels,
    dequantize_fractions,
    fit_calibration,
    fractions,
    generate,
    hit_log_fractions,
    layer_energies,
    layer_energies_from_u,
    load_model,
    log_energy_features,
    sample_voxels,
    save_calibration,
    save_for_inference,
    train,
    train_solver,
    u_from_layer_energies,
    uses_calibration,
    voxels_from_fractions,
    voxels_from_log_energy,
)
from caloforge.models.nn.quantile_map import QuantileMap
from caloforge.models.nn.transfusion import Transfusion
from caloforge.models.nn.vae import LayerVAE
from caloforge.models.nn.vit import ViT3d, patchify, unpatchify
from caloforge.odesolvers import BNSSolver, solve_fixed
from conftest import run_cli, toy_voxels

torch.set_num_threads(1)
DET = get_detector("calochallenge-ds2")


@pytest.fixture(scope="module")
def voxel_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dream") / "toy.h5"
    write_showers(
        path, toy_voxels(80), DET, generator="toy", attrs={"energy_min_gev": 1.0, "energy_max_gev": 100.0}
    )
    return path


# ----------------------------------------------------------------------------- variables


def test_u_round_trip_with_empty_layers():
    gen = torch.Generator().manual_seed(0)
    e = torch.rand(50, 45, generator=gen, dtype=torch.float64).float() * 100
    e[:10, 30:] = 0.0  # showers that end early
    e[10:12, :5] = 0.0  # and ones that start late
    e_inc = torch.full((50,), 1e4)
    u = u_from_layer_energies(e, e_inc)
    assert u.shape == (50, 45) and (u >= 0).all() and (u <= 1).all()
    back = layer_energies_from_u(u, e_inc)
    torch.testing.assert_close(back, e, rtol=1e-4, atol=1e-3)


def test_fractions_and_voxels_keep_layer_energies():
    vox = torch.from_numpy(toy_voxels(5).voxels)
    e_layer = layer_energies(vox, 45)
    frac = fractions(vox, 45)
    filled = e_layer > 0
    torch.testing.assert_close(layer_energies(frac, 45)[filled], torch.ones(int(filled.sum())))
    back = voxels_from_fractions(frac, e_layer, DET.threshold_mev)
    torch.testing.assert_close(back, vox, rtol=1e-4, atol=1e-4)
    dq = dequantize_fractions(frac, e_layer, DET.threshold_mev, torch.Generator().manual_seed(0))
    assert (dq[frac > 0] == frac[frac > 0]).all() and (dq[(frac == 0) & (vox == 0)] > 0).any()
    torch.testing.assert_close(
        voxels_from_fractions(dq, e_layer, DET.threshold_mev), vox, rtol=1e-3, atol=1e-3
    )
    noisy = voxels_from_fractions(frac + 1e-7, e_layer, DET.threshold_mev)
    assert ((noisy == 0) | (noisy >= DET.threshold_mev)).all()  # threshold applied
    torch.testing.assert_close(layer_energies(noisy, 45), e_layer, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("k", [0, 7, 22, 43])
def test_transfusion_is_causal(k):
    torch.manual_seed(0)
    net = Transfusion(n_dims=45, d_model=16, n_heads=2, n_decoder_layers=2, head_hidden=16).eval()
    z, cond = torch.randn(4, 45), torch.randn(4, 1)
    x_t, t = torch.randn(4, 45), torch.rand(4, 45)
    z2 = z.clone()
    z2[:, k] += 3.0
    with torch.no_grad():
        v1, v2 = net(x_t, t, z, cond), net(x_t, t, z2, cond)
    torch.testing.assert_close(v1[:, : k + 1], v2[:, : k + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(v1[:, k + 1 :], v2[:, k + 1 :])  # later layers do see it


@pytest.mark.parametrize(("layers", "heads"), [(1, 2), (3, 4)])
def test_transfusion_sampling_uses_the_teacher_forced_context(layers, heads):
    """Sampling dimension by dimension (incremental decoding with cached keys and values)
    gives the same velocity field as the teacher-forced training pass, in every dimension."""
    torch.manual_seed(1)
    net = Transfusion(n_dims=6, d_model=16, n_heads=heads, n_decoder_layers=layers, head_hidden=16).eval()
    cond = torch.randn(3, 1)
    z = net.sample(cond, lambda v, x0: solve_fixed(v, x0, "euler", 2), torch.Generator().manual_seed(0))
    h = net.context(z, cond)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 6, generator=gen)
    # Replaying each dimension's Euler steps with the teacher-forced context gives z.
    with torch.no_grad():
        for i in range(6):
            x = noise[:, i]
            for t in (0.0, 0.5):
                x = x + 0.5 * net.velocity(x, torch.tensor([t]), h[:, i])
            torch.testing.assert_close(x, z[:, i], rtol=1e-5, atol=1e-5)
    net.decoder.layers[0].norm_first = True  # a layer the incremental decoder does not re-implement
    with pytest.raises(NotImplementedError, match="post-norm ReLU"):
        net.sample(cond, lambda v, x0: solve_fixed(v, x0, "euler", 2))


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((1, 45, 16, 9), (5, 4, 3)),
        ((1, 45, 16, 9), (3, 4, 1)),
        ((4, 15, 8, 3), (3, 2, 1)),
        ((2, 4, 4, 4), (1, 1, 1)),
    ],
)
def test_patchify_unpatchify_exact_inverse(shape, patch):
    x = torch.randn(3, *shape)
    tokens = patchify(x, patch)
    assert tokens.shape == (3, np.prod(shape[1:]) // np.prod(patch), shape[0] * np.prod(patch))
    assert torch.equal(unpatchify(tokens, shape, patch), x)
    assert torch.equal(patchify(unpatchify(tokens, shape, patch), patch), tokens)


def test_patch_that_does_not_tile_is_refused():
    with pytest.raises(ValueError, match=r"does not tile the grid \(45, 16, 9\) \(16 by 3\)"):
        ViT3d((1, 45, 16, 9), (5, 3, 3), n_cond=46)


def test_vit_velocity_shape_and_zero_init():
    net = ViT3d((1, 45, 16, 9), (5, 4, 3), n_cond=46, dim=16, depth=1, n_heads=2)
    x = torch.randn(2, 1, 45, 16, 9)
    v = net(x, torch.rand(2), torch.randn(2, 46))
    assert v.shape == x.shape and torch.equal(v, torch.zeros_like(v))  # zero-initialised output layer


def test_vae_decodes_layer_distributions():
    vae = LayerVAE((45, 16, 9), latent_channels=2, stride=(3, 2, 3), channels=8)
    frac = fractions(torch.from_numpy(toy_voxels(3).voxels), 45).reshape(3, 1, 45, 16, 9)
    mu, logvar = vae.encode(frac)
    assert mu.shape == (3, 2, 15, 8, 3) == logvar.shape
    out = vae.decode(mu)
    torch.testing.assert_close(out.sum((-1, -2)), torch.ones(3, 1, 45))


# ----------------------------------------------------------------------------- solvers


def test_solver_spec_checks_and_counts():
    assert SolverSpec("rk4", 4).evaluations == 16 and SolverSpec("midpoint", 3).evaluations == 6
    with pytest.raises(ValueError, match="unknown ODE solver"):
        SolverSpec("heun", 4)
    with pytest.raises(ValueError, match="train-solver"):
        SolverSpec("bns", 4)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(voxel_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = CaloDreamConfig.from_preset("smoke")
    train(cfg, "energy", voxel_file, root / "energy")
    train(cfg, "vae", voxel_file, root / "vae")
    train(cfg, "shape", voxel_file, root / "shape", energy_model=root / "energy")
    train(cfg, "shape", voxel_file, root / "lavit", energy_model=root / "energy", vae_model=root / "vae")
    return root


def test_bns_initialised_as_euler_reproduces_euler_on_the_shape_model(trained):
    model = load_model(trained / "shape")
    e = torch.tensor([3.0, 30.0])
    u = u_from_layer_energies(layer_energies(torch.from_numpy(toy_voxels(2).voxels), 45), e * 1000)
    euler = SolverSpec("euler", 3)
    bns = SolverSpec("bns", 3, BNSSolver(3, init="euler").to_dict())
    a = sample_voxels(model, e, u, euler, torch.Generator().manual_seed(5))
    b = sample_voxels(model, e, u, bns, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_resume_continues_exactly(voxel_file, tmp_path):
    cfg = CaloDreamConfig.from_preset("smoke", steps=20, checkpoint_minutes=1e-9)
    train(cfg, "energy", voxel_file, tmp_path / "full")
    train(cfg, "energy", voxel_file, tmp_path / "half", max_minutes=0.0)  # stops after one step
    train(cfg, "energy", voxel_file, tmp_path / "half", resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten(trained, voxel_file):
    with pytest.raises(ValueError, match="exists: resume it"):
        train(CaloDreamConfig.from_preset("smoke"), "energy", voxel_file, trained / "energy")


def test_wrong_parts_are_refused(trained, voxel_file, tmp_path):
    with pytest.raises(ValueError, match="a vae model is needed"):
        train(
            CaloDreamConfig.from_preset("smoke"),
            "shape",
            voxel_file,
            tmp_path / "x",
            vae_model=trained / "energy",
        )
    with pytest.raises(ValueError, match="only apply to the shape network"):
        train(
            CaloDreamConfig.from_preset("smoke"),
            "energy",
            voxel_file,
            tmp_path / "y",
            vae_model=trained / "vae",
        )


# ----------------------------------------------------------------------------- command line


caloforge = run_cli


@pytest.mark.parametrize("run", ["shape", "lavit"])
def test_generate_with_every_solver(monkeypatch, trained, voxel_file, tmp_path, run):
    model = tmp_path / "model.pt"
    caloforge(
        monkeypatch,
        "train-solver",
        "--model",
        trained / run,
        "--data",
        voxel_file,
        "--steps",
        2,
        "--n-train",
        8,
        "--iterations",
        3,
        "--out",
        model,
    )
    for sampler, compression in (("bns", "none"), ("euler", "lzf"), ("midpoint", "gzip"), ("rk4", "gzip")):
        out = tmp_path / f"{sampler}.h5"
        caloforge(
            monkeypatch,
            "generate",
            "--model",
            model,
            "-n",
            12,
            "--energy-log",
            "1:100",
            "--sampler",
            sampler,
            "--compression",
            compression,
            "--out",
            out,
        )
        with h5py.File(out) as f:
            assert f["showers"].compression == (None if compression == "none" else compression)
        with open_showers(out) as f:
            assert f.kind == "voxels" and f.generator.startswith("calodream") and len(f) == 12
            assert f.attrs["sampler"] == sampler and f.attrs["latent"] == (run == "lavit")
            v = f.read().voxels
        assert np.isfinite(v).all() and ((v == 0) | (v >= DET.threshold_mev)).all()


def test_generate_errors_are_one_line(monkeypatch, trained, tmp_path, capsys):
    caloforge(monkeypatch, "generate", "--model", trained / "energy", "--out", tmp_path / "a.h5", code=2)
    caloforge(
        monkeypatch,
        "generate",
        "--model",
        trained / "shape",
        "--sampler",
        "bns",
        "--out",
        tmp_path / "b.h5",
        code=2,
    )
    caloforge(
        monkeypatch,
        "generate",
        "--model",
        trained / "shape",
        "--energy",
        "500",
        "--out",
        tmp_path / "c.h5",
        code=2,
    )
    err = capsys.readouterr().err
    assert "energy network" in err and "train-solver" in err and "outside the trained range" in err
    assert not any((tmp_path / n).exists() for n in ("a.h5", "b.h5", "c.h5"))


@pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)
def test_simulate_train_generate_evaluate_voxels(monkeypatch, tmp_path):
    """Geant4 voxel showers → CaloDREAM (energy + shape) → generated voxel file → CaloChallenge metrics."""
    pts, vox = tmp_path / "pts.h5", tmp_path / "vox.h5"
    caloforge(
        monkeypatch,
        "simulate",
        "--detector",
        "calochallenge-ds2",
        "--particle",
        "e-",
        "--energy-log",
        "2:20",
        "-n",
        60,
        "--seed",
        3,
        "--workers",
        2,
        "--out",
        pts,
        "--voxel-out",
        vox,
    )
    energy, shape, gen, report = tmp_path / "e", tmp_path / "s", tmp_path / "gen.h5", tmp_path / "report"
    caloforge(monkeypatch, "train", "calodream-energy", "--data", vox, "--out", energy, "--preset", "smoke")
    caloforge(
        monkeypatch,
        "train",
        "calodream-shape",
        "--data",
        vox,
        "--out",
        shape,
        "--preset",
        "smoke",
        "--energy-model",
        energy,
    )
    caloforge(
        monkeypatch, "generate", "--model", shape, "-n", 60, "--energies-file", vox, "--seed", 4, "--out", gen
    )
    caloforge(
        monkeypatch,
        "evaluate",
        vox,
        gen,
        "--out",
        report,
        "--splits",
        2,
        "--epochs",
        2,
        "--draws",
        2,
        "--low-level",
    )
    metrics = json.loads((report / "metrics.json").read_text())
    (candidate,) = metrics["candidates"]
    assert candidate["generator"] == "calodream"
    text = json.dumps(candidate)
    keys = ("separation_power", "fpd", "kpd", "low_level_auc", "high_level_auc")
    for key in (*keys, "classifier_auc"):
        assert key in text


def test_energy_network_can_be_embedded_after_training(trained, voxel_file, tmp_path):
    cfg = CaloDreamConfig.from_preset("smoke", steps=5)
    train(cfg, "shape", voxel_file, tmp_path / "s")
    with pytest.raises(ValueError, match="no energy network"):
        next(generate(load_model(tmp_path / "s"), np.array([10.0])))
    train(cfg, "shape", voxel_file, tmp_path / "s", resume=True, energy_model=trained / "energy")
    train(cfg, "shape", voxel_file, tmp_path / "s", resume=True)  # a later resume keeps it
    (batch,) = generate(load_model(tmp_path / "s"), np.array([10.0, 20.0]))
    assert batch.voxels.shape == (2, 6480) and (batch.voxels.sum(1) > 0).all()


def test_inference_copy_loads_without_pickled_code(trained, tmp_path):
    out = save_for_inference(trained / "lavit", tmp_path / "small.pt")
    state = torch.load(out, weights_only=True)
    assert "train" not in state and state["vae_model"] is not None and state["energy_model"] is not None
    (batch,) = generate(load_model(out), np.array([5.0]))
    assert batch.voxels.shape == (1, 6480)


def test_dequantised_shape_training_runs(voxel_file, tmp_path):
    cfg = CaloDreamConfig.from_preset("smoke", steps=4, dequantize=True)
    result = train(cfg, "shape", voxel_file, tmp_path / "dq")
    assert result.complete and np.isfinite(result.losses["cfm"])


def test_log_energy_target_round_trip_and_gap():
    vox = torch.from_numpy(toy_voxels(6).voxels)
    e_layer = layer_energies(vox, 45)
    thr = DET.threshold_mev
    x = log_energy_features(vox, thr, torch.Generator().manual_seed(0))
    hit = vox >= thr
    assert (x[hit] >= 0).all() and (x[~hit] >= -4.0).all() and (x[~hit] <= -2.0).all()
    torch.testing.assert_close(voxels_from_log_energy(x, e_layer, thr), vox, rtol=1e-4, atol=1e-4)
    # a value in the gap over the cut is a hit at the threshold; under it, empty
    x = torch.full((1, 2, 144), -3.0)
    x[0, 0, :4] = torch.tensor([math.log(60 / thr), math.log(40 / thr), -0.5, -1.5])
    x[0, 1, 5] = -2.5  # nothing over the cut: the layer's energy goes to its largest value
    v = voxels_from_log_energy(x.reshape(1, -1), torch.tensor([[100 + thr, 1.0]]), thr).reshape(2, 144)
    torch.testing.assert_close(v[0, :3], torch.tensor([60.0, 40.0, thr]))
    assert (v[0, 3:] == 0).all() and v[1, 5] == pytest.approx(1.0) and v[1].sum() == v[1, 5]
    # generated energies 3x too high: every hit survives, in order, and the layer sum is kept
    g = torch.Generator().manual_seed(1)
    e = thr * torch.exp(3 * torch.rand(4, 144, generator=g))
    e[:, 100:] = 0.0
    target = e.sum(-1) / 3
    out = voxels_from_log_energy(log_energy_features(e, thr), target.reshape(4, 1), thr)
    assert ((out > 0) == (e > 0)).all() and (out[e > 0] >= thr).all()
    torch.testing.assert_close(out.sum(-1), target)
    assert torch.equal(torch.argsort(out[:, :100], dim=-1), torch.argsort(e[:, :100], dim=-1))
    few = voxels_from_log_energy(log_energy_features(e, thr), torch.full((4, 1), 10.5 * thr), thr)
    assert ((few > 0).sum(-1) == 10).all()  # room for 10 hits at the threshold: the 10 largest
    assert torch.equal(few.argsort(-1)[:, -10:].sort(-1).values, e.argsort(-1)[:, -10:].sort(-1).values)


def test_log_energy_shape_model_trains_and_generates(voxel_file, tmp_path):
    cfg = CaloDreamConfig.from_preset("smoke", steps=4, shape_target="log-energy")
    train(cfg, "energy", voxel_file, tmp_path / "e")
    result = train(cfg, "shape", voxel_file, tmp_path / "s", energy_model=tmp_path / "e")
    assert result.complete and np.isfinite(result.losses["cfm"])
    model = load_model(tmp_path / "s")
    assert model.log_energy and model.config.shape_target == "log-energy"
    (batch,) = generate(model, np.array([10.0, 60.0]))
    v = batch.voxels
    assert v.shape == (2, 6480) and ((v == 0) | (v >= DET.threshold_mev)).all() and (v.sum(1) > 0).all()
    with pytest.raises(ValueError, match="full-space ViT"):
        train(cfg, "shape", voxel_file, tmp_path / "x", vae_model=tmp_path / "e")
    assert not (tmp_path / "x").exists()  # refused before the run directory is made
    with pytest.raises(ValueError, match="shape_target must be one of"):
        CaloDreamConfig.from_preset("smoke", shape_target="energy")
    with pytest.raises(ValueError, match="dequantize applies"):
        CaloDreamConfig.from_preset("smoke", shape_target="log-energy", dequantize=True)


def test_identity_calibration_shares_each_layer_in_proportion_to_exp_y():
    thr, n = DET.threshold_mev, 3
    y = torch.full((n, 45, 144), -3.0)
    y[:, :, :3] = torch.tensor([4.0, 2.0, -0.5])  # two hits and one at the threshold per layer
    y[1, 10] = -3.0  # a layer without hits
    y[1, 10, 7] = -2.0
    e_layer = torch.full((n, 45), 100.0)
    groups = hit_log_fractions(y.reshape(n, -1), e_layer, thr, (45, 16, 9))
    assert groups.shape == (n, 45 * 9, 16) and torch.isnan(groups[1, 10 * 9]).all()
    table = torch.linspace(-20, 5, 11).expand(1, 405, 11)
    identity = QuantileMap(torch.zeros(1), table, table)
    v = calibrated_voxels(y.reshape(n, -1), e_layer, torch.full((n,), 50.0), identity, (45, 16, 9), thr)
    v = v.reshape(n, 45, 144)
    torch.testing.assert_close(v.sum(-1), e_layer)
    w = torch.tensor([math.exp(4.0), math.exp(2.0), 1.0])
    torch.testing.assert_close(v[0, 0, :3], 100.0 * w / w.sum())
    assert (v[0, :, 3:] == 0).all() and v[1, 10, 7] == pytest.approx(100.0)


def test_calibration_is_fitted_saved_and_used(voxel_file, tmp_path, monkeypatch):
    cfg = CaloDreamConfig.from_preset("smoke", steps=4, shape_target="log-energy")
    train(cfg, "energy", voxel_file, tmp_path / "e")
    train(cfg, "shape", voxel_file, tmp_path / "s", energy_model=tmp_path / "e")
    model = load_model(tmp_path / "s")
    calibration = fit_calibration(model, voxel_file, n_showers=60, n_bins=2)
    assert calibration.source.shape == (2, 405, 51) and model.calibration is calibration
    assert calibration.rates is not None and torch.isfinite(calibration.target).all()
    assert (calibration.target != calibration.source).any()  # some groups have enough hits to map
    out = save_calibration(tmp_path / "s", calibration, tmp_path / "calibrated.pt")
    again = load_model(out)
    torch.testing.assert_close(again.calibration.target, calibration.target.float())
    assert load_model(tmp_path / "s").calibration is None  # the run itself is unchanged
    (batch,) = generate(again, np.array([10.0, 60.0]), seed=3)
    (plain,) = generate(load_model(tmp_path / "s"), np.array([10.0, 60.0]), seed=3)
    v = batch.voxels
    assert ((v == 0) | (v >= DET.threshold_mev)).all() and not np.array_equal(v, plain.voxels)
    np.testing.assert_allclose(
        v.reshape(2, 45, -1).sum(-1), plain.voxels.reshape(2, 45, -1).sum(-1), rtol=1e-4
    )
    # another sampler than the one it was fitted with: no calibration
    euler = SolverSpec("euler", 2)
    assert uses_calibration(again, again.sampler["shape"]) and not uses_calibration(again, euler)
    (a,) = generate(again, np.array([10.0, 60.0]), seed=3, shape_solver=euler)
    (b,) = generate(load_model(tmp_path / "s"), np.array([10.0, 60.0]), seed=3, shape_solver=euler)
    np.testing.assert_array_equal(a.voxels, b.voxels)
    run = tmp_path / "s"
    run_cli(monkeypatch, "calibrate", "--model", run, "--data", voxel_file, "--showers", 40, "--bins", 3)
    assert load_model(run).calibration.source.shape[0] == 3
    run_cli(monkeypatch, "generate", "--model", run, "-n", 4, "--energy", 20, "--out", tmp_path / "g.h5")
    with open_showers(tmp_path / "g.h5") as f:
        assert f.attrs["calibrated"]
    run_cli(monkeypatch, "calibrate", "--model", run, "--data", voxel_file, "--steps", 3, code=2)
    run_cli(monkeypatch, "calibrate", "--model", "calodream", "--data", voxel_file, code=2)  # read-only
    with pytest.raises(ValueError, match="only a shape model"):
        fit_calibration(load_model(tmp_path / "e"), voxel_file)


def test_lavit_calibration_maps_its_decoded_hits(trained, voxel_file):
    """The laViT's decoded voxels go through the same hit-energy calibration: hits and rates
    change, each layer keeps the energy network's energy."""
    model = load_model(trained / "lavit")
    assert not model.log_energy
    fit_calibration(model, voxel_file, n_showers=40, n_bins=2)
    assert uses_calibration(model, model.sampler["shape"])
    (cal,) = generate(model, np.array([10.0, 60.0]), seed=3)
    (plain,) = generate(load_model(trained / "lavit"), np.array([10.0, 60.0]), seed=3)
    v = cal.voxels
    assert ((v == 0) | (v >= DET.threshold_mev)).all() and not np.array_equal(v, plain.voxels)
    np.testing.assert_allclose(
        v.reshape(2, 45, -1).sum(-1), plain.voxels.reshape(2, 45, -1).sum(-1), rtol=1e-4
    )


def test_lavit_trains_and_generates_on_dataset_3(tmp_path):
    """The ds3 preset's grid sizes (patch VAE, latent 15 x 10 x 6) on 40,500-voxel showers."""
    from caloforge.synthetic import write_synthetic

    write_synthetic(tmp_path / "ds3.h5", "voxels-ds3", 40)
    ds3 = CaloDreamConfig.from_preset("ds3")
    cfg = CaloDreamConfig.from_preset(
        "smoke",
        steps=2,
        **{k: getattr(ds3, k) for k in ("patch", "vae_stride", "vae_full_resolution", "latent_patch")},
    )
    train(cfg, "energy", tmp_path / "ds3.h5", tmp_path / "e")
    train(cfg, "vae", tmp_path / "ds3.h5", tmp_path / "v")
    train(
        cfg,
        "shape",
        tmp_path / "ds3.h5",
        tmp_path / "s",
        energy_model=tmp_path / "e",
        vae_model=tmp_path / "v",
    )
    model = load_model(tmp_path / "s")
    assert model.latent and model.vae_model.net.latent_shape == (4, 15, 10, 6)
    (batch,) = generate(model, np.array([5.0, 50.0]), seed=1)
    assert batch.voxels.shape == (2, 40500) and np.isfinite(batch.voxels).all()
    with pytest.raises(ValueError, match="use a preset made for it"):  # latent 15 x 25 x 6, patch 3 x 2 x 1
        CaloDream(CaloDreamConfig.from_preset("smoke"), model.detector, "shape", (1.0, 100.0), latent=True)


def test_layer_energy_is_kept_when_every_voxel_is_under_threshold():
    frac = torch.full((1, 2 * 144), 1.0 / 144)
    frac[0, 7] = 2.0 / 144
    e_layer = torch.tensor([[1.0, 0.01]])  # 1 MeV spread over 144 voxels: all under 15 keV
    v = voxels_from_fractions(frac, e_layer, DET.threshold_mev).reshape(2, 144)
    assert v[0, 7] == pytest.approx(1.0) and (v[0].sum() == v[0, 7])
    assert (v[1] == 0).all()  # a layer under the threshold stays empty


def test_train_solver_reports_both_stages(trained, voxel_file):
    calls: list[tuple[str, int, int]] = []
    solver = train_solver(
        load_model(trained / "shape"),
        voxel_file,
        2,
        n_train=6,
        batch_size=4,
        iterations=3,
        progress=lambda stage, done, total, **kw: calls.append((stage, done, total)),
    )
    assert solver.n_steps == 2
    assert calls == [("reference", 4, 6), ("reference", 6, 6)] + [("train", i, 3) for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="unknown BNS loss 'mid'"):
        train_solver(load_model(trained / "shape"), voxel_file, 2, loss="mid")
