"""Jet conditions from a normalizing flow (SPEC 6.7: "generate conditioning with normalizing flow").

An EPiC model generates the particles of a jet given its features — the multiplicity for every
variant, and pT and mass for the conditional ones. Without a conditions file those features
are drawn by :class:`ConditionFlow`, a zuko neural spline flow over the jet's
``(log pT, eta, log mass, multiplicity)`` trained beside the particle network on the same
batches and stored in the same checkpoint. The multiplicity is a whole number: the flow
learns it dequantised (``n + u``, ``u`` uniform in [0, 1)) and a draw is rounded down.

>>> import torch
>>> flow = ConditionFlow(n_particles=30, transforms=1, hidden=8)
>>> jet = torch.tensor([[1000.0, 0.1, 175.0, 30.0], [900.0, -0.5, 60.0, 12.0]])
>>> flow.fit_standardisation(jet)
>>> gen = torch.Generator().manual_seed(0)
>>> flow.nll(jet, torch.rand(2, generator=gen)).shape
torch.Size([])
>>> flow.sample(3, gen, jet).shape
torch.Size([3, 4])
"""

from __future__ import annotations

import torch
import zuko
from torch import Tensor, nn

from caloforge.models._placement import randn

__all__ = ["ConditionFlow"]

_CHUNK = 65_536  # rows per pass of the flow's inverse when drawing


class ConditionFlow(nn.Module):
    """A neural spline flow over ``(log pt, eta, log mass, n + u)`` of jets (``jet_features``
    rows ``(pt, eta, mass, n)``), standardised; ``n_particles`` caps the drawn multiplicity."""

    def __init__(self, n_particles: int, transforms: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.n_particles = int(n_particles)
        self.flow = zuko.flows.NSF(4, 0, transforms=transforms, hidden_features=(hidden, hidden))
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("std", torch.ones(4))

    @staticmethod
    def _raw(jet: Tensor, u: Tensor) -> Tensor:
        log_pt, log_mass = jet[:, 0].clamp_min(1e-3).log(), jet[:, 2].clamp_min(1e-3).log()
        return torch.stack([log_pt, jet[:, 1], log_mass, jet[:, 3] + u], dim=-1)

    def fit_standardisation(self, jet: Tensor) -> None:
        """Means and widths of the flow's features over the training jets; those of the
        dequantised multiplicity include the noise's (variance 1/12), so that a multiplicity
        that rarely varies (30-particle top jets) stays a box of width at most 2 sqrt(3)."""
        x = self._raw(jet.double(), torch.full((len(jet),), 0.5, dtype=torch.float64))
        var = x.var(0)
        var[3] += 1.0 / 12
        self.mean.copy_(x.mean(0).float())
        self.std.copy_(var.sqrt().clamp_min(1e-3).float())

    def nll(self, jet: Tensor, u: Tensor) -> Tensor:
        """Mean negative log-likelihood of the standardised features of ``jet`` ``(B, 4)``, the
        multiplicity dequantised with ``u`` ``(B,)`` (uniform in [0, 1))."""
        x = (self._raw(jet, u.to(jet.dtype)) - self.mean) / self.std
        return -self.flow().log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, limits: Tensor, tries: int = 20) -> Tensor:
        """``n`` jet-feature rows ``(pt, eta, mass, n)``, the base noise drawn with ``gen``.

        A row whose pT, eta or mass falls outside the range of the rows ``limits`` (the
        training jets the checkpoint keeps: the model's trained range) is drawn again, up to
        ``tries`` times, then clipped into it; the multiplicity is rounded down into
        1..``n_particles``.
        """
        low, high = limits.double().min(0).values, limits.double().max(0).values
        rows = self._draw(n, gen)
        for _ in range(tries):
            outside = ~self._inside(rows, low, high)
            if not outside.any():
                break
            rows[outside] = self._draw(int(outside.sum()), gen)
        rows = torch.where(rows.isnan(), self.mean.double(), rows)  # a NaN draw: the mean
        pt = rows[:, 0].exp().clamp(low[0], high[0])
        eta = rows[:, 1].clamp(low[1], high[1])
        mass = rows[:, 2].exp().clamp(low[2], high[2])
        mult = rows[:, 3].floor().clamp(1, self.n_particles)
        return torch.stack([pt, eta, mass, mult], dim=-1)

    def _draw(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` raw feature rows (log pt, eta, log mass, n + u) in float64, in chunks."""
        z = randn((n, 4), gen, self.mean.device)
        x = torch.cat([self.flow().transform.inv(chunk) for chunk in z.split(_CHUNK)]) if n else z
        return (x * self.std + self.mean).double()

    @staticmethod
    def _inside(rows: Tensor, low: Tensor, high: Tensor) -> Tensor:
        log_pt, eta, log_mass = rows[:, 0], rows[:, 1], rows[:, 2]
        return (
            (log_pt >= low[0].log()) & (log_pt <= high[0].log())
            & (eta >= low[1]) & (eta <= high[1])
            & (log_mass >= low[2].log()) & (log_mass <= high[2].log())
        )  # fmt: skip
