"""Fast simulation inside Geant4: trigger, placement, energy bookkeeping, a small fast-sim run."""

import importlib.util
import math
import shutil

import numpy as np
import pytest

from caloforge.detector import get_detector
from caloforge.io import open_showers, read_showers
from caloforge.simulate._config import Trigger
from caloforge.simulate.fastsim import FastSim, FastSimError, front_face_entry, place
from caloforge.simulate.geometry import Geometry
from caloforge.simulate.gun import Gun, primaries
from conftest import cli_run

needs_geant4 = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)
ILD = get_detector("ild-ecal")
GEOMETRY = Geometry.from_detector(ILD)
FRONT = GEOMETRY.front_mm


@pytest.mark.parametrize(
    ("position", "direction", "expected"),
    [
        ((3.0, -4.0, FRONT - 50), (0.0, 0.0, 1.0), (3.0, -4.0)),  # straight in
        ((0.0, 0.0, FRONT - 50), (0.6, 0.0, 0.8), (37.5, 0.0)),  # tilted: 50 mm * tan(36.87 deg)
        ((0.0, 0.0, FRONT + 1), (0.0, 0.0, 1.0), None),  # created inside the calorimeter
        ((0.0, 0.0, FRONT - 50), (0.0, 0.0, -1.0), None),  # heading away
        ((0.0, 0.0, FRONT - 50), (1.0, 0.0, 0.0), None),  # parallel to the face
        ((240.0, 0.0, FRONT - 50), (0.6, 0.0, 0.8), None),  # passes beside the face
    ],
)
def test_front_face_entry(position, direction, expected):
    entry = front_face_entry(position, direction, FRONT, ILD.half_size_mm)
    if expected is None:
        assert entry is None
    else:
        assert entry == pytest.approx(expected)


def test_gun_aims_every_primary_at_its_front_face_target():
    gun = Gun(offset_mm=(10.0, -5.0), angle_deg=20.0, pair_separation_mm=30.0)
    rows = primaries(gun, GEOMETRY, np.array([[12.0, 34.0]]))[0]
    assert rows[:, 0].tolist() == [12.0, 34.0]
    assert np.allclose(np.linalg.norm(rows[:, 4:], axis=1), 1.0)
    hits = [front_face_entry(r[1:4], r[4:7], FRONT, ILD.half_size_mm) for r in rows]
    assert np.allclose(hits, [[-5.0, -5.0], [25.0, -5.0]])
    assert math.degrees(math.acos(rows[0, 6])) == pytest.approx(20.0)


@pytest.mark.parametrize(
    "kwargs", [{"angle_deg": 85.0}, {"pair_separation_mm": -1.0}, {"offset_mm": (math.nan, 0.0)}]
)
def test_gun_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        Gun(**kwargs)


def test_place_moves_the_shower_axis_to_the_entry_point():
    rng = np.random.default_rng(0)
    points = np.column_stack(
        [rng.normal(0, 5, 200), rng.normal(0, 5, 200), rng.uniform(0, 30, 200), rng.uniform(0.1, 1, 200)]
    )
    points[:20, 3] = 0.0  # padding slots are dropped
    entry = np.array([50.0, -40.0, 25.0, 0.0, 0.0, 1.0])
    hits = place(points, entry, n_layers=30)
    real = points[points[:, 3] > 0]
    assert len(hits) == len(real)
    assert hits[:, 3].sum() == pytest.approx(real[:, 3].sum())
    shift = np.average(hits[:, :2], axis=0, weights=hits[:, 3]) - np.average(
        real[:, :2], axis=0, weights=real[:, 3]
    )
    assert shift == pytest.approx([-40.0, 25.0])
    assert set(np.unique(hits[:, 2])) <= set(range(30))


@pytest.fixture(scope="module")
def fast():
    return FastSim("default", ILD)


