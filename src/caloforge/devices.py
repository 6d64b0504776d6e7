"""Which device a command runs its networks on: ``--device auto|cpu|cuda|cuda:N``.

``auto`` is the first CUDA device when torch sees one, else the CPU; asking for a CUDA device
that torch does not see is a one-line ``ValueError`` (exit 2 on the command line), never a
silent fall-back to the CPU. Imports torch only when asked about CUDA.
"""

from __future__ import annotations

import re

__all__ = ["DEVICE_CHOICES", "DEVICE_HELP", "processes_device", "resolve_device"]

#: What ``--device`` accepts (``cuda:N`` for any N).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_HELP = (
    "Device for the networks: auto (the first CUDA device torch sees, where this step can use "
    "one; else the CPU), cpu, cuda or cuda:N."
)

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str, cpu_only: str | None = None) -> str:
    """The torch device string ``spec`` names, checked against the devices torch sees.

    ``cpu_only`` names a step that runs on the CPU only (e.g. "Geant4"): ``auto``
    then means the CPU, and a CUDA device is refused in one line.

    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'gpu': use auto, cpu, cuda or cuda:N
    """
    match = _SPEC.match(spec.strip().lower())
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise ValueError(f"unknown device '{spec}': use {', '.join(DEVICE_CHOICES[:-1])} or cuda:N")
    kind, index = match[1], match[2]
    if kind == "cpu":
        return "cpu"
    if kind == "auto":
        return "cuda:0" if cpu_only is None and _cuda_count() else "cpu"
    count = _cuda_count()
    if count == 0:
        raise ValueError(
            f"--device {spec}: torch sees no CUDA device (a CPU-only torch build, or no GPU "
            "visible here); use --device cpu or auto"
        )
    if cpu_only is not None:
        raise ValueError(f"--device {spec}: {cpu_only} runs on the CPU only so far; use --device cpu or auto")
    n = int(index or 0)
    if n >= count:
        raise ValueError(f"--device {spec}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{n}"


def processes_device(spec: str, device: str, nproc: int) -> str:
    """The device of a run on ``nproc`` local processes (``--nproc``) for ``--device spec``
    (resolved to ``device``): one GPU per process (rank r on ``cuda:r``), so more processes than
    GPUs is the CPU for ``auto`` and a one-line refusal for ``cuda``; ``cuda:N`` is refused
    (choose the GPUs with ``CUDA_VISIBLE_DEVICES``).

    >>> processes_device("auto", "cpu", 4)
    'cpu'
    """
    if nproc <= 1 or not device.startswith("cuda"):
        return device
    wanted = spec.strip().lower()
    if ":" in wanted:
        raise ValueError(
            f"--device {spec} with --nproc {nproc}: the processes take cuda:0 to cuda:{nproc - 1}; "
            "give --device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)"
        )
    count = _cuda_count()
    if nproc <= count:
        return "cuda:0"
    if wanted == "auto":
        return "cpu"
    raise ValueError(
        f"--nproc {nproc} with --device {spec}: one GPU per process, and torch sees {count}; "
        f"use --nproc {count} or fewer, or --device cpu"
    )
