"""CaloClouds (I): EPiC layers and encoder, DDPM schedule and sampler, training, generation, checkpoints."""

from __future__ import annotations

import pytest
import torch

from caloforge.detector import get_detector
from caloforge.io import open_showers, write_showers
from caloforge.models import CheckpointError, GenerationError, GenerationRequest
from caloforge.models.caloclouds1 import CaloClouds1Config, borrow_flow, generate, load_model, train
from caloforge.models.caloclouds1.generation import CaloClouds1Generator, truncated_normal
from caloforge.models.caloclouds2 import CaloClouds2Config
from caloforge.models.caloclouds2 import train as train_caloclouds2
from caloforge.models.nn.ddpm import DDPMSchedule, ddpm_loss, sample_ddpm
from caloforge.models.nn.epic import EPiCEncoder, EPiCLayer
from caloforge.models.registry import load_generator
from conftest import cli_run, random_points

torch.set_num_threads(1)

TINY = CaloClouds1Config.from_preset("smoke", steps=8, log_every=4, calibration_showers=8)


# ----------------------------------------------------------------------------- EPiC


@pytest.mark.parametrize("cond_dim", [0, 2])
def test_epic_layer_is_permutation_equivariant_and_ignores_padding(cond_dim):
    torch.manual_seed(0)
    layer = EPiCLayer(dim_local=6, dim_global=3, hidden=8, dim_cond=cond_dim)
    p, g = torch.randn(2, 5, 6), torch.randn(2, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    cond = torch.randn(2, cond_dim) if cond_dim else None
    out_p, out_g = layer(p, g, mask, cond)
    perm = torch.tensor([2, 0, 1, 3, 4])  # keeps the second cloud's padding at the end
    perm_p, perm_g = layer(p[:, perm], g, mask[:, perm], cond)
    torch.testing.assert_close(perm_p, out_p[:, perm])
    torch.testing.assert_close(perm_g, out_g)
    assert (out_p[1, 3:] == 0).all()  # padding stays zero
    changed = p.clone()
    changed[1, 3:] = 100.0  # what sits in padding slots does not matter
    torch.testing.assert_close(layer(changed, g, mask, cond)[1], out_g)


def test_encoder_latent_shapes_and_invariance():
    torch.manual_seed(1)
    enc = EPiCEncoder(dim_in=4, latent_dim=7, dim_local=8, dim_global=4, hidden=16, n_layers=2, dim_cond=2)
    x, cond = torch.randn(3, 10, 4), torch.randn(3, 2)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    mu, logvar = enc(x, mask, cond)
    assert mu.shape == logvar.shape == (3, 7)
    perm = torch.randperm(10)
    mu_p, logvar_p = enc(x[:, perm], mask[:, perm], cond)
    torch.testing.assert_close(mu_p, mu)
    torch.testing.assert_close(logvar_p, logvar)
    padded = torch.cat([x, torch.randn(3, 4, 4)], dim=1)
    mask_padded = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(padded, mask_padded, cond)[0], mu)


# ----------------------------------------------------------------------------- DDPM


def test_schedules():
    lin = DDPMSchedule(100, 1e-4, 0.02, "linear")
    quad = DDPMSchedule(100, 1e-4, 0.02, "quadratic")
    for s in (lin, quad):
        assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
        assert (s.alphas_bar.diff() < 0).all() and (s.c_noise.diff() > 0).all()
        assert s.posterior_var[0] == 0 and (s.posterior_var[1:] <= s.betas[1:]).all()
    assert quad.alphas_bar[-1] > lin.alphas_bar[-1]  # the quadratic schedule adds less noise
    with pytest.raises(ValueError, match="beta schedule"):
        DDPMSchedule(10, 1e-4, 0.02, "cosine")


