"""CaloClouds II: Shower Flow, PointWise Net, EDM contract, samplers, calibrations, training, checkpoints."""

import copy
import json
import math
import signal
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from caloforge.calibrate import (
    NPointsCalibration,
    RadialCalibration,
    assign_layers,
    calibrate_points,
    fit_radial_calibration,
    rescale_layer_energies,
    ring_fractions,
    shift_cog,
    tilt_cog,
)
from caloforge.detector import get_detector
from caloforge.io import PointShowers, ShowerWriter, read_showers, write_showers
from caloforge.models import CheckpointError, GenerationError, GenerationRequest
from caloforge.models._training import _InterruptFlag
from caloforge.models.caloclouds2 import (
    CaloClouds2Config,
    SamplerSpec,
    calibrate,
    faster_bfloat16,
    generate,
    load_model,
    native_bfloat16,
    resolve_precision,
    save_for_inference,
    train,
)
from caloforge.models.caloclouds2.data import load_training_data as _load_training_data
from caloforge.models.caloclouds2.training import _Trainer
from caloforge.models.nn import pointwise
from caloforge.models.nn.couplinginverse import CouplingFlowInverse
from caloforge.models.nn.edm import EDMDenoiser, edm_loss
from caloforge.models.nn.ema import EMA
from caloforge.models.nn.pointwise import (
    CPU_WIDTHS,
    PAPER_WIDTHS,
    FoldedPointWiseNet,
    PointScaler,
    PointWiseNet,
    dequantize,
)
from caloforge.models.nn.showerflow import ShowerFlow, largest_remainder, shower_stats
from caloforge.sampling import karras_sigmas, sample_euler, sample_heun
from conftest import CALOCLOUDS2_TINY as TINY
from conftest import random_points

torch.set_num_threads(1)
ILD = get_detector("ild-ecal")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("data") / "train.h5"
    showers = random_points(30, 60, seed=5)
    write_showers(path, showers, generator="test", attrs={"energy_min_gev": 10.0, "energy_max_gev": 90.0})
    return path


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("model")
    result = train(TINY, data_file, out)
    return result, load_model(result.checkpoint)


# ----------------------------------------------------------------------------- Shower Flow


def test_shower_stats_sum_to_totals():
    showers = random_points(12, 40, seed=1)
    stats = shower_stats(showers, 30)
    assert torch.equal(stats.layer_counts.sum(1), torch.as_tensor(showers.n_points, dtype=torch.float32))
    np.testing.assert_allclose(stats.e_vis.numpy(), showers.points[..., 3].sum(1), rtol=1e-5)
    w = showers.points[..., 3]
    np.testing.assert_allclose(
        stats.cog[:, 0].numpy(), (w * showers.points[..., 0]).sum(1) / w.sum(1), atol=1e-4
    )


@pytest.mark.parametrize("passes", [None, 2])
def test_flow_log_prob_finite_and_samples_valid(passes):
    showers = random_points(40, 50, seed=2)
    flow = ShowerFlow(n_layers=30, hidden=(32,), transforms=2, passes=passes, max_points=50)
    gen = torch.Generator().manual_seed(0)
    feats = flow.features(showers, gen)
    assert feats.shape == (40, 62)
    flow.fit_standardisation(feats)
    energy = torch.as_tensor(showers.energy, dtype=torch.float32)
    assert torch.isfinite(flow.log_prob(feats, energy)).all()

    sample = flow.sample(energy, torch.Generator().manual_seed(1))
    n = sample.n_points
    assert n.dtype == torch.int64 and (n >= 1).all() and (n <= 50).all()
    assert torch.equal(sample.layer_counts.sum(1), n)
    assert (sample.layer_counts >= 0).all()
    torch.testing.assert_close(sample.layer_energy.sum(1), sample.e_vis, rtol=1e-4, atol=0)
    assert (sample.layer_energy[sample.layer_counts == 0] == 0).all()
    assert (sample.layer_energy[sample.layer_counts > 0] > 0).all()
    torch.testing.assert_close(sample.point_fractions.sum(1), torch.ones(40))
    assert torch.isfinite(sample.cog).all()
    again = flow.sample(energy, torch.Generator().manual_seed(1))
    assert torch.equal(again.layer_counts, sample.layer_counts)


def test_flow_learns():
    showers = random_points(64, 40, seed=3)
    flow = ShowerFlow(n_layers=30, hidden=(32,), transforms=1, max_points=40)
    gen = torch.Generator().manual_seed(0)
    flow.fit_standardisation(flow.features(showers, gen))
    energy = torch.as_tensor(showers.energy, dtype=torch.float32)
    stats = shower_stats(showers, 30)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = -flow.log_prob(flow.features_from_stats(stats, energy, gen), energy).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_remainder_sums_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(50, 30, generator=g) ** 4
    totals = torch.randint(1, 7000, (50,), generator=g)
    counts = largest_remainder(frac, totals)
    assert torch.equal(counts.sum(1), totals)
    exact = frac / frac.sum(1, keepdim=True) * totals.unsqueeze(1)
    assert ((counts - exact).abs() < 1).all()


