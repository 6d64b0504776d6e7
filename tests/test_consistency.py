"""CaloClouds II (CM): consistency distillation on a toy teacher and on a tiny CaloClouds II."""

import copy

import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from caloforge.models import CheckpointError
from caloforge.models.caloclouds2 import generate, load_model, train
from caloforge.models.caloclouds2.distillation import DistillConfig, consistency_distillation_loss, distill
from caloforge.models.nn.edm import ConsistencyDenoiser
from caloforge.sampling import consistency_sigmas, karras_sigmas, sample_consistency
from test_caloclouds2 import TINY, data_file  # noqa: F401  (fixture)

torch.set_num_threads(1)

MEANS = torch.tensor([[-0.5, 0.2], [0.5, -0.2]])
STD = 0.15


def mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    """Two 2-D Gaussians of equal weight: a bimodal toy 'data set'."""
    return MEANS[torch.randint(2, (n,), generator=gen)] + STD * torch.randn(n, 2, generator=gen)


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for the mixture: the perfect EDM teacher."""
    var = STD**2 + sigma.reshape(-1, 1) ** 2
    weights = torch.softmax(-((x[:, None, :] - MEANS) ** 2).sum(-1) / (2 * var), dim=1)
    posterior = MEANS + (STD**2 / var)[..., None] * (x[:, None, :] - MEANS)
    return (weights[..., None] * posterior).sum(1)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.f(torch.cat([x, c_noise.reshape(-1, 1)], dim=1))


def test_distilled_one_step_sampler_matches_toy_data():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = SmallNet()
    target = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    levels = karras_sigmas(18)[:-1]
    for _ in range(3000):
        loss = consistency_distillation_loss(
            ConsistencyDenoiser(net),
            ConsistencyDenoiser(target),
            exact_denoiser,
            mixture(256, gen),
            levels,
            generator=gen,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, s in zip(target.parameters(), net.parameters(), strict=True):
                t.lerp_(s, 0.05)
    noise = 80 * torch.randn(4000, 2, generator=gen)
    one_step = sample_consistency(ConsistencyDenoiser(net), noise, consistency_sigmas(1))
    naive = exact_denoiser(noise, torch.full((4000,), 80.0))  # the teacher in one step: the mean
    data = mixture(4000, gen)
    w1 = [wasserstein_distance(one_step[:, i], data[:, i]) for i in range(2)]
    w1_naive = [wasserstein_distance(naive[:, i], data[:, i]) for i in range(2)]
    assert w1[0] < 0.08 and w1[1] < 0.04, w1
    assert w1_naive[0] > 0.3
    assert 0.45 < (one_step[:, 0] > 0).float().mean() < 0.55  # both modes, equally often


def test_boundary_condition_and_config_checks():
    c_skip, c_out, _ = ConsistencyDenoiser(nn.Identity(), sigma_min=0.002).scalings(torch.tensor(0.002))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    with pytest.raises(ValueError, match="unknown consistency loss"):
        DistillConfig(loss="l1")
    with pytest.raises(ValueError, match="student_widths"):
        DistillConfig(student_widths=(3, 8, 4))


SMOKE = DistillConfig.from_preset("smoke", steps=6, log_every=2)


@pytest.fixture(scope="module")
def teacher(data_file, tmp_path_factory):  # noqa: F811
    return train(TINY, data_file, tmp_path_factory.mktemp("teacher")).checkpoint


def test_distill_writes_a_one_step_model(teacher, data_file, tmp_path):  # noqa: F811
    result = distill(teacher, data_file, tmp_path, SMOKE)
    assert result.complete and result.step == 6
    model = load_model(result.checkpoint)
    assert model.sampler.consistency and model.sampler.network_calls == 1
    calls = []
    context = model.net.context  # evaluated once per network call, by the eager and the folded net
    model.net.context = lambda *a, **k: calls.append(1) or context(*a, **k)
    for fast in (True, False):
        calls.clear()
        showers = next(generate(model, [20.0, 60.0], seed=1, fast=fast))
        assert len(showers) == 2 and (showers.n_points > 0).all()
        assert len(calls) >= 1 and len(calls) <= 2  # one call per size group, no sampler loop
    with pytest.raises(CheckpointError, match="already a consistency model"):
        distill(result.checkpoint, data_file, tmp_path / "again", SMOKE)
    with pytest.raises(CheckpointError, match="exists"):
        distill(teacher, data_file, tmp_path, SMOKE)


def test_distill_resume_matches_straight_run(teacher, data_file, tmp_path):  # noqa: F811
    straight = distill(teacher, data_file, tmp_path / "a", SMOKE)

    def stop_at_3(stage: str, done: int, total: int, info: str = "") -> None:
        if stage == "train" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(teacher, data_file, tmp_path / "b", SMOKE, progress=stop_at_3)
    resumed = distill(teacher, data_file, tmp_path / "b", SMOKE, resume=True)
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="different config"):
        distill(teacher, data_file, tmp_path / "b", DistillConfig.from_preset("smoke", steps=7), resume=True)


def test_narrow_student(teacher, data_file, tmp_path):  # noqa: F811
    config = DistillConfig.from_preset("smoke", steps=3, student_widths=(4, 8, 4))
    model = load_model(distill(teacher, data_file, tmp_path, config).checkpoint)
    assert model.net.widths == (4, 8, 4) and model.config.net_widths == (4, 8, 4)
    assert len(next(generate(model, [50.0]))) == 1