def test_fast_sim_deposits_exactly_the_models_showers_where_the_tracks_enter(fast):
    entries = [np.array([[40.0, 30.0, 0.0, 0, 0, 1.0], [20.0, -30.0, 0.0, 0, 0, 1.0]]), np.zeros((0, 6))]
    block = fast.showers(entries, seed=3, index=7)
    assert block.n_showers == 2 and block.off_normal == 0
    assert len(block.deposits[1]) == 0 and block.model_energy_mev[1] == 0
    own = fast.generator.generate_batch({"energy": np.array([40.0, 20.0])}, fast.plan, 3, 7)
    model_energy = own.points[..., 3].astype(np.float64).sum()
    assert block.deposits[0][:, 3].sum() == pytest.approx(model_energy, rel=1e-9)
    assert block.model_energy_mev[0] == pytest.approx(model_energy, rel=1e-9)
    # each shower is the model's own, moved so that its axis goes through its entry point
    first = int((own.points[0, :, 3] > 0).sum())
    for shower, rows, entry in [
        (own.points[0], slice(0, first), (30.0, 0.0)),
        (own.points[1], slice(first, None), (-30.0, 0.0)),
    ]:
        placed = block.deposits[0][rows]
        real = shower[shower[:, 3] > 0].astype(np.float64)
        assert placed[:, 3] == pytest.approx(real[:, 3])
        assert placed[:, :2] - real[:, :2] == pytest.approx(np.tile(entry, (len(real), 1)), abs=1e-4)


def test_fast_sim_counts_tilted_tracks(fast):
    tilt = math.radians(10)
    entries = [np.array([[30.0, 0.0, 0.0, math.sin(tilt), 0.0, math.cos(tilt)]])]
    assert fast.showers(entries, seed=0, index=0).off_normal == 1


def test_fast_sim_refuses_what_cannot_work(fast, tmp_path):
    with pytest.raises(FastSimError, match="trained for detector 'ild-ecal'"):
        FastSim("default", get_detector("calochallenge-ds2"))
    with pytest.raises(FastSimError, match="generates voxels"):
        FastSim("calodream", get_detector("calochallenge-ds2"))
    targets = np.zeros((1, 2))
    with pytest.raises(FastSimError, match=r"never fires.*shoots e-"):
        fast.check(Trigger(("gamma",), 10.0), "e-", (10.0, 90.0), targets)
    with pytest.raises(FastSimError, match=r"never fires.*below"):
        fast.check(Trigger(("gamma",), 50.0), "gamma", (10.0, 20.0), targets)
    with pytest.raises(FastSimError, match="outside the calorimeter"):
        fast.check(Trigger(("gamma",), 10.0), "gamma", (10.0, 90.0), np.array([[300.0, 0.0]]))
    with pytest.raises(FastSimError, match="trained range"):
        fast.check(Trigger(("gamma",), 1.0), "gamma", (10.0, 90.0), targets)


@needs_geant4
def test_trigger_kills_and_records_the_tracks_it_takes():
    from caloforge.simulate.geant4 import run_events_isolated

    rows = primaries(Gun(offset_mm=(5.0, 0.0), pair_separation_mm=40.0), GEOMETRY, np.array([[30.0, 2.0]]))
    result = run_events_isolated(GEOMETRY, "gamma", rows, 4, trigger=Trigger(("gamma",), 10.0))
    ((hits, entries),) = result.showers
    # the 30 GeV photon is taken (killed before any deposit), the 2 GeV one is simulated
    assert entries.shape == (1, 6) and entries[0] == pytest.approx([30.0, -15.0, 0.0, 0.0, 0.0, 1.0])
    assert len(hits) > 0  # Geant4's deposits are the 2 GeV shower's, around x = 25 mm
    assert abs(np.average(hits[:, 0], weights=hits[:, 3]) - 25.0) < 3.0


