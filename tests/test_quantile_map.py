import math

import pytest
import torch

from caloforge.models.nn.quantile_map import QuantileMap


def _normal(n: int, mean: float, std: float, seed: int) -> torch.Tensor:
    return mean + std * torch.randn(n, 1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (1.0, 2.0), (-3.0, 0.5)])
def test_fitted_map_transports_one_gaussian_to_another(mean, std):
    log_e = torch.zeros(50_000)
    qmap = QuantileMap.fit(_normal(50_000, 0, 1, 0), log_e, _normal(50_000, mean, std, 1), log_e, (-1, 1), 1)
    x = torch.linspace(-2, 2, 9).view(1, 1, -1)
    torch.testing.assert_close(qmap(x, torch.zeros(1)), mean + std * x, atol=0.1, rtol=0.0)
    # beyond the tables' ends the map shifts with slope 1
    far = qmap(torch.tensor([[[-50.0, 50.0]]]), torch.zeros(1))[0, 0].double()
    src, dst = qmap.source[0, 0], qmap.target[0, 0]
    torch.testing.assert_close(far, torch.stack([dst[0] - 50 - src[0], dst[-1] + 50 - src[-1]]))


def test_map_is_monotone_keeps_nan_and_identity_for_sparse_groups():
    log_e = torch.zeros(2000)
    src = torch.cat([_normal(2000, 0, 1, 0), torch.full((2000, 1, 1), math.nan)], dim=1)
    dst = torch.cat([_normal(2000, 2, 1, 1), _normal(2000, 5, 1, 2)], dim=1)
    qmap = QuantileMap.fit(src, log_e, dst, log_e, (-1, 1), n_bins=1, min_count=100)
    x = torch.linspace(-4, 4, 101).view(1, 1, -1).expand(1, 2, -1).clone()
    x[0, 0, 50] = math.nan
    y = qmap(x, torch.zeros(1))
    assert torch.isnan(y[0, 0, 50]) and torch.isfinite(y[0, 0, :50]).all()
    finite = y[0, 0][torch.isfinite(y[0, 0])]
    assert (finite.diff() >= 0).all()
    torch.testing.assert_close(y[0, 1], x[0, 1])  # the group without source values maps to itself
    with pytest.raises(ValueError, match=r"values must be \(n, 2, m\)"):
        qmap(torch.zeros(1, 3, 4), torch.zeros(1))


def test_energy_bins_are_interpolated_between_their_centres():
    # bin 0 (log E in [0, 1)) shifts by +1, bin 1 ([1, 2]) by +3
    log_e = torch.cat([torch.full((4000,), 0.5), torch.full((4000,), 1.5)])
    src = torch.cat([_normal(4000, 0, 1, 0), _normal(4000, 0, 1, 1)])
    dst = torch.cat([_normal(4000, 1, 1, 2), _normal(4000, 3, 1, 3)])
    qmap = QuantileMap.fit(src, log_e, dst, log_e, (0.0, 2.0), n_bins=2)
    zero = torch.zeros(5, 1, 1)
    shift = qmap(zero, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])).ravel()
    torch.testing.assert_close(shift, torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]), atol=0.1, rtol=0.0)
    back = QuantileMap.from_dict(qmap.to_dict())
    torch.testing.assert_close(back(zero, torch.full((5,), 0.7)), qmap(zero, torch.full((5,), 0.7)))


def test_surplus_values_are_dropped_by_exceedance_rate():
    # the model makes a value in 80 % of the slots, the reference in 50 %: both N(0, 1) when present
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(40_000, 1, 1, generator=gen)
    src[torch.rand(40_000, generator=gen) > 0.8] = math.nan
    dst = torch.randn(40_000, 1, 1, generator=gen)
    dst[torch.rand(40_000, generator=gen) > 0.5] = math.nan
    log_e = torch.zeros(40_000)
    qmap = QuantileMap.fit(src, log_e, dst, log_e, (-1, 1), n_bins=1, drop=True)
    torch.testing.assert_close(
        qmap.rates[:, 0, 0], torch.tensor([0.8, 0.5], dtype=torch.float64), atol=0.01, rtol=0
    )
    x = torch.tensor([[[-1.0, 0.0, 0.5, 1.0, 2.0]]])
    y = qmap(x, torch.zeros(1))[0, 0]
    # kept: a model value exceeded with rate (1 - Φ(x)) · 0.8 ≤ 0.5, i.e. x ≥ Φ⁻¹(3/8) ≈ -0.32
    assert torch.isnan(y[0]) and torch.isfinite(y[1:]).all()
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.icdf(1 - (1 - normal.cdf(x[0, 0, 1:])) * 0.8 / 0.5)
    torch.testing.assert_close(y[1:], expected, atol=0.05, rtol=0)


def test_empty_energy_bins_map_to_themselves():
    values = torch.randn(1000, 2, 3, generator=torch.Generator().manual_seed(1))
    log_e = torch.full((1000,), 0.2)  # every shower in the first of two bins
    qmap = QuantileMap.fit(values, log_e, values + 1.0, log_e, (0.0, 2.0), n_bins=2, drop=True)
    x = torch.zeros(3, 2, 1)
    y = qmap(x, torch.tensor([0.5, 1.0, 1.5]))[:, 0, 0]
    torch.testing.assert_close(y, torch.tensor([1.0, 0.5, 0.0]), atol=0.1, rtol=0)
