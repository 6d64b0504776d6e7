"""Exponential moving average of a network's weights (every family trains with one)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a module's parameters, with warm-up.

    Decay after ``k`` updates: ``min(max_decay, 1 - (1 + k)^(-2/3))`` — the first updates
    follow the model closely, later ones average over ever more steps. ``module`` holds the
    averaged copy (use it for sampling).

    >>> net = torch.nn.Linear(2, 2)
    >>> ema = EMA(net)
    >>> ema.decay, ema.num_updates
    (0.0, 0)
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = float(max_decay)
        self.num_updates = 0

    @property
    def decay(self) -> float:
        """The decay the next update will use."""
        return min(self.max_decay, 1 - (1 + self.num_updates) ** (-2 / 3))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current parameters (buffers are copied)."""
        decay = self.decay
        for avg, new in zip(self.module.parameters(), model.parameters(), strict=True):
            avg.lerp_(new.detach(), 1 - decay)
        for avg, new in zip(self.module.buffers(), model.buffers(), strict=True):
            avg.copy_(new)
        self.num_updates += 1

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """``model`` carries the averaged weights inside the block (to evaluate or save them);
        its own weights — yielded, as a copy — are put back when the block ends, in place: a
        ``state_dict()`` taken inside the block must be copied to keep the averaged values."""
        live = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.module.state_dict())
        try:
            yield live
        finally:
            model.load_state_dict(live)

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and the update counter (plain tensors and numbers)."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
