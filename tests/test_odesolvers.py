"""Fixed-step, dopri5 and bespoke non-stationary (BNS) ODE solvers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from caloforge.odesolvers import (
    FIXED_STEP_METHODS,
    BNSSolver,
    bns_loss,
    count_evaluations,
    evaluations_per_step,
    solve_dopri5,
    solve_fixed,
    steps_for_nfe,
    train_bns,
)

A = torch.tensor([[-0.3, 1.5], [-1.5, -0.3]], dtype=torch.float64)


def linear(t: Tensor, x: Tensor) -> Tensor:
    return x @ A.T


def linear_exact(x0: Tensor, t: float = 1.0) -> Tensor:
    return x0 @ torch.linalg.matrix_exp(A * t).T


def nonlinear(t: Tensor, x: Tensor) -> Tensor:
    return torch.sin(3 * t * x) + 0.1 * x**2


def swirl(t: Tensor, x: Tensor) -> Tensor:
    """2-D rotation with a time-dependent rate plus nonlinear terms; 4 Euler steps are visibly off."""
    rotation = torch.stack([-x[:, 1], x[:, 0]], dim=1)
    return (1.0 + t) * rotation + 0.5 * torch.tanh(x) - 0.2 * x**3 / (1 + x**2)


MEANS = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])


def mixture(t: Tensor, x: Tensor) -> Tensor:
    """Exact flow-matching (linear path) velocity towards three Gaussians of width 0.2."""
    s2 = 0.2**2
    var, dvar = (1 - t) ** 2 + t**2 * s2, t * s2 - (1 - t)
    diff = x[:, None, :] - t * MEANS
    weights = torch.softmax(-(diff**2).sum(-1) / (2 * var), dim=1)
    return (weights[..., None] * (MEANS + (dvar / var) * diff)).sum(1)


def gaussian_noise(n: int, generator: torch.Generator) -> Tensor:
    return torch.randn(n, 2, generator=generator)


def x0_2d(n: int = 8, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def end_point_error(x: Tensor, reference: Tensor) -> float:
    return (x - reference).norm(dim=1).mean().item()


# --- fixed-step solvers ---------------------------------------------------------------------


def test_evaluation_counts_and_steps_for_nfe():
    assert FIXED_STEP_METHODS == ("euler", "midpoint", "rk4")
    assert [evaluations_per_step(m) for m in FIXED_STEP_METHODS] == [1, 2, 4]
    assert steps_for_nfe("euler", 7) == 7
    assert steps_for_nfe("midpoint", 7) == 3
    assert steps_for_nfe("rk4", 4) == 1
    assert steps_for_nfe("rk4", 19) == 4


@pytest.mark.parametrize("method", FIXED_STEP_METHODS)
@pytest.mark.parametrize("n_steps", [1, 3])
def test_solve_fixed_uses_the_expected_number_of_evaluations(method, n_steps):
    counted, calls = count_evaluations(nonlinear)
    solve_fixed(counted, x0_2d(), method, n_steps)
    assert calls == [n_steps * evaluations_per_step(method)]


@pytest.mark.parametrize(("method", "expected"), [("euler", 0.0), ("midpoint", 0.75), ("rk4", 1 - 2.125 / 6)])
def test_one_step_matches_hand_formulas(method, expected):
    # dx/dt = t^2 - x from x = 1; Euler: 1 - 1; midpoint: 1 + (0.25 - 0.5);
    # RK4: k = (-1, -0.25, -0.625, 0.625), x = 1 + (k1 + 2 k2 + 2 k3 + k4) / 6.
    out = solve_fixed(lambda t, x: t**2 - x, torch.ones(1, 1, dtype=torch.float64), method, 1)
    assert out.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("method", "ratio"), [("euler", (1.7, 2.4)), ("midpoint", (3.4, 4.8)), ("rk4", (13, 19))]
)
def test_fixed_methods_converge_with_their_order(method, ratio):
    x0 = x0_2d()
    exact = linear_exact(x0)
    errors = [(solve_fixed(linear, x0, method, n) - exact).abs().max().item() for n in (16, 32)]
    assert ratio[0] < errors[0] / errors[1] < ratio[1]


def test_solve_fixed_keeps_trailing_shape_and_dtype():
    x0 = torch.randn(4, 3, 5)
    out = solve_fixed(nonlinear, x0, "midpoint", 2)
    assert out.shape == x0.shape and out.dtype == torch.float32


def test_bad_method_and_step_counts_raise():
    with pytest.raises(ValueError, match="euler, midpoint, rk4"):
        solve_fixed(linear, x0_2d(), "heun", 4)
    with pytest.raises(ValueError, match="euler, midpoint, rk4"):
        evaluations_per_step("dopri5")
    with pytest.raises(ValueError, match="n_steps=0"):
        solve_fixed(linear, x0_2d(), "euler", 0)
    with pytest.raises(ValueError, match="nfe=3"):
        steps_for_nfe("rk4", 3)


# --- dopri5 reference -----------------------------------------------------------------------


def test_dopri5_matches_exact_solution():
    x0 = x0_2d()
    counted, calls = count_evaluations(linear)
    out = solve_dopri5(counted, x0)
    assert out.shape == x0.shape
    assert torch.allclose(out, linear_exact(x0), atol=1e-4, rtol=0)
    assert calls[0] > 6


def test_dopri5_trajectory_on_given_times():
    x0 = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.linspace(0, 1, 9, dtype=torch.float64)
    traj = solve_dopri5(lambda t, x: -(1 + t) * x, x0, times=times)
    assert traj.shape == (9, 5, 2, 3)
    exact = torch.exp(-(times + times**2 / 2)).view(-1, 1, 1, 1) * x0
    assert torch.allclose(traj, exact, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="increasing"):
        solve_dopri5(linear, x0_2d(), times=torch.tensor([0.0, 0.5, 0.5, 1.0]))


# --- BNS solver -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_steps", [1, 3, 4, 7])
def test_bns_euler_init_reproduces_euler_exactly(n_steps, dtype):
    x0 = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(n_steps), dtype=dtype)
    solver = BNSSolver(n_steps, init="euler")
    assert solver.n_steps == n_steps
    with torch.no_grad():
        assert torch.equal(solver(nonlinear, x0), solve_fixed(nonlinear, x0, "euler", n_steps))
    times = solver.times()
    assert torch.allclose(times, torch.linspace(0, 1, n_steps + 1), atol=1e-7)
    assert times[0] == 0 and times[-1] == 1 and bool((times.diff() > 0).all())


def test_bns_uses_n_evaluations_and_returns_trajectory():
    counted, calls = count_evaluations(nonlinear)
    traj = BNSSolver(5).trajectory(counted, x0_2d())
    assert calls == [5] and len(traj) == 6 and torch.equal(traj[0], x0_2d())


def test_bns_times_stay_monotone_and_pinned_for_any_logits():
    solver = BNSSolver(6)
    with torch.no_grad():
        solver.time_logits.copy_(torch.tensor([5.0, -4.0, 0.3, 2.0, -8.0, 1.0]))
    times = solver.times()
    assert times[0] == 0 and times[-1] == 1 and bool((times.diff() > 0).all())


def test_bns_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_steps=0"):
        BNSSolver(0)
    with pytest.raises(ValueError, match="euler"):
        BNSSolver(4, init="midpoint")
    x0 = x0_2d()
    with pytest.raises(ValueError, match="global, local"):
        bns_loss(BNSSolver(2), linear, x0, x0, mode="total")
    with pytest.raises(ValueError, match="dense reference"):
        bns_loss(BNSSolver(2), linear, x0, x0, mode="local")


@pytest.mark.parametrize("mode", ["global", "local"])
def test_bns_loss_gradients_reach_times_and_coefficients(mode):
    x0 = x0_2d(dtype=torch.float32)
    times = torch.linspace(0, 1, 33)
    with torch.no_grad():
        dense = (times, solve_dopri5(nonlinear, x0, times=times))
    reference = dense[1][-1] if mode == "global" else dense
    solver = BNSSolver(3)
    bns_loss(solver, nonlinear, x0, reference, mode).backward()
    for param in (solver.time_logits, solver.a_offset, solver.b_offset):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert solver.a_offset.grad.triu(1).abs().sum() == 0


def test_bns_dict_round_trip_gives_identical_outputs():
    solver = BNSSolver(4)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for param in solver.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    data = json.loads(json.dumps(solver.to_dict()))
    restored = BNSSolver.from_dict(data)
    x0 = x0_2d(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(restored(nonlinear, x0), solver(nonlinear, x0))
        assert torch.equal(restored.times(), solver.times())
    assert len(data["a_offset"][2]) == 3 and len(data["times"]) == 5


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "mode"), [(swirl, "global"), (swirl, "local"), (mixture, "global")])
def test_trained_bns_beats_euler_at_equal_nfe(field, mode):
    n_steps = 4
    held_out = torch.randn(1000, 2, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        reference = solve_dopri5(field, held_out)
        euler_error = end_point_error(solve_fixed(field, held_out, "euler", n_steps), reference)
    assert euler_error > 0.1  # a visible error to remove
    losses: list[float] = []
    solver = train_bns(
        field,
        gaussian_noise,
        n_steps,
        mode=mode,
        n_train=256,
        batch=64,
        iterations=200,
        lr=3e-3,
        progress=lambda i, total, loss: losses.append(loss),
    )
    assert len(losses) == 200
    counted, calls = count_evaluations(field)
    with torch.no_grad():
        bns_error = end_point_error(solver(counted, held_out), reference)
    assert calls == [n_steps]
    assert bns_error < euler_error / 2


class TinyField(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.net(torch.cat([x, t.expand(len(x), 1)], dim=1))


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("mode", ["global", "local"])
def test_training_leaves_the_velocity_network_alone(frozen, mode):
    torch.manual_seed(0)
    field = TinyField().requires_grad_(not frozen)
    before = [p.detach().clone() for p in field.parameters()]
    steps: list[int] = []
    train_bns(
        field,
        gaussian_noise,
        3,
        mode=mode,
        n_train=64,
        batch=32,
        iterations=10,
        lr=1e-2,
        progress=lambda i, total, loss: steps.append(i),
    )
    assert steps == list(range(1, 11))
    for param, old in zip(field.parameters(), before, strict=True):
        assert param.grad is None and torch.equal(param, old)


def test_training_is_reproducible_from_seed():
    runs = [
        train_bns(swirl, gaussian_noise, 3, n_train=64, batch=32, iterations=10, lr=1e-2, seed=5).to_dict()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_conditional_training_uses_each_samples_field():
    """A field per sample (rotation speed ``rate[i]``): references and losses must pair each
    noise sample with its own field, else the trained solver cannot beat Euler on all of them."""
    rate = torch.linspace(0.5, 3.0, 128, dtype=torch.float32)

    def field_for(index):
        r = rate[index].unsqueeze(1)

        def v(t: Tensor, x: Tensor) -> Tensor:
            return (1.0 + t) * r * torch.stack([-x[:, 1], x[:, 0]], dim=1) - 0.3 * x**3 / (1 + x**2)

        return v

    x0 = gaussian_noise(128, torch.Generator().manual_seed(0))
    with torch.no_grad():
        v_all = field_for(slice(None))
        reference = solve_dopri5(v_all, x0)
        euler_error = end_point_error(solve_fixed(v_all, x0, "euler", 4), reference)
    chunks: list[int] = []
    solver = train_bns(
        field_for,
        lambda n, gen: gaussian_noise(n, torch.Generator().manual_seed(0)),
        4,
        n_train=128,
        batch=32,
        iterations=150,
        lr=3e-3,
        conditional=True,
        reference_progress=lambda done, total: chunks.append(done),
    )
    assert chunks == [32, 64, 96, 128]
    with torch.no_grad():
        assert end_point_error(solver(v_all, x0), reference) < euler_error / 2
