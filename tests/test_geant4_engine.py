"""Geant4 engine: geometry, seeding, physics sanity, determinism, event independence.

Geant4 can be initialised once per process, so every simulation here runs in a
fresh spawned process (``run_showers_isolated``); the pytest process never initialises it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from caloforge.simulate.geant4 import (
    IsolatedResult,
    event_seeds,
    prepare_environment,
    run_showers,
    run_showers_isolated,
)
from caloforge.simulate.geometry import Geometry, calochallenge_ds2_like, ild_like

needs_geant4 = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)

ENERGY_GEV = 10.0
N_EVENTS = 3
SEED = 11


@pytest.fixture(scope="module")
def reference() -> IsolatedResult:
    """Three 10 GeV photon showers in the ILD-like stack."""
    return run_showers_isolated(ild_like(), "gamma", np.full(N_EVENTS, ENERGY_GEV), SEED)


# --- no Geant4 needed --------------------------------------------------------


def test_ild_like_geometry() -> None:
    geo = ild_like()
    assert geo.n_layers == 30
    assert geo.layer_depths_mm[29] == pytest.approx(198.705)
    assert geo.layer_depths_mm[1] == pytest.approx(3.125)
    assert geo.layer_depths_mm[20] - geo.layer_depths_mm[19] == pytest.approx(11.445)
    assert geo.absorber_thicknesses_mm[19:21] == (2.1, 4.2)
    assert geo.gun_depth_mm == pytest.approx(-52.1)


def test_calochallenge_geometry() -> None:
    geo = calochallenge_ds2_like()
    assert geo.n_layers == 45
    assert geo.front_mm == pytest.approx(0.0)
    assert geo.back_mm == pytest.approx(45 * 1.7)


def test_overlapping_layers_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Geometry(layer_depths_mm=(0.0, 1.0), active_thickness_mm=0.5, absorber_thicknesses_mm=(1.0, 1.0))
    with pytest.raises(ValueError, match="absorber thicknesses"):
        Geometry(layer_depths_mm=(0.0, 3.0), active_thickness_mm=0.5, absorber_thicknesses_mm=(1.0,))


def test_event_seeds() -> None:
    assert event_seeds(1, 5) == event_seeds(1, 5)
    seeds = {event_seeds(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150
    assert all(0 <= v < 2**32 for v in event_seeds(123, 4))


def test_argument_validation() -> None:
    # Rejected before Geant4 is touched.
    with pytest.raises(ValueError, match="positive"):
        run_showers(ild_like(), "gamma", np.array([-1.0]), 0)
    with pytest.raises(ValueError, match="data-free"):
        run_showers(ild_like(), "proton", np.array([1.0]), 0)
    with pytest.raises(TypeError, match="Geometry"):
        run_showers("ild", "gamma", np.array([1.0]), 0)  # type: ignore[arg-type]


def test_standard_physics_needs_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEANT4_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("G4LEDATA", raising=False)
    with pytest.raises(ValueError, match=r"GEANT4_DATA_DIR .* lacks the Geant4 data sets G4EMLOW"):
        prepare_environment("standard")


# --- Geant4 in subprocesses ----------------------------------------------------


@needs_geant4
def test_showers_are_physical(reference: IsolatedResult) -> None:
    geo = ild_like()
    assert len(reference.showers) == N_EVENTS
    for hits in reference.showers:
        assert hits.ndim == 2 and hits.shape[1] == 4 and hits.dtype == np.float64
        assert len(hits) > 1000
        x, y, layer, edep = hits.T
        assert np.all(edep > 0)
        assert np.all(np.abs(x) <= geo.half_size_mm) and np.all(np.abs(y) <= geo.half_size_mm)
        assert np.array_equal(layer, np.round(layer)) and layer.min() >= 0 and layer.max() < 30
        # Sampling fraction of the ILD-like W/Si stack is about 3 %.
        visible = edep.sum() / (ENERGY_GEV * 1000.0)
        assert 0.02 < visible < 0.04
        profile = np.bincount(layer.astype(int), weights=edep, minlength=30)
        assert 5 <= profile.argmax() <= 16
    assert reference.stats.events == N_EVENTS


@needs_geant4
def test_same_seed_same_showers(reference: IsolatedResult) -> None:
    again = run_showers_isolated(ild_like(), "gamma", np.full(N_EVENTS, ENERGY_GEV), SEED)
    for a, b in zip(reference.showers, again.showers, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(reference.showers[0], reference.showers[1])


@needs_geant4
def test_event_independent_of_order(reference: IsolatedResult) -> None:
    # Event 2 alone, in a fresh process, equals event 2 simulated after events 0 and 1.
    alone = run_showers_isolated(ild_like(), "gamma", np.array([ENERGY_GEV]), SEED, first_event=2)
    assert np.array_equal(alone.showers[0], reference.showers[2])


@needs_geant4
def test_cpp_collector_matches_python_collector(reference: IsolatedResult) -> None:
    # The C++ collector reads G4Step fields by offset; geant4_pybind's accessors are the truth.
    python = run_showers_isolated(ild_like(), "gamma", np.array([ENERGY_GEV]), SEED, collector="python")
    assert np.array_equal(python.showers[0], reference.showers[0])


@needs_geant4
def test_50gev_photon_shower_shape() -> None:
    # Reference values of the ILD-like stack: ~2.9 % visible, maximum near layer 13. The
    # profile is flat over layers ~11-17, so the centroid is tested rather than the argmax.
    result = run_showers_isolated(ild_like(), "gamma", np.full(8, 50.0), 5)
    visible = [hits[:, 3].sum() / 50_000.0 for hits in result.showers]
    assert 0.026 < np.mean(visible) < 0.032
    profile = sum(np.bincount(h[:, 2].astype(int), weights=h[:, 3], minlength=30) for h in result.showers)
    assert 11 <= np.argmax(profile) <= 17
    assert 12.5 < (profile * np.arange(30)).sum() / profile.sum() < 16.0


@needs_geant4
def test_positron_in_calochallenge_geometry() -> None:
    result = run_showers_isolated(calochallenge_ds2_like(), "e+", np.array([5.0]), 3)
    hits = result.showers[0]
    assert hits[:, 2].max() < 45
    assert 0.005 < hits[:, 3].sum() / 5000.0 < 0.05


@needs_geant4
def test_other_geometry_in_same_process_is_refused() -> None:
    code = textwrap.dedent(
        """
        import numpy as np
        from caloforge.simulate.geant4 import hard_exit, run_showers
        from caloforge.simulate.geometry import calochallenge_ds2_like, ild_like
        list(run_showers(ild_like(), "gamma", np.array([1.0]), 0))
        list(run_showers(ild_like(), "e-", np.array([1.0]), 0))  # same geometry: fine
        try:
            run_showers(calochallenge_ds2_like(), "gamma", np.array([1.0]), 0)
        except RuntimeError as exc:
            print("refused:", exc)
        hard_exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # caloforge may not be installed
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "refused: Geant4 is already initialised" in result.stdout
