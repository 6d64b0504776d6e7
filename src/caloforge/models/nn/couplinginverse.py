"""The Shower Flow's inverse pass (noise → features) for sampling, with half the work.

A coupling transform of zuko (``MaskedAutoregressiveTransform`` with ``passes=2``) is
inverted by evaluating its masked MLP and all its splines twice: the first pass gets the
features of the first half right (their spline parameters depend on the context alone), the
second pass the rest. :class:`CouplingFlowInverse` computes in each pass only the spline
parameters and spline inverses of the half that pass solves: the same numbers (up to float
rounding), about half the multiply-adds of the last, widest layer and half the element-wise
spline work, which dominates at the batch sizes of generation.

>>> import torch
>>> flow = ShowerFlow(n_layers=3, hidden=(16,), transforms=2)
>>> e, z = torch.tensor([20.0, 70.0]), torch.randn(2, flow.n_features)
>>> torch.allclose(CouplingFlowInverse(flow)(e, z), flow.features_from_noise(e, z), atol=1e-5)
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models.nn.showerflow import ShowerFlow

__all__ = ["CouplingFlowInverse", "supports_coupling_inverse"]


def supports_coupling_inverse(flow: ShowerFlow) -> bool:
    """Whether ``flow`` (a :class:`~caloforge.models.nn.showerflow.ShowerFlow`) is made of
    coupling transforms (``passes=2``), which :class:`CouplingFlowInverse` inverts."""
    return all(getattr(t, "passes", None) == 2 for t in flow.flow.transform.transforms)


class _HalfPass(nn.Module):
    """One pass of one coupling transform: from the context and the features solved before it
    (``inputs``; none in the first pass), the spline parameters of the features it solves."""

    def __init__(
        self, layers: list[tuple[Tensor, Tensor]], inputs: Tensor, solves: Tensor, total: int
    ) -> None:
        super().__init__()
        (w_first, b_first), hidden, (w_last, b_last) = layers[0], layers[1:-1], layers[-1]
        # The MLP's input is [features, context]; unsolved features are zero, so only the
        # columns of the solved ones (and of the context) matter.
        columns = torch.cat([inputs, torch.arange(w_first.shape[1] - 1, w_first.shape[1])])
        self.first = nn.Linear(len(columns), w_first.shape[0])
        self.first.weight.data, self.first.bias.data = w_first[:, columns].clone(), b_first.clone()
        self.hidden = nn.ModuleList()
        for w, b in hidden:
            self.hidden.append(nn.Linear(w.shape[1], w.shape[0]))
            self.hidden[-1].weight.data, self.hidden[-1].bias.data = w.clone(), b.clone()
        rows = (solves.unsqueeze(1) * total + torch.arange(total)).reshape(-1)
        self.last = nn.Linear(w_last.shape[1], len(rows))
        self.last.weight.data, self.last.bias.data = w_last[rows].clone(), b_last[rows].clone()
        self.total = total
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.first(x))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.last(h).unflatten(-1, (-1, self.total))


def _spline_inverse(phi: Tensor, y: Tensor, bins: int, bound: float, slope: float = 1e-3) -> Tensor:
    """zuko's ``MonotonicRQSTransform(widths, heights, derivatives)``'s inverse at ``y``
    ``(B, F)``, with ``phi`` ``(B, F, 3 bins - 1)`` its unconstrained parameters (widths and
    heights are handled as one tensor, and the knots gathered at once: fewer operations)."""
    log_slope = math.log(slope)
    wh = phi[..., : 2 * bins].unflatten(-1, (2, bins))
    wh = wh / (1 + wh.abs() * (2 / -log_slope))
    wh = (wh - wh.amax(dim=-1, keepdim=True)).exp()
    wh = wh.cumsum(dim=-1) / wh.sum(dim=-1, keepdim=True)
    knots = F.pad(wh * (2 * bound) - bound, (1, 0), value=-bound)  # (B, F, 2, bins + 1): x, y
    d = phi[..., 2 * bins :]
    deriv = F.pad((d / (1 + d.abs() / -log_slope)).exp(), (1, 1), value=1.0)
    table = torch.cat([knots, deriv.unsqueeze(-2)], dim=-2)  # (B, F, 3, bins + 1)
    k = (knots[..., 1, :] < y.unsqueeze(-1)).sum(dim=-1) - 1
    inside = (k >= 0) & (k < bins)
    k = k.clamp(0, bins - 1).unsqueeze(-1)
    both = torch.cat([k, k + 1], dim=-1).unsqueeze(-2).expand(-1, -1, 3, -1)
    x0, y0, d0, x1, y1, d1 = table.gather(-1, both).transpose(-1, -2).flatten(-2).unbind(-1)
    dy = y1 - y0
    s = dy / (x1 - x0)
    y_ = torch.where(inside, y - y0, 0.0)
    t = y_ * (d0 + d1 - 2 * s)
    a = dy * (s - d0) + t
    b = dy * d0 - t
    c = -s * y_
    z = 2 * c / (-b - (b * b - 4 * a * c).sqrt())
    return torch.where(inside, x0 + z * (x1 - x0), y)


class CouplingFlowInverse(nn.Module):
    """``ShowerFlow.features_from_noise`` for a flow of coupling transforms, computed faster
    (see the module docstring). The weights are copied when it is built: build it again after
    the flow changes. Traceable and exportable to ONNX (fixed shapes, gathers only)."""

    def __init__(self, flow: ShowerFlow) -> None:
        super().__init__()
        if not supports_coupling_inverse(flow):
            raise ValueError("the fast inverse needs a flow of coupling transforms (passes=2)")
        settings = flow.settings
        self.bins, self.bound = int(settings["bins"]), float(settings["bound"])
        self.register_buffer("mean", flow.feature_mean.detach().clone())
        self.register_buffer("std", flow.feature_std.detach().clone())
        self.first, self.second = nn.ModuleList(), nn.ModuleList()
        for i, t in enumerate(reversed(list(flow.flow.transform.transforms))):  # the inverse runs backwards
            if any(not isinstance(m, (nn.Linear, nn.ReLU)) for m in t.hyper):
                raise ValueError("the fast inverse needs the flow's MLPs to be Linear + ReLU")
            layers = [
                ((m.mask * m.weight).detach(), m.bias.detach()) for m in t.hyper if isinstance(m, nn.Linear)
            ]
            early, late = ((t.order == d).nonzero().squeeze(-1) for d in (0, 1))
            self.first.append(_HalfPass(layers, early[:0], early, t.total))
            self.second.append(_HalfPass(layers, early, late, t.total))
            self.register_buffer(f"early{i}", early)
            self.register_buffer(f"late{i}", late)
            self.register_buffer(f"unsort{i}", torch.cat([early, late]).argsort())

    def forward(self, energy: Tensor, noise: Tensor) -> Tensor:
        """Raw features ``(n, F)`` from base noise ``noise`` ``(n, F)`` at ``energy`` [GeV]."""
        context = ShowerFlow.context(energy)
        y = noise
        for i, (first, second) in enumerate(zip(self.first, self.second, strict=True)):
            early, late, unsort = (getattr(self, f"{k}{i}") for k in ("early", "late", "unsort"))
            x_early = _spline_inverse(first(context), y.index_select(1, early), self.bins, self.bound)
            phi = second(torch.cat([x_early, context], dim=-1))
            x_late = _spline_inverse(phi, y.index_select(1, late), self.bins, self.bound)
            y = torch.cat([x_early, x_late], dim=-1).index_select(1, unsort)
        return y * self.std + self.mean
