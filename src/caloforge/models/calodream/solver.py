"""How CaloDREAM integrates its flows: fixed-step solvers or a trained bespoke (BNS) one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from caloforge.odesolvers import (
    FIXED_STEP_METHODS,
    BNSSolver,
    evaluations_per_step,
    solve_fixed,
)

# --------------------------------------------------------------------------- solvers

if TYPE_CHECKING:
    from caloforge.models.calodream.model import CaloDream


@dataclass(frozen=True)
class SolverSpec:
    """How to integrate a flow: a fixed-step ``method`` with ``n_steps``, or a trained BNS solver."""

    method: str
    n_steps: int
    bns: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in (*FIXED_STEP_METHODS, "bns"):
            raise ValueError(
                f"unknown ODE solver '{self.method}': use {', '.join(FIXED_STEP_METHODS)} or bns"
            )
        if self.method == "bns" and self.bns is None:
            raise ValueError(
                "a BNS solver needs its trained parameters: train one with `caloforge train-solver`"
            )
        if self.n_steps < 1:
            raise ValueError(f"an ODE solver needs at least one step, got {self.n_steps}")

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample."""
        return self.n_steps * (1 if self.method == "bns" else evaluations_per_step(self.method))

    def solver(self) -> Callable[[Callable[[Tensor, Tensor], Tensor], Tensor], Tensor]:
        """``solve(v, x0) -> x1``, on the device of ``x0`` (a BNS solver's coefficients are
        moved there)."""
        if self.method == "bns":
            bns = BNSSolver.from_dict(self.bns)  # type: ignore[arg-type]
            bns.requires_grad_(False)
            return lambda v, x0: bns.to(x0.device)(v, x0)
        return lambda v, x0: solve_fixed(v, x0, self.method, self.n_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"method": self.method, "n_steps": self.n_steps, "bns": self.bns}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolverSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["method"]), int(data["n_steps"]), data.get("bns"))


def resolve_solver(model: CaloDream, method: str | None = None, n_steps: int | None = None) -> SolverSpec:
    """The shape model's stored solver with ``method`` / ``n_steps`` replaced where given.

    A BNS solver only exists as trained (``caloforge train-solver``), with its own step count.
    """
    stored = model.sampler["shape"]
    method = method or stored.method
    if method == "bns" and stored.method != "bns":
        raise ValueError("this model has no trained BNS solver: run `caloforge train-solver` first")
    if method == "bns" and n_steps not in (None, stored.n_steps):
        raise ValueError(f"the model's BNS solver has {stored.n_steps} steps; --steps cannot change it")
    return SolverSpec(method, n_steps or stored.n_steps, stored.bns if method == stored.method else None)