@pytest.mark.parametrize("kind", ["linear", "quadratic"])
def test_forward_noising_matches_the_closed_form(kind):
    schedule = DDPMSchedule(50, 1e-4, 0.05, kind)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((40000,), 0.8)
    x = x0.clone()
    for t in range(schedule.n_steps):  # q(x_t | x_t-1) step by step ...
        beta = schedule.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=gen)
        if t in (0, 24, 49):  # ... equals q(x_t | x_0) = N(sqrt(abar_t) x0, 1 - abar_t)
            abar = schedule.alphas_bar[t]
            assert float(x.mean()) == pytest.approx(float(abar.sqrt() * 0.8), abs=0.01)
            assert float(x.var()) == pytest.approx(float(1 - abar), rel=0.03, abs=1e-4)
    sigma = ((1 - schedule.alphas_bar) / schedule.alphas_bar).sqrt()
    torch.testing.assert_close(schedule.c_noise, sigma.log() / 4, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("mu", "std"), [(0.0, 1.0), (1.5, 0.3)])
def test_ancestral_sampler_recovers_a_gaussian(mu, std):
    schedule = DDPMSchedule(200, 1e-4, 0.1, "linear")  # ends near pure noise
    abar = schedule.alphas_bar
    c_to_t = {float(c): t for t, c in enumerate(schedule.c_noise)}

    def oracle(x, c_noise):  # E[eps | x_t] for x_0 ~ N(mu, std^2)
        a = abar[c_to_t[float(c_noise[0])]]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * std**2 + 1 - a)

    x = sample_ddpm(oracle, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)), schedule,
                    torch.Generator().manual_seed(1))  # fmt: skip
    assert float(x.mean()) == pytest.approx(mu, abs=0.03)
    assert float(x.std()) == pytest.approx(std, rel=0.05)


def test_ddpm_loss_ignores_padding():
    schedule = DDPMSchedule(10)
    x0, noise = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    t = torch.tensor([3, 7])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False

    def net(x, c_noise):
        return torch.zeros_like(x)

    a = ddpm_loss(net, x0, {}, schedule, t, noise, mask)
    noise2 = noise.clone()
    noise2[:, 4:] = 50.0
    assert ddpm_loss(net, x0, {}, schedule, t, noise2, mask) == a
    assert a == pytest.approx(float((noise[:, :4] ** 2).mean()))


