"""Dask engine: the same files as one machine's processes, and its faults — a worker killed
mid-run, a scheduler that is not there, a piece that always fails, Ctrl-C on the client."""

import importlib.util
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from caloforge.engines import DaskEngine, EngineError, LocalEngine, make_engine
from caloforge.pieces import pieces_dir
from engine_tasks import dies_once, fails, square

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None, reason="needs dask.distributed"
)


@pytest.fixture(scope="module")
def cluster():
    with DaskEngine(2) as engine:
        yield engine


def test_ordered_and_unordered_results(cluster):
    assert list(cluster.imap(square, range(10))) == [x * x for x in range(10)]
    assert sorted(cluster.imap_unordered(square, range(10))) == sorted(x * x for x in range(10))


def test_a_killed_worker_loses_nothing(cluster, tmp_path):
    marker = str(tmp_path / "killed")
    results = list(cluster.imap(dies_once, [(marker, x) for x in range(8)]))
    assert Path(marker).exists() and results == [x * x for x in range(8)]


def test_a_failing_piece_stops_the_run_once(cluster, tmp_path):
    marker = tmp_path / "attempts"
    with pytest.raises(EngineError, match="a piece failed on a Dask worker: ValueError: piece 2 is broken"):
        list(cluster.imap(fails, [(str(marker), x) for x in range(6)]))
    assert marker.read_text().count("attempt") == 1  # not retried


def test_unreachable_scheduler_is_one_line():
    start = time.monotonic()
    with pytest.raises(EngineError, match=r"cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:9'"):
        DaskEngine(1, "tcp://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - start < 30


def test_engine_names():
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        make_engine("spark", 1)
    with pytest.raises(ValueError, match="--scheduler needs --engine dask"):
        make_engine("local", 1, "tcp://x:1")
    with LocalEngine(1) as local:  # a builtin: spawned processes cannot import this test module
        assert list(local.imap(abs, [-2, 1, -3])) == [2, 1, 3]


def test_generate_on_dask_equals_workers_and_resumes(tmp_path):
    from caloforge.generation import BATCHES_PER_PIECE, generate_file

    energies = np.random.default_rng(0).uniform(10, 90, 3 * 8 * BATCHES_PER_PIECE)
    pool = generate_file("default", energies, tmp_path / "pool.h5", seed=5, batch_size=8, workers=2)
    seen = []

    def stop_after_first_piece(done: int, total: int) -> None:
        seen.append(done)
        raise KeyboardInterrupt

    out = tmp_path / "dask.h5"
    with pytest.raises(KeyboardInterrupt):
        generate_file(
            "default", energies, out, seed=5, batch_size=8, workers=2, engine="dask",
            progress=stop_after_first_piece,
        )  # fmt: skip
    assert not out.exists() and len(list(pieces_dir(out).glob("piece-*.npz"))) == 1
    generate_file("default", energies, out, seed=5, batch_size=8, workers=2, engine="dask", resume=True)
    assert not pieces_dir(out).exists()
    with h5py.File(pool.path) as a, h5py.File(out) as b:
        assert np.array_equal(a["events"][...], b["events"][...])
        assert np.array_equal(a["energy"][...], b["energy"][...])


@pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None, reason="needs Geant4"
)
def test_simulate_on_dask_equals_local(tmp_path):
    from caloforge.simulate.driver import EnergySpec, SimulationConfig, simulate

    config = SimulationConfig(energy=EnergySpec("uniform", 3, 8), n_showers=6, seed=9)
    simulate(config, tmp_path / "local.h5", workers=1, block_size=2)
    simulate(config, tmp_path / "dask.h5", workers=2, block_size=2, engine="dask")
    with h5py.File(tmp_path / "local.h5") as a, h5py.File(tmp_path / "dask.h5") as b:
        assert np.array_equal(a["events"][...], b["events"][...])


def test_evaluate_on_dask_equals_local(tmp_path):
    from caloforge.io import write_showers
    from caloforge.observables import observables_from_file
    from conftest import random_points

    path = tmp_path / "s.h5"
    write_showers(path, random_points(25, 40, seed=2))
    local = observables_from_file(path, chunk_size=7)
    with DaskEngine(1) as engine:
        remote = observables_from_file(path, chunk_size=7, engine=engine)
    assert np.array_equal(local.high_level(), remote.high_level())
    assert np.array_equal(local.cell_energy, remote.cell_energy)


def test_dask_workers_leave_ctrl_c_to_the_process_that_started_them():
    """The terminal's Ctrl-C reaches every process of the group: the local cluster's workers
    ignore it (their caloforge process stops the run) instead of printing tracebacks."""
    import signal

    pytest.importorskip("distributed")
    from caloforge.engines import DaskEngine

    with DaskEngine(1) as engine:
        handlers = engine.client.run(signal.getsignal, signal.SIGINT)
    assert handlers and all(h == signal.SIG_IGN for h in handlers.values())
