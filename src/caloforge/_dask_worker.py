"""Preload of the Dask workers of a local cluster: a worker leaves Ctrl-C to the caloforge
process that started the cluster (which stops it), rather than printing its own traceback
when the terminal's Ctrl-C reaches the whole process group."""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by Dask in each worker process as it starts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