# ----------------------------------------------------------------------------- PointWise Net, EDM


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_preset_sizes():
    assert 500_000 < _n_params(PointWiseNet(PAPER_WIDTHS)) < 510_000  # SPEC 6.1: ≈ 505k
    assert 50_000 < _n_params(PointWiseNet(CPU_WIDTHS)) < 120_000
    assert CaloClouds2Config.from_preset("paper").net_widths == PAPER_WIDTHS
    with pytest.raises(ValueError, match="unknown CaloClouds II preset"):
        CaloClouds2Config.from_preset("huge")
    cfg = CaloClouds2Config.from_preset("cpu", steps=5)
    assert CaloClouds2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # Fields added later read with the values older checkpoints were trained with.
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("flow_bound", "sampler_sigma_max")}
    assert CaloClouds2Config.from_dict(old).sampler_sigma_max == 80.0


def test_point_scaler_round_trip_and_spread():
    showers = random_points(20, 80, seed=4)
    pts, mask = torch.from_numpy(showers.points), torch.from_numpy(showers.mask)
    scaler = PointScaler(target_std=0.5).fit(pts, mask)
    z = scaler(pts)[mask]
    torch.testing.assert_close(z.std(0)[2:], torch.full((2,), 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(scaler.inverse(scaler(pts))[mask], pts[mask], rtol=1e-4, atol=1e-4)
    assert (scaler.inverse(torch.full((1, 4), 1e3))[:, 3] < math.inf).all()


def test_dequantize_stays_in_square_and_layer():
    pts = torch.tensor([[[0.424, -0.424, 3.5, 1.0]] * 1000])
    out = dequantize(pts, ILD.fine_cell_mm, torch.Generator().manual_seed(0))
    half = ILD.fine_cell_mm / 2
    assert ((out[..., 0] - 0.424).abs() <= half).all() and ((out[..., 1] + 0.424).abs() <= half).all()
    assert ((out[..., 2] >= 3) & (out[..., 2] < 4)).all()
    assert torch.equal(out[..., 3], pts[..., 3])
    assert out[..., 2].std() > 0.25  # uniform over the layer, std 1/sqrt(12)


def test_denoiser_contract():
    torch.manual_seed(0)
    net = PointWiseNet((4, 16, 4))
    d = EDMDenoiser(net, sigma_data=0.5)
    x = torch.randn(3, 7, 4)
    cond = {"energy": torch.tensor([10.0, 50.0, 90.0]), "n_points": torch.tensor([7, 5, 2])}
    torch.testing.assert_close(d(x, 1e-6, **cond), x, atol=1e-5, rtol=0)  # c_skip -> 1, c_out -> 0
    c_skip, c_out, c_in = d.scalings(torch.tensor(1e4))
    assert c_skip < 1e-8 and abs(c_out - 0.5) < 1e-6 and c_in < 1e-3
    assert d(x, torch.tensor([0.1, 1.0, 10.0]), **cond).shape == x.shape


def test_edm_loss_ignores_padding_and_trains():
    torch.manual_seed(0)
    net = PointWiseNet((4, 16, 4))
    d = EDMDenoiser(net)
    x0 = torch.randn(4, 10, 4) * 0.5
    mask = torch.arange(10).unsqueeze(0) < torch.tensor([[10], [3], [1], [6]])
    cond = {"energy": torch.full((4,), 50.0), "n_points": mask.sum(1)}
    loss = edm_loss(d, x0, cond, mask=mask, generator=torch.Generator().manual_seed(1))
    junk = torch.where(mask.unsqueeze(-1), x0, 1e3)
    same = edm_loss(d, junk, cond, mask=mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, same)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_ema_warm_up():
    net = torch.nn.Linear(3, 3)
    ema = EMA(net, max_decay=0.9999)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # first decay is 0: a copy
    torch.testing.assert_close(ema.module.weight, net.weight)
    assert ema.decay == pytest.approx(1 - 2 ** (-2 / 3))
    ema.num_updates = 10**9
    assert ema.decay == 0.9999
    restored = EMA(torch.nn.Linear(3, 3))
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.module.weight, net.weight)
    assert restored.num_updates == 10**9


# ----------------------------------------------------------------------------- samplers


def test_karras_sigmas():
    s = karras_sigmas(13)
    assert len(s) == 14 and s[-1] == 0
    assert s[0] == pytest.approx(80) and s[-2] == pytest.approx(0.002)
    assert (s[:-1] > s[1:]).all()


def _gaussian_denoiser(mu: float, std: float):
    calls = []

    def denoise(x, sigma):
        calls.append(1)
        shrink = std**2 / (std**2 + sigma.view(-1, 1) ** 2)
        return mu + shrink * (x - mu)

    return denoise, calls


@pytest.mark.parametrize(("mu", "std"), [(1.0, 0.5), (-2.0, 2.0)])
def test_heun_recovers_gaussian(mu, std):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 1, generator=g)
    noise = (noise - noise.mean()) / noise.std()

    def run(sampler, n):
        denoise, calls = _gaussian_denoiser(mu, std)
        sigmas = karras_sigmas(n)
        return sampler(denoise, noise * sigmas[0], sigmas), len(calls)

    out, calls = run(sample_heun, 13)
    assert calls == 25  # 12 Heun steps + a final Euler step
    assert out.mean().item() == pytest.approx(mu, abs=0.06 * max(1, abs(mu)))
    assert out.std().item() == pytest.approx(std, rel=0.15)  # 13 steps: ~10 % discretisation error
    fine, _ = run(sample_heun, 200)
    assert fine.std().item() == pytest.approx(std, rel=0.01)
    euler, _ = run(sample_euler, 13)
    assert abs(out.std().item() - std) < abs(euler.std().item() - std)


