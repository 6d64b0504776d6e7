"""BIB-AE: network shapes, the post-processor's contract, config checks, training (both
stages) and resuming, generation through the protocol and the command line, bad input."""

import json

import numpy as np
import pytest
import torch

from caloforge.detector import get_detector
from caloforge.io import open_showers, read_showers, write_showers
from caloforge.models.bibae import BIBAE, BIBAEConfig, PostProcessor, load_model, train
from caloforge.models.bibae.model import Critic, Decoder, Encoder, mmd
from caloforge.models.protocol import GenerationError, GenerationRequest
from caloforge.models.registry import load_generator
from conftest import QUICK_EVALUATE, cli_run, run_cli, toy_images, toy_voxels

torch.set_num_threads(1)
DET = get_detector("ild-ecal-30")
SMOKE = BIBAEConfig.from_preset("smoke")
SHAPE = (30, 30, 30)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bibae") / "toy.h5"
    write_showers(path, toy_images(64), DET, generator="toy")
    return path


@pytest.fixture(scope="module")
def trained(image_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("bibae_run") / "run"
    train(SMOKE, image_file, run)
    return run


# ----------------------------------------------------------------------------- networks


def test_encoder_decoder_and_critic_shapes():
    torch.manual_seed(0)
    x, e = torch.rand(3, 1, *SHAPE), torch.tensor([0.1, 0.5, 0.9])
    mu, logvar = Encoder(SHAPE, (2, 4, 4), 8, 5)(x, e)
    assert mu.shape == logvar.shape == (3, 5)
    y = Decoder(SHAPE, (2, 4, 4), 8, 5)(mu, e)
    assert y.shape == (3, 1, *SHAPE) and (y >= 0).all()
    assert Critic(SHAPE, (2, 4, 4), 8, 2)(torch.cat([x, y], 1), e).shape == (3,)


def test_post_processor_keeps_the_shape_is_non_negative_and_follows_the_energy():
    post = PostProcessor(hidden=6, layers=2)
    x = torch.rand(2, 1, *SHAPE) * 3
    torch.testing.assert_close(post(x, torch.tensor([0.2, 0.8])), x)  # a new one is the identity
    torch.manual_seed(1)
    for p in post.parameters():
        p.data.normal_(0.0, 0.5)
    lo, hi = post(x, torch.full((2,), 0.1)), post(x, torch.full((2,), 0.9))
    assert lo.shape == (2, 1, *SHAPE) and (lo >= 0).all() and (hi >= 0).all()
    assert not torch.allclose(lo, hi)


def test_the_model_samples_thresholded_images_and_mmd_sees_a_shift():
    model = BIBAE(SMOKE, DET, (10.0, 90.0)).eval()
    out = model.sample(torch.tensor([20.0, 80.0]), torch.Generator().manual_seed(0))
    assert out.shape == (2, DET.n_channels) and (out >= 0).all()
    hits = out[out > 0]
    assert hits.numel() and hits.min() >= DET.threshold_mev
    vox = torch.from_numpy(toy_images(2).voxels)
    torch.testing.assert_close(model.from_scaled(model.to_scaled(vox)), vox, rtol=1e-5, atol=1e-5)
    a = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    assert mmd(a, a + 1.0) > 3 * mmd(a, torch.randn(64, 3, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("post_steps", 8, "post_steps"),
        ("channels", (2, 4), "channels"),
        ("batch_size", 1, "batch_size"),
        ("beta_kl", -1.0, "beta_kl"),
        ("lr", float("nan"), "lr"),
    ],
)
def test_bad_configs_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        BIBAEConfig.from_preset("smoke", **{field: value})
    with pytest.raises(ValueError, match="unknown BIB-AE preset"):
        BIBAEConfig.from_preset("huge")


# ----------------------------------------------------------------------------- training


def test_training_runs_both_stages_and_saves_a_complete_model(trained):
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert "critic" in log[0] and "pixel" in log[0] and "hit_mmd" in log[-1]
    assert all(np.isfinite(v) for r in log for v in r.values())
    model = load_model(trained)
    assert model.complete and model.detector.name == "ild-ecal-30"
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    ema = state["train"]["ema"]["module"]
    for k, v in state["model"].items():  # the inference weights are the EMA's
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0)


