"""The ``caloforge`` executable: stops cleanly on Ctrl-C even while the command line is still
being imported (numpy, torch, … take a second or more), then runs :func:`caloforge.cli.main`."""

from __future__ import annotations

import os
import signal
import sys


def _early_stop(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted: nothing had started\n")
    os._exit(130)


def main() -> None:
    """Entry point of the ``caloforge`` script."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early_stop)
    from caloforge.cli import main as cli_main  # installs the real handlers when it runs

    cli_main()
