"""Pieces for tests/test_engines.py, in a module of their own: Dask workers import functions by
module name, and this directory is on their path (``pythonpath`` in pyproject.toml) while the
``tests`` package of pytest's import mode is not."""

import os
from pathlib import Path


def square(x: int) -> int:
    return x * x


def dies_once(job: tuple[str, int]) -> int:
    """Kills its worker process the first time it sees item 3 (a marker file remembers)."""
    marker, x = job
    if x == 3 and not Path(marker).exists():
        Path(marker).write_text("killed once")
        os._exit(1)
    return x * x


def fails(job: tuple[str, int]) -> int:
    marker, x = job
    if x == 2:
        with open(marker, "a") as f:
            f.write("attempt\n")
        raise ValueError("piece 2 is broken")
    return x