def test_churn_uses_generator():
    denoise, _ = _gaussian_denoiser(0.0, 1.0)
    sigmas = karras_sigmas(5)
    x = torch.zeros(4, 2)

    def run(seed):
        return sample_heun(denoise, x, sigmas, s_churn=5.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ----------------------------------------------------------------------------- calibrations


def _points(seed: int = 0):
    showers = random_points(6, 40, seed=seed)
    pts = torch.from_numpy(showers.points)
    pts[..., 2] = torch.where(pts[..., 3] > 0, torch.rand(pts.shape[:2]) * 30, 0.0)
    return pts, torch.from_numpy(showers.mask)


def test_assign_layers_by_depth_rank():
    pts, mask = _points()
    n = mask.sum(1)
    counts = largest_remainder(torch.rand(6, 30), n)
    out = assign_layers(pts, mask, counts)
    layer = out[..., 2].floor().long()
    for b in range(6):
        got = torch.bincount(layer[b][mask[b]], minlength=30)
        assert torch.equal(got, counts[b])
        depth = pts[b, mask[b], 2]
        assert (torch.diff(layer[b][mask[b]][depth.argsort()]) >= 0).all()  # deeper never earlier
    assert torch.equal(out[~mask], pts[~mask])
    assert ((out[..., 2][mask] % 1) == 0.5).all()
    with pytest.raises(ValueError, match="sum"):
        assign_layers(pts, mask, counts + 1)


def test_assign_layers_full_shower_and_empty_layers():
    depth = torch.tensor([[2.0, 0.5, 1.5, 0.1], [3.0, 1.0, 0.0, 0.0]])
    pts = torch.zeros(2, 4, 4)
    pts[..., 2], pts[..., 3] = depth, 1.0
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])  # first: no padding
    counts = torch.tensor([[2, 0, 2], [0, 0, 2]])  # empty first/middle layers
    out = assign_layers(pts, mask, counts)
    assert out[0, :, 2].tolist() == [2.5, 0.5, 2.5, 0.5]
    assert out[1, :2, 2].tolist() == [2.5, 2.5] and out[1, 2:, 2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "batched"])
@pytest.mark.parametrize("widths", [(4, 16, 4), (4, 24, 40, 24, 4)])
def test_folded_net_equals_the_net(widths, fused, monkeypatch):
    if fused and not pointwise.fused_linear_available(torch.float32):
        pytest.skip("oneDNN's fused linear kernel is not available here")
    available = pointwise.fused_linear_available  # per dtype: bfloat16 needs AVX-512 or AMX
    monkeypatch.setattr(
        pointwise, "fused_linear_available", lambda dtype=torch.float32: fused and available(dtype)
    )
    torch.manual_seed(0)
    net = PointWiseNet(widths=widths)
    x = torch.randn(3, 7, 4)
    args = (torch.tensor([-1.0, 0.2, 0.5]), torch.tensor([10.0, 50.0, 90.0]), torch.tensor([7, 5, 2]))
    with torch.no_grad():
        want = net(x, *args)
        torch.testing.assert_close(FoldedPointWiseNet(net)(x, *args), want, rtol=1e-5, atol=1e-5)
        half = FoldedPointWiseNet(net, torch.bfloat16)(x, *args)
    assert half.dtype == torch.float32 and half.shape == want.shape
    assert (half - want).abs().max() < 0.05 * want.abs().max()  # bfloat16: 8 significant bits


def test_precision_resolution(monkeypatch):
    import caloforge.models.caloclouds2.generation as cc2

    assert resolve_precision("float32") == "float32" and resolve_precision("bfloat16") == "bfloat16"
    assert resolve_precision("auto") == ("bfloat16" if faster_bfloat16("cpu") else "float32")
    with pytest.raises(GenerationError, match="unknown precision 'half'"):
        resolve_precision("half")
    monkeypatch.setattr(cc2, "faster_bfloat16", lambda device="cpu": False)
    assert resolve_precision("auto") == "float32"
    monkeypatch.setattr(cc2, "faster_bfloat16", lambda device="cpu": True)
    assert resolve_precision("auto") == "bfloat16"


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "vendor", "faster"),
    [
        (False, True, "GenuineIntel", False),  # Xeon without AMX: bfloat16 measured slower
        (True, True, "GenuineIntel", True),
        (False, True, "AuthenticAMD", True),  # EPYC with AVX-512-BF16: measured faster
        (False, False, "AuthenticAMD", False),
    ],
)
def test_auto_picks_the_precision_measured_faster(monkeypatch, amx, avx512_bf16, vendor, faster):
    import caloforge.models.caloclouds2.generation as cc2

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(cc2, "fused_linear_available", lambda dtype=torch.float32: True)
    monkeypatch.setattr(cc2, "cpu_vendor", lambda: vendor)
    assert faster_bfloat16("cpu") is faster
    assert resolve_precision("auto") == ("bfloat16" if faster else "float32")


