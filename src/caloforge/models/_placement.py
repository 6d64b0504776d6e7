"""Where a training runs its networks: the device, the precision of the forward passes, and
the random numbers, which are always drawn on the host.

Every random number of a training (batch choice, dequantisation, noise, time steps) comes from
the run's CPU generator and is then moved to the device. A run therefore draws the same numbers
on a CPU and on a GPU, a checkpoint resumes on either, and the CPU path is the one every test
runs: on the CPU every move below is a no-op.

>>> p = Placement()
>>> p.device, p.precision, p.amp
('cpu', 'float32', False)
>>> float(p.put(torch.ones(2)).sum())
2.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["HOST", "PRECISIONS", "Placement", "rand", "randn", "resolve_precision"]

#: What ``--precision`` accepts: ``auto`` is bfloat16 autocast on a CUDA device for a family
#: whose numerics allow it (:attr:`~caloforge.models.protocol.Training.amp`), float32 otherwise.
PRECISIONS = ("auto", "float32", "bfloat16")

T = TypeVar("T", Tensor, Mapping[str, Tensor])


def resolve_precision(spec: str, device: str, amp: bool, what: str) -> str:
    """The forward-pass precision ``--precision spec`` names on ``device`` for a training whose
    family allows bfloat16 autocast (``amp``) or not; ``what`` names it in the refusal.

    >>> resolve_precision("auto", "cuda:0", True, "X"), resolve_precision("auto", "cpu", True, "X")
    ('bfloat16', 'float32')
    >>> resolve_precision("bfloat16", "cpu", False, "CaloINN training")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --precision bfloat16: CaloINN training runs in float32 only ...
    """
    if spec not in PRECISIONS:
        raise ValueError(f"unknown precision '{spec}': use {', '.join(PRECISIONS)}")
    if spec == "auto":
        return "bfloat16" if amp and torch.device(device).type == "cuda" else "float32"
    if spec == "bfloat16" and not amp:
        raise ValueError(
            f"--precision bfloat16: {what} runs in float32 only (its numerics need it); "
            "use --precision float32 or auto"
        )
    return spec


@dataclass(frozen=True)
class Placement:
    """The device a training's networks and batches live on (``cpu``, ``cuda:N``) and the
    precision of its forward passes (``float32``, or ``bfloat16`` autocast: weights, optimiser
    state and gradients stay float32)."""

    device: str = "cpu"
    precision: str = "float32"

    @property
    def amp(self) -> bool:
        """Whether forward passes run under bfloat16 autocast."""
        return self.precision == "bfloat16"

    @property
    def on_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    def put(self, x: T) -> T:
        """``x`` (a tensor or a mapping of tensors) on the device: from pinned host memory
        without blocking on a CUDA device, unchanged on the CPU."""
        if isinstance(x, Mapping):
            return {k: self.put(v) for k, v in x.items()}  # type: ignore[return-value]
        if x.device == torch.device(self.device):
            return x
        if self.on_cuda and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes in the placement's precision (bfloat16 autocast, or as they are)."""
        if not self.amp:
            yield
            return
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16):
            yield


#: Where a batch is made when no placement is given: the host (the CPU, float32).
HOST = Placement()


def rand(
    shape: tuple[int, ...] | torch.Size,
    gen: torch.Generator | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Uniform numbers drawn with ``gen`` on its own device (the host), then put on ``device``."""
    return torch.rand(shape, generator=gen, dtype=dtype).to(device)


def randn(
    shape: tuple[int, ...] | torch.Size,
    gen: torch.Generator | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Normal numbers drawn with ``gen`` on its own device (the host), then put on ``device``."""
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)
