"""ODE solvers for flow-matching generation: fixed-step, adaptive reference and bespoke (BNS).

A velocity field is any callable ``v(t, x) -> dx/dt`` where ``t`` is a 0-dim tensor (time in
[0, 1]) and ``x`` has shape ``(batch, ...)``. Generation integrates from ``t = 0`` (noise) to
``t = 1`` (data).

* :func:`solve_fixed` — Euler, explicit midpoint or classic RK4 on a uniform grid;
  :func:`evaluations_per_step` and :func:`steps_for_nfe` convert between steps and network
  function evaluations (NFE).
* :func:`solve_dopri5` — adaptive Dormand–Prince reference (``torchdiffeq``);
  :func:`count_evaluations` wraps a field to count its calls.
* :class:`BNSSolver`, :func:`bns_loss`, :func:`train_bns` — bespoke non-stationary solvers
  (Shaul et al. 2024): an ``n``-step solver with a learned time grid and learned multistep
  coefficients, trained to match the reference solution of one frozen velocity field (or of a
  conditional one: a field per training sample) with exactly ``n`` NFE (the approach
  CaloDREAM uses for fast sampling).

On ``dx/dt = -x`` the exact end point is ``x0 / e``; an untrained :class:`BNSSolver` is
plain Euler:

>>> import torch
>>> def decay(t, x):
...     return -x
>>> x0 = torch.ones(3, 2)
>>> round(solve_fixed(decay, x0, "rk4", 8)[0, 0].item(), 5)
0.36788
>>> solver = BNSSolver(4)
>>> torch.equal(solver(decay, x0), solve_fixed(decay, x0, "euler", 4))
True
>>> counted, calls = count_evaluations(decay)
>>> _ = solver(counted, x0)
>>> calls
[4]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FIXED_STEP_METHODS",
    "LOSS_MODES",
    "BNSSolver",
    "FieldFor",
    "VelocityField",
    "bns_loss",
    "count_evaluations",
    "evaluations_per_step",
    "solve_dopri5",
    "solve_fixed",
    "steps_for_nfe",
    "train_bns",
]

#: ``v(t, x) -> dx/dt``: ``t`` a 0-dim tensor, ``x`` of shape ``(batch, ...)``.
VelocityField = Callable[[Tensor, Tensor], Tensor]

#: ``field_for(index) -> v``: the velocity field of the training samples ``x0[index]`` (a
#: conditional model's field with those samples' conditions), ``index`` a slice or index tensor.
FieldFor = Callable[[Tensor | slice], VelocityField]

#: Fixed-step methods of :func:`solve_fixed`.
FIXED_STEP_METHODS = ("euler", "midpoint", "rk4")
_EVALUATIONS = {"euler": 1, "midpoint": 2, "rk4": 4}

#: Loss modes of :func:`bns_loss` and :func:`train_bns`.
LOSS_MODES = ("global", "local")

#: A dense reference: times ``(T,)`` and states ``(T, batch, ...)``.
DenseReference = tuple[Tensor, Tensor]


def _check_method(method: str) -> None:
    if method not in _EVALUATIONS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {', '.join(FIXED_STEP_METHODS)}")


def _check_mode(mode: str) -> None:
    if mode not in LOSS_MODES:
        raise ValueError(f"unknown BNS loss mode {mode!r}; choose one of {', '.join(LOSS_MODES)}")


def evaluations_per_step(method: str) -> int:
    """Velocity evaluations one step of ``method`` costs.

    >>> [evaluations_per_step(m) for m in FIXED_STEP_METHODS]
    [1, 2, 4]
    """
    _check_method(method)
    return _EVALUATIONS[method]


def steps_for_nfe(method: str, nfe: int) -> int:
    """Most steps of ``method`` that use at most ``nfe`` velocity evaluations.

    >>> steps_for_nfe("rk4", 18), steps_for_nfe("midpoint", 8)
    (4, 4)
    """
    per_step = evaluations_per_step(method)
    if nfe < per_step:
        raise ValueError(f"{method} needs at least {per_step} evaluations per step, got nfe={nfe}")
    return nfe // per_step


def _grid(increments: Tensor) -> Tensor:
    """Times ``0, cumsum(increments)..., 1``: last time pinned to exactly 1."""
    zero = increments.new_zeros(1)
    one = increments.new_ones(1)
    return torch.cat([zero, increments.cumsum(0)[:-1], one])


def _uniform_times(n_steps: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Built exactly like the Euler-initialised BNSSolver grid so that the two agree bitwise.
    increments = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64, device=device)
    return _grid(increments).to(dtype)


def solve_fixed(v: VelocityField, x0: Tensor, method: str, n_steps: int) -> Tensor:
    """``x(1)`` from ``x(0) = x0`` with ``n_steps`` uniform steps of Euler, midpoint or RK4."""
    _check_method(method)
    if n_steps < 1:
        raise ValueError(f"need at least one step, got n_steps={n_steps}")
    times = _uniform_times(n_steps, x0.dtype, x0.device)
    x = x0
    for i in range(n_steps):
        t, h = times[i], times[i + 1] - times[i]
        if method == "euler":
            x = x + h * v(t, x)
        elif method == "midpoint":
            x = x + h * v(t + h / 2, x + (h / 2) * v(t, x))
        else:
            k1 = v(t, x)
            k2 = v(t + h / 2, x + (h / 2) * k1)
            k3 = v(t + h / 2, x + (h / 2) * k2)
            k4 = v(t + h, x + h * k3)
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def count_evaluations(v: VelocityField) -> tuple[VelocityField, list[int]]:
    """``v`` wrapped to count its calls, and the one-element list holding the count."""
    calls = [0]

    def counted(t: Tensor, x: Tensor) -> Tensor:
        calls[0] += 1
        return v(t, x)

    return counted, calls


def solve_dopri5(
    v: VelocityField, x0: Tensor, rtol: float = 1e-5, atol: float = 1e-5, times: Tensor | None = None
) -> Tensor:
    """Adaptive Dormand–Prince 5(4) solution: ``x(1)``, or the states at ``times``.

    ``times`` (1-D, strictly increasing, normally from 0 to 1; ``x0`` is the state at
    ``times[0]``) gives a trajectory of shape ``(len(times), *x0.shape)``. Wrap ``v`` with
    :func:`count_evaluations` to learn the NFE it took.
    """
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("solve_dopri5 needs torchdiffeq: pip install torchdiffeq") from err
    if times is None:
        grid = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    else:
        grid = times.to(dtype=x0.dtype, device=x0.device)
        if grid.ndim != 1 or len(grid) < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("times must be a 1-D strictly increasing tensor with at least 2 entries")
    trajectory = odeint(v, x0, grid, rtol=rtol, atol=atol, method="dopri5")
    return trajectory if times is not None else trajectory[-1]


class BNSSolver(nn.Module):
    """Bespoke non-stationary ``n``-step solver with learned times and coefficients.

    Times ``0 = t_0 < t_1 < ... < t_n = 1`` come from the softmax of ``n`` logits (the step
    sizes ``h_i``, positive and summing to 1). With ``u_j = v(t_j, x_j)`` the update is

        ``x_{i+1} = sum_{j<=i} a_ij x_j + sum_{j<=i} b_ij u_j``

    with ``a = I + alpha`` and ``b_ij = h_i (delta_ij + beta_ij)`` (``alpha``, ``beta`` lower
    triangular incl. the diagonal, learned). Each solve costs exactly ``n`` evaluations.
    ``init="euler"`` (logits and offsets zero) is explicit Euler on the uniform grid, bitwise.
    """

    def __init__(self, n_steps: int, init: str = "euler") -> None:
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"need at least one step, got n_steps={n_steps}")
        if init != "euler":
            raise ValueError(f"unknown BNS initialisation {init!r}; choose 'euler'")
        self.n_steps = n_steps
        self.time_logits = nn.Parameter(torch.zeros(n_steps))
        self.a_offset = nn.Parameter(torch.zeros(n_steps, n_steps))
        self.b_offset = nn.Parameter(torch.zeros(n_steps, n_steps))
        self.register_buffer("mask", torch.ones(n_steps, n_steps).tril(), persistent=False)

    def times(self, dtype: torch.dtype | None = None) -> Tensor:
        """The ``n + 1`` times ``t_0 = 0, ..., t_n = 1`` (differentiable in the logits)."""
        grid = _grid(torch.softmax(self.time_logits.double(), dim=0))
        return grid.to(dtype or self.time_logits.dtype)

    def coefficients(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Times ``(n+1,)`` and the lower triangular ``a`` and ``b`` matrices ``(n, n)``."""
        times = self.times(dtype)
        dtype = times.dtype
        eye = torch.eye(self.n_steps, dtype=dtype, device=times.device)
        mask = self.mask.to(dtype)
        a = eye + mask * self.a_offset.to(dtype)
        steps = (times[1:] - times[:-1]).unsqueeze(1)
        b = steps * (eye + mask * self.b_offset.to(dtype))
        return times, a, b

    @staticmethod
    def _combine(a_row: Tensor, b_row: Tensor, xs: list[Tensor], us: list[Tensor]) -> Tensor:
        """``sum_j a_j x_j + b_j u_j``, diagonal term first (keeps the Euler case exact)."""
        i = len(xs) - 1
        x = a_row[i] * xs[i] + b_row[i] * us[i]
        for j in range(i):
            x = x + a_row[j] * xs[j] + b_row[j] * us[j]
        return x

    def trajectory(self, v: VelocityField, x0: Tensor) -> list[Tensor]:
        """States ``x_0, ..., x_n`` of the solve from ``x0``."""
        times, a, b = self.coefficients(x0.dtype)
        xs, us = [x0], []
        for i in range(self.n_steps):
            us.append(v(times[i], xs[i]))
            xs.append(self._combine(a[i], b[i], xs, us))
        return xs

    def forward(self, v: VelocityField, x0: Tensor) -> Tensor:
        """End point ``x_n`` of the solve from ``x0``."""
        return self.trajectory(v, x0)[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (``a_offset``/``b_offset`` rows hold entries ``j <= i``; ``times``
        is informational)."""
        rows = range(self.n_steps)
        return {
            "n_steps": self.n_steps,
            "time_logits": self.time_logits.detach().cpu().tolist(),
            "a_offset": [self.a_offset.detach().cpu()[i, : i + 1].tolist() for i in rows],
            "b_offset": [self.b_offset.detach().cpu()[i, : i + 1].tolist() for i in rows],
            "times": self.times(torch.float64).detach().cpu().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BNSSolver:
        """Solver rebuilt from :meth:`to_dict` output."""
        solver = cls(int(data["n_steps"]))
        with torch.no_grad():
            solver.time_logits.copy_(torch.tensor(data["time_logits"]))
            for name in ("a_offset", "b_offset"):
                param = getattr(solver, name)
                for i, row in enumerate(data[name]):
                    param[i, : i + 1] = torch.tensor(row)
        return solver


def _rmse(x: Tensor, y: Tensor) -> Tensor:
    """Mean over the batch of the per-sample root mean square difference."""
    mse = (x - y).flatten(1).pow(2).mean(1)
    return mse.clamp_min(1e-30).sqrt().mean()


def _interpolate(ref_times: Tensor, ref_traj: Tensor, t: Tensor) -> Tensor:
    """Reference state at time ``t``, linear in time (differentiable in ``t``)."""
    hi = torch.searchsorted(ref_times, t.detach().reshape(1)).clamp(1, len(ref_times) - 1)[0]
    lo = hi - 1
    w = (t - ref_times[lo]) / (ref_times[hi] - ref_times[lo])
    return ref_traj[lo] + w * (ref_traj[hi] - ref_traj[lo])


def bns_loss(
    solver: BNSSolver, v: VelocityField, x0: Tensor, reference: Tensor | DenseReference, mode: str
) -> Tensor:
    """Training loss of ``solver`` against a reference solution; ``n`` evaluations of ``v``.

    * ``"global"``: mean over the batch of the RMSE between ``solver(v, x0)`` and the
      reference end point ``x(1)``. ``reference`` is that end point, or a dense reference.
    * ``"local"``: ``reference`` is dense, ``(ref_times (T,), ref_traj (T, batch, ...))`` from
      :func:`solve_dopri5` with ``times``. Each step restarts from the reference: the states
      ``x_j`` are the reference interpolated linearly at the solver's ``t_j``, and the step's
      prediction of ``x_{i+1}`` is compared (batch-mean RMSE) with the reference at
      ``t_{i+1}``; the loss is the sum over the ``n`` steps.

    Gradients flow into the solver's parameters through ``v``'s output (w.r.t. ``x`` and
    ``t``); the parameters of ``v`` need not require grad.
    """
    _check_mode(mode)
    if mode == "global":
        target = reference[1][-1] if isinstance(reference, tuple) else reference
        if target.shape != x0.shape:
            raise ValueError(f"reference end point has shape {tuple(target.shape)}, x0 {tuple(x0.shape)}")
        return _rmse(solver(v, x0), target)
    if not isinstance(reference, tuple):
        raise ValueError("local BNS loss needs a dense reference (ref_times, ref_traj)")
    ref_times, ref_traj = (r.to(dtype=x0.dtype, device=x0.device) for r in reference)
    if ref_traj.shape[1:] != x0.shape or ref_traj.shape[0] != len(ref_times):
        raise ValueError(
            f"dense reference of shape {tuple(ref_traj.shape)} does not fit x0 {tuple(x0.shape)}"
        )
    times, a, b = solver.coefficients(x0.dtype)
    states = [_interpolate(ref_times, ref_traj, t) for t in times]
    velocities = [v(times[j], states[j]) for j in range(solver.n_steps)]
    loss = x0.new_zeros(())
    for i in range(solver.n_steps):
        step = solver._combine(a[i], b[i], states[: i + 1], velocities[: i + 1])
        loss = loss + _rmse(step, states[i + 1])
    return loss


def _reference(
    field_for: FieldFor,
    x0: Tensor,
    mode: str,
    batch: int,
    rtol: float,
    points: int,
    progress: Callable[[int, int], None] | None,
) -> Tensor | DenseReference:
    """dopri5 reference of ``x0`` for ``mode``, computed in chunks of ``batch``."""
    times = None
    if mode == "local":
        times = torch.linspace(0.0, 1.0, points, dtype=torch.float64).to(dtype=x0.dtype, device=x0.device)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(x0), batch):
            index = slice(start, start + batch)
            chunks.append(solve_dopri5(field_for(index), x0[index], rtol=rtol, atol=rtol, times=times))
            if progress is not None:
                progress(min(start + batch, len(x0)), len(x0))
    if times is None:
        return torch.cat(chunks)
    return times, torch.cat(chunks, dim=1)


def _subset(reference: Tensor | DenseReference, index: Tensor | slice) -> Tensor | DenseReference:
    if isinstance(reference, tuple):
        return reference[0], reference[1][:, index]
    return reference[index]


def train_bns(
    v: VelocityField | FieldFor,
    x0_sampler: Callable[[int, torch.Generator], Tensor],
    n_steps: int,
    mode: str = "global",
    n_train: int = 512,
    batch: int = 64,
    iterations: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
    reference_rtol: float = 1e-5,
    progress: Callable[[int, int, float], None] | None = None,
    reference_points: int = 65,
    eval_every: int = 25,
    *,
    conditional: bool = False,
    reference_progress: Callable[[int, int], None] | None = None,
) -> BNSSolver:
    """An ``n_steps`` :class:`BNSSolver` fitted to the dopri5 solutions of the frozen field ``v``.

    With ``conditional``, ``v`` is a :data:`FieldFor`: ``v(index)`` is the field of the
    samples ``x0[index]`` (e.g. a network with those samples' conditions). ``x0_sampler(n,
    generator)`` draws the ``n_train`` noise samples once; their reference (end points, or for
    ``"local"`` trajectories at ``reference_points`` uniform times) is computed without grad
    (``reference_progress(done, n_train)`` after each chunk of ``batch``). Adam then fits the
    solver on random minibatches (reproducible from ``seed``); every ``eval_every``
    iterations the loss on the whole training set is measured and the solver with the lowest
    one (the Euler start included) is returned. ``progress(iteration, iterations,
    minibatch_loss)`` is called after each step. Only the solver's parameters are
    differentiated: ``v``'s parameters never get a ``.grad``.
    """
    _check_mode(mode)
    if n_train < 1 or batch < 1 or iterations < 0 or eval_every < 1:
        raise ValueError("n_train, batch and eval_every must be positive and iterations non-negative")
    field_for: FieldFor = v if conditional else (lambda index: v)  # type: ignore[assignment,return-value]
    generator = torch.Generator().manual_seed(seed)
    x0 = x0_sampler(n_train, generator)
    reference = _reference(field_for, x0, mode, batch, reference_rtol, reference_points, reference_progress)
    solver = BNSSolver(n_steps).to(x0.device)
    params = list(solver.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)

    def loss_on(index: Tensor | slice) -> Tensor:
        return bns_loss(solver, field_for(index), x0[index], _subset(reference, index), mode)

    def full_loss() -> float:
        with torch.no_grad():
            total = sum(
                loss_on(slice(s, s + batch)).item() * len(x0[s : s + batch]) for s in range(0, n_train, batch)
            )
        return total / n_train

    best_loss, best_state = full_loss(), copy.deepcopy(solver.state_dict())
    for iteration in range(1, iterations + 1):
        loss = loss_on(torch.randperm(n_train, generator=generator)[:batch].to(x0.device))
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        optimizer.step()
        if progress is not None:
            progress(iteration, iterations, loss.item())
        if iteration % eval_every == 0 or iteration == iterations:
            current = full_loss()
            if math.isfinite(current) and current < best_loss:
                best_loss, best_state = current, copy.deepcopy(solver.state_dict())
    solver.load_state_dict(best_state)
    return solver