@pytest.mark.parametrize(("major", "native"), [(7, False), (8, True), (9, True)])
def test_native_bfloat16_on_gpus_from_ampere(monkeypatch, major, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=major))
    assert native_bfloat16("cuda") is native


def test_eager_and_fast_bfloat16_agree(trained):
    _, model = trained
    kw = {"seed": 3, "precision": "bfloat16"}
    eager = PointShowers.concatenate(list(generate(model, [30.0, 80.0], fast=False, **kw)))
    fast = PointShowers.concatenate(list(generate(model, [30.0, 80.0], fast=True, **kw)))
    assert np.abs(eager.n_points - fast.n_points).max() <= 1
    np.testing.assert_allclose(fast.points[..., 3].sum(1), eager.points[..., 3].sum(1), rtol=1e-4)
    assert (np.floor(fast.points[..., 2]) == np.floor(eager.points[..., 2])).mean() > 0.95


def test_layer_energies_and_cog_restored():
    pts, mask = _points(1)
    n = mask.sum(1)
    counts = largest_remainder(torch.rand(6, 30) + 0.1, n)
    target_e = torch.rand(6, 30) * (counts > 0) * 50
    target_cog = torch.randn(6, 2) * 5
    out = calibrate_points(pts, mask, counts, target_e, target_cog)
    layer = out[..., 2].floor().long().clamp(0, 29)
    e = out[..., 3] * mask
    per_layer = torch.zeros(6, 30).scatter_add_(1, layer, e)
    torch.testing.assert_close(per_layer, target_e, rtol=1e-4, atol=1e-4)
    cog = (out[..., :2] * e.unsqueeze(-1)).sum(1) / e.sum(1, keepdim=True)
    torch.testing.assert_close(cog, target_cog, rtol=0, atol=1e-3)
    assert (out[..., 3][mask] >= 0).all() and torch.equal(out[~mask], pts[~mask])
    # The single steps are idempotent on data that already agrees.
    torch.testing.assert_close(rescale_layer_energies(out, mask, target_e), out)
    torch.testing.assert_close(shift_cog(out, mask, target_cog), out, rtol=0, atol=1e-4)


def _layer_sums(points, mask):
    layer = points[..., 2].floor().long().clamp(0, 29)
    return torch.zeros(len(points), 30).scatter_add_(1, layer, points[..., 3] * mask)


