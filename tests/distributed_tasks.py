"""Functions run on every rank by tests/test_distributed.py (importable: spawned processes
find them by module name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caloforge.models._distributed import agree, world
from caloforge.models._training import run_loop


def train_caloclouds2(
    config: Any, data: Path, out: Path, resume: bool = False, max_minutes: float | None = None
):
    """CaloClouds II training, as ``--nproc`` runs it."""
    from caloforge.models.caloclouds2 import train

    return train(config, data, out, resume=resume, max_minutes=max_minutes)


def fail_on(rank: int, message: str) -> int:
    """Raise ``ValueError(message)`` on ``rank`` (after one collective, so all ranks are up)."""
    agree([False])
    if world().rank == rank:
        raise ValueError(message)
    agree([False])  # waits for the failed rank: its peers must be stopped by the launcher
    return world().rank


class _OneProcessTrainer:
    step = skipped = 0
    elapsed_s = 0.0
    last_losses: dict[str, float] = {}  # noqa: RUF012 - a test double

    def one_step(self):
        return [("loss", 1.0)]

    def save(self, path: Path) -> None:
        path.write_bytes(b"")


def single_process_loop(out: Path) -> None:
    """A trainer without ``distributed = True`` driven by ``run_loop`` on several ranks."""
    run_loop(_OneProcessTrainer(), 2, out / "checkpoint.pt", 1, 60.0, None, None, 0.0)


def killed_on(rank: int) -> int:
    """SIGKILL ``rank`` (after one collective): it dies without a word, as ``kill -9`` or the
    out-of-memory killer leave it."""
    import os
    import signal

    agree([False])
    if world().rank == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    agree([False])  # the peer is gone: gloo fails here
    return world().rank


def train_family(training: Any, config: Any, data: Path, out: Path, kwargs: dict[str, Any]):
    """A family's training (a :class:`~caloforge.models.protocol.Training`) as ``--nproc`` runs it."""
    return training.run(config, data, out, **kwargs)


def distill_run(teacher: Any, data: Path, out: Path, config: Any):
    """CaloClouds II (CM) distillation, as ``caloforge distill --nproc`` runs it."""
    from caloforge.models.caloclouds2.distillation import distill

    return distill(teacher, data, out, config)


def write_rows(source: Path, cache: Path, markers: Path) -> str:
    """Build the scratch rows of ``source`` slowly (each pass over the data leaves a marker in
    ``markers``): two processes doing it at once must write it once."""
    import os
    import time

    import numpy as np

    from caloforge.models.rows import shower_rows

    def chunks():
        (markers / str(os.getpid())).touch()
        for i in range(5):
            time.sleep(0.1)
            yield np.full((2, 3), i, np.float32)

    rows = shower_rows(source, "test", 10, 3, chunks, in_memory=False, cache=cache)
    return str(rows.path) if rows[np.arange(10)].numpy()[::2, 0].tolist() == [0, 1, 2, 3, 4] else "wrong"