@needs_geant4
def test_fast_sim_run_writes_the_file_kind_of_full_simulation(monkeypatch, capsys, tmp_path):
    out = tmp_path / "fast.h5"
    code, stdout, err = cli_run(
        monkeypatch, capsys, "simulate", "--fast-sim", "default", "-n", "3", "--energy", "20:60",
        "--pair-separation", "60", "--gun-offset", "10,5", "--seed", "5", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "6 model showers" in stdout
    with open_showers(out) as f:
        assert f.kind == "points"
        assert f.attrs["generator"] == "geant4+caloclouds2-cm"
        assert f.attrs["pair_separation_mm"] == 60.0
    showers = read_showers(out)
    assert np.all((showers.energy >= 40.0) & (showers.energy <= 120.0))  # two photons per event
    for cloud in showers.points:
        cloud = cloud[cloud[:, 3] > 0]
        for centre in (-20.0, 40.0):  # the pair sits at 10 -/+ 30 mm, y = 5 mm
            mine = cloud[np.abs(cloud[:, 0] - centre) < 30]
            assert abs(np.average(mine[:, 0], weights=mine[:, 3]) - centre) < 3.0
            assert abs(np.average(mine[:, 1], weights=mine[:, 3]) - 5.0) < 3.0


@needs_geant4
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fast-sim", "calodream"], "generates voxels"),
        (["--fast-sim", "default", "--particle", "e-"], "never fires"),
        (["--fast-sim", "default", "--detector", "calochallenge-ds2"], "trained for detector"),
        (["--trigger-min-energy", "5"], "need --fast-sim"),
    ],
)
def test_fast_sim_bad_set_ups_fail_before_the_run(monkeypatch, capsys, tmp_path, args, message):
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    code, _, err = cli_run(monkeypatch, capsys, "simulate", "-n", "2", "--out", out, "--overwrite", *args)
    assert code != 0 and message in " ".join(err.split())
    assert out.read_bytes() == b"keep me"


def _pair_file(path, n, shift_mm, seed, separation=30.0):
    """Synthetic two-cluster events, clusters at -/+ separation/2 (+ shift_mm for the right one)."""
    from caloforge.io import PointShowers, ShowerWriter

    rng = np.random.default_rng(seed)
    pts = np.zeros((n, 60, 4), np.float32)
    for k, centre in enumerate((-separation / 2, separation / 2 + shift_mm)):
        sl = slice(30 * k, 30 * (k + 1))
        pts[:, sl, 0] = centre + rng.normal(0, 3, (n, 30))
        pts[:, sl, 1] = rng.normal(0, 3, (n, 30))
        pts[:, sl, 2] = rng.integers(0, 30, (n, 30)) + 0.5
        pts[:, sl, 3] = rng.exponential(1.0, (n, 30))
    with ShowerWriter(
        path, "points", "ild-ecal", generator="geant4", attrs={"pair_separation_mm": separation}
    ) as w:
        w.write(PointShowers(np.full(n, 40.0), pts))
    return path


def test_evaluate_reports_pair_separation_and_energy_sharing_with_a_floor(tmp_path):
    from caloforge.evaluate import EvaluationConfig, EvaluationError, evaluate
    from caloforge.io import PointShowers, write_showers

    ref = _pair_file(tmp_path / "ref.h5", 400, 0.0, 0)
    same = _pair_file(tmp_path / "same.h5", 200, 0.0, 1)
    moved = _pair_file(tmp_path / "moved.h5", 200, 4.0, 2)
    config = EvaluationConfig(n_draws=3, plots=False, classifier_epochs=1, classifier_splits=1)
    result = evaluate(ref, [same, moved], tmp_path / "report", config)
    pairs = result["pairs"]
    floor = pairs["floor"]["separation"][0]
    same_label, moved_label = (c["label"] for c in result["candidates"])
    assert pairs["candidates"][same_label]["separation"][0] < 3 * floor + 5
    assert pairs["candidates"][moved_label]["separation"][0] > 10 * floor
    assert abs(pairs["means"][moved_label]["separation"] - 34.0) < 1.0
    assert "## Pairs (30 mm apart)" in (tmp_path / "report" / "report.md").read_text()
    single = tmp_path / "single.h5"
    write_showers(
        single, PointShowers(np.full(200, 40.0), np.ones((200, 3, 4), np.float32)), detector="ild-ecal"
    )
    with pytest.raises(EvaluationError, match="holds single showers"):
        evaluate(ref, [single], tmp_path / "report2", config)


@needs_geant4
def test_tilted_gun_is_placed_along_the_normal_with_a_warning(monkeypatch, capsys, tmp_path):
    out = tmp_path / "tilted.h5"
    code, _, err = cli_run(
        monkeypatch, capsys, "simulate", "--fast-sim", "default", "-n", "2", "--energy", "30",
        "--gun-angle", "12", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "2 of 2 fast-simulated showers came in more than 5 degrees off" in " ".join(err.split())
    with open_showers(out) as f:
        assert f.attrs["gun_angle_deg"] == 12.0