def _wide_showers(seed: int, n: int = 6, points: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """Shower-like clouds: many points per layer around the axis, a few slots of padding."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.zeros(n, points, 4)
    pts[..., :2] = torch.randn(n, points, 2, generator=g) * 12
    pts[..., 2] = torch.randint(5, 20, (n, points), generator=g) + 0.5
    pts[..., 3] = torch.rand(n, points, generator=g) + 0.05
    mask = torch.arange(points) < torch.tensor([points - 7 * i for i in range(n)]).unsqueeze(1)
    pts[~mask] = 0.0
    return pts, mask


def test_tilt_sets_the_centre_of_gravity_without_moving_points():
    pts, mask = _wide_showers(4)
    counts = torch.stack(
        [torch.bincount(p[m, 2].long(), minlength=30) for p, m in zip(pts, mask, strict=True)]
    )
    target = torch.randn(6, 2)  # mm: the sub-cell offsets of real showers
    out = tilt_cog(pts, mask, target, 30)
    e = out[..., 3] * mask
    cog = (out[..., :2] * e.unsqueeze(-1)).sum(1) / e.sum(1, keepdim=True)
    torch.testing.assert_close(cog, target, rtol=0, atol=0.05)
    torch.testing.assert_close(_layer_sums(out, mask), _layer_sums(pts, mask), rtol=1e-4, atol=1e-4)
    assert torch.equal(out[..., :3], pts[..., :3]) and (out[..., 3][mask] > 0).all()
    assert torch.equal(out[~mask], pts[~mask])
    # A shower on a single point cannot tilt: it stays finite and keeps its energy.
    one = torch.tensor([[[0.0, 0.0, 3.5, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    kept = tilt_cog(one, one[..., 3] > 0, torch.tensor([[4.0, -4.0]]), 30)
    assert torch.equal(kept, one)
    with pytest.raises(ValueError, match="unknown centre-of-gravity correction 'nudge': use shift, tilt"):
        calibrate_points(pts, mask, counts, torch.ones(6, 30), target, cog="nudge")


def test_radial_calibration_moves_energy_between_radii_only():
    pts, mask = _wide_showers(6)
    layer_e = _layer_sums(pts, mask)
    core_heavier = RadialCalibration(5.0, (0.5, 0.2, 0.0, -0.2))
    out = core_heavier.apply(pts, mask, layer_e)
    torch.testing.assert_close(_layer_sums(out, mask), layer_e, rtol=1e-4, atol=1e-4)
    r = pts[..., :2].norm(dim=-1)
    share = lambda p: ((p[..., 3] * mask * (r < 5)).sum() / (p[..., 3] * mask).sum()).item()  # noqa: E731
    assert share(out) > share(pts)
    identity = RadialCalibration.identity(5.0, 4)
    torch.testing.assert_close(identity.apply(pts, mask, layer_e), pts)
    assert RadialCalibration.from_dict(json.loads(json.dumps(core_heavier.to_dict()))) == core_heavier
    with pytest.raises(ValueError, match="at least two rings"):
        RadialCalibration(5.0, (0.0,))


def test_radial_fit_recovers_the_reference_ring_shares():
    """Model showers twice as wide as the reference: the fit gives the reference's ring shares."""
    rng = np.random.default_rng(3)

    def showers(width: float, n: int, seed: int) -> PointShowers:
        g = np.random.default_rng(seed)
        pts = np.zeros((n, 400, 4), np.float32)
        pts[..., :2] = g.normal(0, width, (n, 400, 2))
        pts[..., 2] = g.integers(5, 15, (n, 400)) + 0.5
        pts[..., 3] = g.exponential(2.0, (n, 400)) + 0.2
        return PointShowers(np.full(n, 50.0), pts)

    reference = ring_fractions(showers(6.0, 64, 1), ILD)[0].mean(0)
    state = {"radial": None}

    def sample(energy, gen):
        model = showers(12.0, len(energy), int(rng.integers(1 << 30)))
        if state["radial"] is None:
            return model
        pts = torch.from_numpy(model.points)
        mask = torch.from_numpy(model.mask)
        out = state["radial"].apply(pts, mask, _layer_sums(pts, mask))
        return PointShowers(model.energy, out.numpy())

    before = np.abs(ring_fractions(sample(torch.full((64,), 50.0), None), ILD)[0].mean(0) - reference)[
        :4
    ].sum()
    fit = fit_radial_calibration(
        sample, lambda r: state.update(radial=r), ILD, torch.full((64,), 50.0), reference, iterations=3
    )
    after = np.abs(ring_fractions(sample(torch.full((64,), 50.0), None), ILD)[0].mean(0) - reference)[
        :4
    ].sum()
    assert after < 0.3 * before
    assert fit.log_weights[0] > 0 > fit.log_weights[3]  # energy pulled into the core


@pytest.mark.parametrize("hidden", [(16,), (16, 8)])
def test_coupling_inverse_equals_the_flow(hidden):
    flow = ShowerFlow(n_layers=30, hidden=hidden, transforms=3, max_points=50)
    flow.fit_standardisation(flow.features(random_points(30, 50, seed=2), torch.Generator().manual_seed(0)))
    energy = torch.tensor([10.0, 33.0, 90.0, 55.0])
    noise = torch.randn(4, flow.n_features, generator=torch.Generator().manual_seed(1)) * 3  # tails too
    torch.testing.assert_close(
        CouplingFlowInverse(flow)(energy, noise),
        flow.features_from_noise(energy, noise),
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="coupling transforms"):
        CouplingFlowInverse(ShowerFlow(n_layers=3, hidden=(8,), transforms=1, passes=None))


def test_coarser_clustering_trains_on_fewer_points(data_file, tmp_path):
    fine = _load_training_data(data_file, TINY, None)
    config = CaloClouds2Config.from_preset(
        "smoke", cluster_per_cell=1, steps=4, flow_steps=2, calibration_showers=4
    )
    coarse = _load_training_data(data_file, config, None)
    assert (
        coarse.point_pitch_mm == pytest.approx(ILD.readout.cell_size_mm)
        and fine.point_pitch_mm == ILD.fine_cell_mm
    )
    assert (
        coarse.stats.n_points <= fine.stats.n_points
    ).all() and coarse.stats.n_points.sum() < fine.stats.n_points.sum()
    torch.testing.assert_close(coarse.stats.e_vis, fine.stats.e_vis, rtol=1e-4, atol=1e-3)
    result = train(config, data_file, tmp_path / "run")
    model = load_model(result.checkpoint)
    assert model.config.cluster_per_cell == 1 and model.max_points == int(coarse.stats.n_points.max())
    with pytest.raises(ValueError, match="cluster_per_cell must be at least 1"):
        CaloClouds2Config(cluster_per_cell=0)


def test_calibrate_sets_cog_correction_and_radial_weights(trained, data_file, tmp_path):
    result, model = trained
    assert model.cog_correction == "tilt" and model.radial_calibration is None
    out = tmp_path / "radial.pt"
    calibrate(result.checkpoint, data_file, out, cog="shift", radial=True, showers=8)
    again = load_model(out)
    assert again.cog_correction == "shift" and again.radial_calibration is not None
    assert len(next(generate(again, [50.0]))) == 1
    kept = tmp_path / "kept.pt"
    save_for_inference(out, kept)
    assert load_model(kept).radial_calibration == again.radial_calibration
    with pytest.raises(ValueError, match="unknown centre-of-gravity correction 'nudge'"):
        calibrate(result.checkpoint, data_file, tmp_path / "x.pt", cog="nudge")


def test_n_points_calibration_inverts_hit_ratio():
    rng = np.random.default_rng(0)
    n_data = rng.integers(500, 6000, 400)
    n_gen = rng.integers(500, 6000, 300)
    # Geant4 makes 0.3 hits per point; the model 0.6: it needs half as many points.
    cal = NPointsCalibration.fit(n_data, 0.3 * n_data, n_gen, 0.6 * n_gen, n_scale=6000)
    out = cal(torch.tensor([1000, 3000, 5000]))
    np.testing.assert_allclose(out.numpy(), [500, 1500, 2500], rtol=0.01)
    again = NPointsCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert torch.equal(again(torch.tensor([1, 4000, 9000])), cal(torch.tensor([1, 4000, 9000])))
    assert NPointsCalibration.identity(100)(torch.tensor([0, 50, 500])).tolist() == [1, 50, 200]


# ----------------------------------------------------------------------------- training, generation


def test_train_then_generate(trained, tmp_path):
    result, model = trained
    assert result.complete and result.step == TINY.steps
    assert model.complete and model.energy_range == (10.0, 90.0)
    assert (result.checkpoint.parent / "train_log.jsonl").read_text().count("\n") == 2
    energies = [10.0, 30.0, 55.5, 90.0, 42.0]
    batches = list(generate(model, energies, batch_size=2, seed=3, n_steps=3))
    assert [len(b) for b in batches] == [2, 2, 1]
    showers = PointShowers.concatenate(batches)
    np.testing.assert_allclose(showers.energy, energies)
    mask = showers.mask
    assert (showers.n_points >= 1).all() and (showers.n_points <= model.calibration.n_cap).all()
    pts = showers.points[mask]
    assert np.isfinite(showers.points).all() and (pts[:, 3] > 0).all()
    assert np.all(pts[:, 2] % 1 == 0.5) and pts[:, 2].min() >= 0 and pts[:, 2].max() < 30
    assert np.abs(pts[:, :2]).max() < 1000
    again = PointShowers.concatenate(list(generate(model, energies, batch_size=2, seed=3, n_steps=3)))
    np.testing.assert_array_equal(again.points, showers.points)
    # Grouping showers differently per network call changes the noise, not the flow's summaries.
    single = list(generate(model, energies, batch_size=2, seed=3, n_steps=3, points_per_call=1))
    one_by_one = PointShowers.concatenate(single)
    np.testing.assert_array_equal(one_by_one.n_points, showers.n_points)
    assert (one_by_one.points[one_by_one.mask][:, 3] > 0).all()
    path = tmp_path / "gen.h5"
    with ShowerWriter(path, "points", model.detector, generator="caloclouds2") as writer:
        for batch in batches:
            writer.write(batch)
    back = read_showers(path)
    np.testing.assert_allclose(back.points[back.mask][:, :3], pts[:, :3], rtol=1e-6)


def test_generate_refuses_extrapolation(trained):
    _, model = trained
    with pytest.raises(GenerationError, match="outside the trained range"):
        next(generate(model, [50.0, 150.0]))
    out = next(generate(model, [150.0], allow_extrapolation=True, n_steps=2))
    assert len(out) == 1
    with pytest.raises(GenerationError, match="sampler"):
        next(generate(model, [50.0], sampler="dpm"))


def test_time_budget_leaves_usable_checkpoint(data_file, tmp_path):
    result = train(TINY, data_file, tmp_path, max_minutes=0)
    assert result.step == 1 and not result.complete
    model = load_model(result.checkpoint)
    with pytest.warns(UserWarning, match="not finished"):
        assert len(next(generate(model, [50.0], n_steps=2))) == 1
    resumed = train(TINY, data_file, tmp_path, resume=True)
    assert resumed.complete and resumed.step == TINY.steps


def _stop_at(step: int):
    def progress(stage: str, done: int, total: int, info: str = "") -> None:
        if stage == "train" and done == step:
            raise KeyboardInterrupt

    return progress


def test_interrupt_and_resume_match_straight_run(data_file, tmp_path):
    straight = train(TINY, data_file, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(TINY, data_file, tmp_path / "split", progress=_stop_at(4))
    halfway = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert halfway["step"] == 4 and not halfway["complete"]
    resumed = train(TINY, data_file, tmp_path / "split", resume=True)
    assert resumed.step == straight.step == TINY.steps
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("model", "train_net"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["calibration"] == b["calibration"] and a["ema_num_updates"] == b["ema_num_updates"]


def test_interrupt_flag_defers_ctrl_c():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers live in the main thread")
    before = signal.getsignal(signal.SIGINT)
    with _InterruptFlag() as flag:
        signal.raise_signal(signal.SIGINT)
        assert flag.raised
    assert signal.getsignal(signal.SIGINT) is before


def test_checkpoint_errors(trained, data_file, tmp_path):
    result, _ = trained
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(garbage)
    truncated = tmp_path / "truncated.pt"
    raw = result.checkpoint.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a CaloClouds II checkpoint"):
        load_model(foreign)
    state = torch.load(result.checkpoint, weights_only=True)
    state["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(state, future)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(future)
    with pytest.raises(CheckpointError, match="exists"):
        train(TINY, data_file, result.checkpoint.parent)
    other = CaloClouds2Config.from_dict(TINY.to_dict() | {"lr": 1e-2})
    with pytest.raises(CheckpointError, match="fields lr"):
        train(other, data_file, result.checkpoint.parent, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        train(TINY, data_file, tmp_path / "fresh", resume=True)


def test_non_finite_loss_is_skipped(data_file):
    trainer = _Trainer(TINY, _load_training_data(data_file, TINY, None))
    before = {k: v.clone() for k, v in trainer.train_net.state_dict().items()}
    loss = trainer.train_net.layers[0].layer.weight.sum() * float("nan")
    assert trainer._update(loss, trainer.train_net, trainer.opt_net) is None
    assert trainer.skipped == 1
    for name, value in trainer.train_net.state_dict().items():
        assert torch.equal(value, before[name])


def test_n_points_calibration_refine_accounts_for_shared_cells():
    # A model whose hits grow as draws^0.7 within a shower: hits = 0.6 N^0.3 M^0.7 for M draws
    # from a shower of flow size N; Geant4 has 0.3 N. Exact answer: M = N 0.5^(1 / 0.7).
    rng = np.random.default_rng(1)
    n = rng.integers(500, 6000, 300).astype(float)

    def model_hits(cal):
        m = cal(torch.from_numpy(n).long()).numpy()
        return 0.6 * n**0.3 * m**0.7

    identity = NPointsCalibration.identity(6000)
    first = NPointsCalibration.fit(n, 0.3 * n, n, model_hits(identity), n_scale=6000)
    assert first(torch.tensor([4000])).item() == pytest.approx(2000, rel=0.01)  # ignores sharing
    better = first.refine(identity, n, 0.3 * n, n, model_hits(identity), n, model_hits(first))
    assert better(torch.tensor([4000])).item() == pytest.approx(4000 * 0.5 ** (1 / 0.7), rel=0.01)
    np.testing.assert_allclose(model_hits(better), 0.3 * n, rtol=0.01)


def test_save_for_inference_keeps_what_generation_needs(trained, tmp_path):
    result, model = trained
    small = save_for_inference(result.checkpoint, tmp_path / "model.pt")
    assert small.stat().st_size < result.checkpoint.stat().st_size
    assert "optimizers" not in torch.load(small, weights_only=True)
    stripped = load_model(small)
    a = PointShowers.concatenate(list(generate(model, [20.0, 60.0], seed=1, n_steps=3)))
    b = PointShowers.concatenate(list(generate(stripped, [20.0, 60.0], seed=1, n_steps=3)))
    np.testing.assert_array_equal(a.points, b.points)


def test_config_from_before_flow_bound_keeps_its_spline_range():
    old = CaloClouds2Config().to_dict()
    del old["flow_bound"]
    assert CaloClouds2Config.from_dict(old).flow_bound == 5.0  # zuko's default, what it was trained with
    assert CaloClouds2Config.from_dict(CaloClouds2Config().to_dict()).flow_bound == 10.0


def test_progress_reports_running_loss(data_file, tmp_path):
    infos = []

    def progress(stage: str, done: int, total: int, info: str = "") -> None:
        if stage == "train":
            infos.append(info)

    train(TINY, data_file, tmp_path, progress=progress)
    assert infos[0] == ""  # nothing logged yet
    last = infos[-1].split()
    assert last[0] == "edm" and math.isfinite(float(last[1])) and "flow" in last


def test_calibrate_refits_for_another_sampler(trained, data_file, tmp_path):
    result, model = trained
    out = tmp_path / "euler.pt"
    calibration = calibrate(result.checkpoint, data_file, out, sampler="euler", n_steps=3, showers=8)
    again = load_model(out)
    assert again.sampler == SamplerSpec("euler", 3, sigma_max=TINY.sampler_sigma_max)
    assert again.calibration.to_dict() == calibration.to_dict()
    assert load_model(result.checkpoint).sampler == model.sampler  # the original is untouched
    # generate() follows the model's sampler; the other kind of sampler is refused
    assert len(next(generate(again, [50.0]))) == 1
    with pytest.raises(GenerationError, match="does not fit an EDM"):
        next(generate(again, [50.0], sampler="consistency"))
    with pytest.raises(ValueError, match="does not fit"):
        calibrate(result.checkpoint, data_file, tmp_path / "x.pt", sampler="consistency")
    assert not (tmp_path / "x.pt").exists()


def test_sampler_spec_round_trip_and_calls():
    spec = SamplerSpec("consistency", 2)
    assert SamplerSpec(**spec.to_dict()) == spec and spec.network_calls == 2
    assert SamplerSpec("heun", 13).network_calls == 25
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSpec("dpm")


def test_fast_generation_gives_the_same_showers(trained):
    _, model = trained
    energies = [12.0, 55.0, 88.0]
    kw = {"batch_size": 2, "seed": 5, "precision": "float32"}
    eager = PointShowers.concatenate(list(generate(model, energies, fast=False, **kw)))
    fast = PointShowers.concatenate(list(generate(model, energies, fast=True, **kw)))
    # The traced flow's explicit softmax and the folded net round differently from the eager path.
    _assert_showers_close(fast, eager)


def _assert_showers_close(got, want):
    """Two float32 code paths give the same showers up to rounding: a point count may move by
    one, and a point whose depth ties with a neighbour's may change layer (CPU-dependent bits)."""
    assert np.abs(got.n_points - want.n_points).max() <= 1
    np.testing.assert_allclose(got.points[..., 3].sum(1), want.points[..., 3].sum(1), rtol=1e-4)
    same = got.n_points == want.n_points
    width = min(got.points.shape[1], want.points.shape[1])
    a, b = got.points[same, :width], want.points[same, :width]
    assert (np.floor(a[..., 2]) == np.floor(b[..., 2])).mean() > 0.98


def test_bfloat16_generation_is_close(trained):
    _, model = trained
    energies = [20.0, 70.0]
    full = PointShowers.concatenate(list(generate(model, energies, seed=2, precision="float32")))
    half = PointShowers.concatenate(list(generate(model, energies, seed=2, precision="bfloat16")))
    assert np.array_equal(full.n_points, half.n_points)  # the flow and the counts stay in float32
    assert np.isfinite(half.points).all() and (half.points[..., 3] >= 0).all()
    layer = np.floor(full.points[..., 2]) == np.floor(half.points[..., 2])
    assert layer.mean() > 0.9
    with pytest.raises(GenerationError, match="precision"):
        next(generate(model, energies, precision="float8"))


def test_fast_row_argsort_is_torchs_stable_argsort():
    from caloforge.calibrate import _argsort_rows

    g = torch.Generator().manual_seed(1)
    values = torch.randn(5, 300, generator=g) * 1e3
    values[:, :80] = torch.randint(-2, 3, (5, 80), generator=g).float()  # ties, -0.0 / +0.0
    values[0, :10] = -0.0
    values[:, 250:] = float("inf")  # padding
    values[1, 5] = -float("inf")
    values[2, [7, 100]] = float("nan")
    values[3, 9] = -float("nan")  # NaNs go last whatever their sign, as in torch
    assert torch.equal(_argsort_rows(values), torch.argsort(values, dim=1, stable=True))
    grad = values.clone().requires_grad_()
    assert torch.equal(_argsort_rows(grad), torch.argsort(values, dim=1, stable=True))
    assert _argsort_rows(torch.zeros(3, 0)).shape == (3, 0)


def test_worker_processes_make_the_same_file(trained, tmp_path):
    from caloforge.generation import generate_file, parallel_generate

    result, model = trained
    energies = np.linspace(15.0, 85.0, 7)
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    kw = {"seed": 8, "batch_size": 2, "precision": "float32"}
    generate_file(result.checkpoint, energies, one, **kw)
    generate_file(result.checkpoint, energies, two, workers=2, **kw)
    a, b = read_showers(one), read_showers(two)
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.points, b.points)
    # batches are independent streams: a run in pieces equals the run in one go
    whole = list(generate(model, energies, batch_size=2, seed=8, precision="float32"))
    tail = list(generate(model, energies[4:], batch_size=2, seed=8, precision="float32", first_batch=2))
    np.testing.assert_array_equal(whole[2].points, tail[0].points)
    with pytest.raises(GenerationError, match="outside the trained range"):
        next(parallel_generate(result.checkpoint, [500.0], 2))
    with pytest.raises(ValueError, match="workers must be at least 1"):
        generate_file(result.checkpoint, energies, tmp_path / "x.h5", workers=0)


def test_traced_flow_follows_weight_updates(trained):
    from caloforge.models.caloclouds2.generation import _traced_flow

    _, model = trained
    model = copy.deepcopy(model).eval()
    energy, noise = torch.full((4,), 40.0), torch.randn(4, model.flow.n_features)
    with torch.no_grad():
        before = _traced_flow(model)(energy, noise)
        torch.testing.assert_close(
            before, model.flow.features_from_noise(energy, noise), rtol=1e-5, atol=1e-5
        )
        for p in model.flow.parameters():
            p.mul_(0.9)  # what an optimizer step does: in place
        after = _traced_flow(model)(energy, noise)
        torch.testing.assert_close(after, model.flow.features_from_noise(energy, noise), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    assert _traced_flow(model) is _traced_flow(model)  # unchanged weights: the cached trace
    model.flow.train()
    model.flow = copy.deepcopy(model.flow)  # a new flow object with the same weights: a new trace
    traced = _traced_flow(model)
    assert model.flow.training  # tracing leaves the module's mode as it was
    with torch.no_grad():
        torch.testing.assert_close(traced(energy, noise), after)


def test_generation_pool_checks_requests_and_survives_a_dead_worker(trained):
    import os
    import signal

    from caloforge.generation import GenerationPool, parallel_generate

    result, _ = trained
    with pytest.raises(GenerationError, match="sampler 'consistency' does not fit"):
        parallel_generate(result.checkpoint, [40.0], 2, sampler="consistency")  # before any worker starts
    with pytest.raises(GenerationError, match="unknown CaloClouds II generation option 'no_such_option'"):
        parallel_generate(result.checkpoint, [40.0], 2, no_such_option=1)
    with GenerationPool(result.checkpoint, 2) as pool:
        plan = pool.plan(GenerationRequest(precision="float32"))
        batches = pool.generate(np.full(40, 40.0), plan, 2, seed=1)
        next(batches)
        for pid in pool.engine.pids():
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(GenerationError, match="worker stopped unexpectedly"):
            list(batches)