def test_resume_continues_exactly(image_file, tmp_path):
    cfg = BIBAEConfig.from_preset("smoke", steps=4, post_steps=2, val_every=2)
    train(cfg, image_file, tmp_path / "full")
    train(cfg, image_file, tmp_path / "half", max_minutes=0.0)  # one step, then a checkpoint
    train(cfg, image_file, tmp_path / "half", resume=True)
    a, b = load_model(tmp_path / "full").state_dict(), load_model(tmp_path / "half").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_point_and_polar_voxel_files_are_refused_without_a_run(tmp_path, showers):
    points = tmp_path / "points.h5"
    write_showers(points, showers, get_detector("ild-ecal"), generator="toy")
    with pytest.raises(ValueError, match=r"holds points showers.*caloforge convert --detector ild-ecal-30"):
        train(SMOKE, points, tmp_path / "a")
    polar = tmp_path / "polar.h5"
    write_showers(polar, toy_voxels(30), get_detector("calochallenge-ds2"), generator="toy")
    with pytest.raises(ValueError, match=r"polar voxels.*caloforge convert"):
        train(SMOKE, polar, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- generation


def test_generator_follows_the_protocol(trained):
    gen = load_generator(trained)
    assert gen.family == "bibae" and gen.output == "voxels" and gen.particle == "gamma"
    assert gen.detector.name == "ild-ecal-30" and gen.conditions[0].name == "energy"
    plan = gen.plan(GenerationRequest())
    e = {"energy": np.array([15.0, 50.0, 85.0])}
    a, b = gen.generate_batch(e, plan, 3, 0), gen.generate_batch(e, plan, 3, 0)
    assert np.array_equal(a.voxels, b.voxels) and a.voxels.shape == (3, 27000)
    assert not np.array_equal(a.voxels, gen.generate_batch(e, plan, 3, 1).voxels)
    assert np.isfinite(a.voxels).all() and (a.voxels >= 0).all()
    assert (a.voxels[a.voxels > 0] >= DET.threshold_mev).all()
    for request, match in [
        (GenerationRequest(n_steps=4), "one pass"),
        (GenerationRequest(precision="bfloat16"), "float32"),
        (GenerationRequest(options={"temperature": 0.5}), "temperature"),
        (GenerationRequest(options={"latent_scale": -1.0}), "latent_scale"),
    ]:
        with pytest.raises(GenerationError, match=match):
            gen.plan(request)
    assert "parameters" in gen.describe()


def test_train_generate_evaluate_on_the_command_line(monkeypatch, capsys, image_file, tmp_path):
    run, out, again, report = tmp_path / "run", tmp_path / "gen.h5", tmp_path / "again.h5", tmp_path / "rep"
    run_cli(monkeypatch, "train", "bibae", "--data", image_file, "--out", run, "--preset", "smoke")
    source = ("--energies-file", image_file, "-n", 20, "--seed", 2)
    run_cli(monkeypatch, "generate", "--model", run / "checkpoint.pt", *source, "--out", out)
    run_cli(monkeypatch, "generate", "--model", run / "checkpoint.pt", *source, "--out", again)
    with open_showers(out) as f:
        assert f.kind == "voxels" and f.generator == "bibae" and len(f) == 20
        assert f.detector.name == "ild-ecal-30"
    np.testing.assert_array_equal(read_showers(out).voxels, read_showers(again).voxels)
    run_cli(monkeypatch, "evaluate", image_file, out, "--out", report, *QUICK_EVALUATE)
    (candidate,) = json.loads((report / "metrics.json").read_text())["candidates"]
    assert candidate["generator"] == "bibae"
    capsys.readouterr()
    points = tmp_path / "points.h5"
    from conftest import random_points

    write_showers(points, random_points(30, 20), DET, generator="toy")
    code, _, err = cli_run(monkeypatch, capsys, "train", "bibae", "--data", points, "--out", tmp_path / "r2")
    assert code != 0 and "caloforge convert --detector ild-ecal-30" in err
    assert len(err.strip().splitlines()) <= 3 and not (tmp_path / "r2").exists()