def test_truncated_normal_is_bounded_and_seeded():
    a = truncated_normal((1000, 8), torch.Generator().manual_seed(3), 2.0)
    assert a.abs().max() <= 2.0 and 0.7 < float(a.std()) < 0.95
    torch.testing.assert_close(a, truncated_normal((1000, 8), torch.Generator().manual_seed(3), 2.0))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("data") / "train.h5"
    write_showers(path, random_points(30, 60, seed=5), generator="test",
                  attrs={"energy_min_gev": 10.0, "energy_max_gev": 90.0})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def donor(data_file, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CaloClouds II run: the Shower Flow CaloClouds borrows."""
    out = tmp_path_factory.mktemp("caloclouds2")
    train_caloclouds2(CaloClouds2Config.from_preset("smoke", steps=6, flow_steps=6), data_file, out)
    return out


@pytest.fixture(scope="module")
def trained(data_file, donor, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("caloclouds1")
    return train(TINY, data_file, out, flow_from=donor)


def test_train_borrows_the_flow_and_generates(trained, donor, data_file):
    assert trained.complete and trained.step == TINY.steps
    assert set(trained.losses) == {"ddpm_loss", "kl", "latent_flow_loss"}
    assert set(trained.parameters) == {"shower_flow", "epic_encoder", "latent_flow", "pointwise_net"}
    model = load_model(trained.checkpoint)
    donor_state = torch.load(donor / "checkpoint.pt", weights_only=True)["model"]
    for name, value in model.flow.state_dict().items():
        assert torch.equal(value, donor_state[f"flow.{name}"]), name  # frozen, as borrowed
    generator = load_generator(trained.checkpoint)
    assert isinstance(generator, CaloClouds1Generator)
    showers = next(generate(model, [15.0, 50.0, 85.0], seed=2))
    assert showers.points.shape[0] == 3 and (showers.n_points >= 1).all()
    assert (showers.points[..., 3] >= 0).all() and torch.isfinite(torch.from_numpy(showers.points)).all()
    again = next(generate(model, [15.0, 50.0, 85.0], seed=2))
    assert (again.points == showers.points).all()  # seeded
    eager = next(generate(model, [15.0, 50.0, 85.0], seed=2, fast=False))
    assert (eager.n_points == showers.n_points).all()
    torch.testing.assert_close(
        torch.from_numpy(eager.points), torch.from_numpy(showers.points), rtol=1e-3, atol=1e-2
    )


def test_latent_flow_inverts_and_has_a_log_prob(trained):
    model = load_model(trained.checkpoint)
    energy, n = torch.tensor([12.0, 50.0, 88.0]), torch.tensor([800, 2500, 4000])
    noise = torch.randn(3, model.config.latent_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        latent = model.latent_from_noise(energy, n, noise)
        dist = model.latent_flow(model.condition(energy, n))
        torch.testing.assert_close(dist.transform(latent), noise, atol=1e-4, rtol=1e-4)
        z, ladj = dist.transform.call_and_ladj(latent)
        base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        torch.testing.assert_close(dist.log_prob(latent), base + ladj, atol=1e-4, rtol=1e-4)
    assert latent.shape == (3, model.config.latent_dim) and torch.isfinite(dist.log_prob(latent)).all()


def test_generation_refuses_what_it_cannot_do(trained):
    generator = load_generator(trained.checkpoint)
    for request, match in [
        (GenerationRequest(sampler="heun"), "does not fit a DDPM model"),
        (GenerationRequest(n_steps=5), "steps it was trained with"),
        (GenerationRequest(precision="bfloat16"), "float32"),
        (GenerationRequest(options={"wide": 1}), "unknown CaloClouds generation option"),
    ]:
        with pytest.raises(GenerationError, match=match):
            generator.plan(request)
    with pytest.raises(GenerationError, match="outside"):
        next(generate(load_model(trained.checkpoint), [500.0]))


def _stop_at(step: int):
    def progress(stage: str, done: int, total: int, info: str = "") -> None:
        if stage == "train" and done == step:
            raise KeyboardInterrupt

    return progress


def test_interrupt_and_resume_match_straight_run(trained, data_file, donor, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(TINY, data_file, tmp_path, flow_from=donor, progress=_stop_at(3))
    resumed = train(TINY, data_file, tmp_path, resume=True)  # the flow comes from the checkpoint
    a = torch.load(trained.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("model", "train_net"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["calibration"] == b["calibration"]


def test_flow_from_must_be_a_point_model_of_the_detector(data_file, donor, tmp_path):
    with pytest.raises(ValueError, match="has no Shower Flow"):
        train(TINY, data_file, tmp_path / "a", flow_from="calodream")
    with pytest.raises(FileNotFoundError, match="not found"):
        train(TINY, data_file, tmp_path / "b", flow_from=tmp_path / "missing")
    assert borrow_flow(donor, get_detector("ild-ecal"))[1]["n_layers"] == 30
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_checkpoint_errors(trained, donor, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="not a CaloClouds checkpoint"):
        load_model(donor / "checkpoint.pt")
    state = torch.load(trained.checkpoint, weights_only=True)
    state["format_version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tmp_path / "future.pt")


def test_shipped_model_on_the_command_line(monkeypatch, capsys, tmp_path):
    out = tmp_path / "cc1.h5"
    generate_cc1 = ("generate", "--model", "caloclouds1", "-n", 2)
    code, _, err = cli_run(monkeypatch, capsys, *generate_cc1, "--energy", 500, "--out", out)
    assert code == 2 and "outside" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = cli_run(
        monkeypatch, capsys, *generate_cc1, "--energy", 95, "--allow-extrapolation", "--seed", 3, "--out", out
    )
    assert code == 0, err
    with open_showers(out) as f:
        assert len(f) == 2 and f.generator == "caloclouds1" and f.attrs["network_calls"] == 100
