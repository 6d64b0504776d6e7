"""Cost of the fast-simulation trigger for the showers it does not take.

The trigger is a Python stacking action called once per new track. In a fast-simulated
event that is once per primary; a shower Geant4 still simulates (a particle below the
trigger's energy, another type) pays one call per secondary. This times 50 GeV photon
showers in ``ild-ecal`` with no trigger and with a trigger that takes nothing, same events,
each in a fresh process, and prints ms per shower of both.

Usage: ``python bench/fast_sim_overhead.py [N_SHOWERS]``
"""

from __future__ import annotations

import sys

import numpy as np

from caloforge.simulate._config import Trigger
from caloforge.simulate.geant4 import run_events_isolated
from caloforge.simulate.geometry import ild_like
from caloforge.simulate.gun import Gun, primaries


def main(n: int = 30) -> None:
    geometry = ild_like()
    rows = primaries(Gun(), geometry, np.full((n, 1), 50.0))
    times = {}
    for label, trigger in (("no trigger", None), ("trigger taking nothing", Trigger(("e+",), 1e6))):
        result = run_events_isolated(geometry, "gamma", rows, 1, trigger=trigger)
        times[label] = 1000 * result.stats.geant4_seconds / result.stats.events
        steps = result.stats.steps / result.stats.events
        print(f"{label:>24}: {times[label]:7.1f} ms/shower in Geant4 ({steps:.0f} steps/shower)")
    extra = times["trigger taking nothing"] - times["no trigger"]
    print(f"overhead: {extra:+.1f} ms/shower ({100 * extra / times['no trigger']:+.1f} %)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
