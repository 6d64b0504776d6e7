"""Training data of the point-cloud families (caloforge.models.pointdata): the streamed summaries,
the point subsample, and the resumable run state."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from caloforge.calibrate import NPointsCalibration, count_hits
from caloforge.detector import get_detector
from caloforge.io import PointShowers, read_showers, write_showers
from caloforge.models.nn.showerflow import shower_stats
from caloforge.models.pointdata import PointRunState, TrainingData, _subsample, load_training_data
from caloforge.models.protocol import CheckpointError
from conftest import random_points, toy_voxels

torch.set_num_threads(1)
DET = get_detector("ild-ecal")


@dataclass(frozen=True)
class _Config:
    seed: int = 0
    max_showers: int | None = None
    chunk_size: int = 7
    cache_points: int = 12


def _rows(points: np.ndarray) -> list[tuple[float, ...]]:
    """A cloud's real points as a sorted list (a multiset)."""
    return sorted(map(tuple, points[points[:, 3] != 0].tolist()))


def _is_subset(small: list, big: list) -> bool:
    rest = list(big)
    for row in small:
        if row not in rest:
            return False
        rest.remove(row)
    return True


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """30 showers of up to 20 points; showers 3 and 11 are empty (never trained on)."""
    showers = random_points(30, 20, seed=2)
    showers.points[[3, 11]] = 0.0
    path = tmp_path_factory.mktemp("pointdata") / "points.h5"
    attrs = {"energy_min_gev": 5.0, "energy_max_gev": 95.0}
    write_showers(path, showers, DET, generator="geant4", attrs=attrs)
    return path


# ----------------------------------------------------------------------------- subsample


@pytest.mark.parametrize("k", [1, 5, 20, 32])
def test_subsample_takes_real_points_of_each_shower(k):
    showers = random_points(10, 20, seed=1)
    out = _subsample(showers, k, np.random.default_rng(0))
    assert out.shape == (10, k, 4) and out.dtype == np.float32
    n = showers.n_points
    real = out[..., 3] != 0
    np.testing.assert_array_equal(real.sum(1), np.minimum(n, k))
    assert (out[~real] == 0).all()  # the padding is zeros
    for i in range(10):
        got, full = _rows(out[i]), _rows(showers.points[i])
        assert _is_subset(got, full)
        if k >= n[i]:
            assert got == full  # a small shower is kept whole


def test_subsample_is_uniform_over_the_points():
    """Each of 10 points is kept in 3 of 10 draws: about 30 % of 2000 showers each."""
    pts = np.zeros((2000, 10, 4), np.float32)
    pts[..., 0] = np.arange(10)
    pts[..., 3] = 1.0
    out = _subsample(PointShowers(np.ones(2000), pts), 3, np.random.default_rng(1))
    share = np.bincount(out[..., 0].astype(int).ravel(), minlength=10) / 2000
    np.testing.assert_allclose(share, 0.3, atol=0.05)


# ----------------------------------------------------------------------------- loading


def test_loaded_summaries_are_those_of_the_nonempty_showers(data_file):
    calls = []
    data = load_training_data(data_file, _Config(), lambda *a: calls.append(a))
    full = read_showers(data_file)
    kept = full[full.n_points > 0]
    assert isinstance(data, TrainingData) and len(data.energy) == 28 and data.path == str(data_file)
    np.testing.assert_allclose(data.energy.numpy(), kept.energy, rtol=1e-6)
    want = shower_stats(kept, DET.n_layers)
    for name in ("n_points", "layer_counts", "layer_energy", "cog"):
        torch.testing.assert_close(getattr(data.stats, name), getattr(want, name), msg=name)
    np.testing.assert_array_equal(data.hits, count_hits(kept, DET))
    assert data.points.shape == (28, 12, 4) and data.points.dtype == torch.float32
    assert all(_is_subset(_rows(data.points[i].numpy()), _rows(kept.points[i])) for i in range(28))
    assert data.detector.name == "ild-ecal" and data.point_pitch_mm == DET.fine_cell_mm
    assert calls[-1] == ("load", 30, 30) and [c[1] for c in calls] == [7, 14, 21, 28, 30]


def test_the_energy_range_covers_the_files_spectrum(data_file, tmp_path):
    data = load_training_data(data_file, _Config(), None)
    assert data.energy_range == (5.0, 95.0)  # wider than the sample (10-90 GeV)
    showers = random_points(6, 5, seed=3)
    write_showers(tmp_path / "bare.h5", showers, DET, generator="geant4")
    bare = load_training_data(tmp_path / "bare.h5", _Config(), None)
    assert bare.energy_range == pytest.approx((showers.energy.min(), showers.energy.max()))


def test_loading_is_seeded_and_the_summaries_do_not_depend_on_chunks(data_file):
    a = load_training_data(data_file, _Config(), None)
    assert torch.equal(a.points, load_training_data(data_file, _Config(), None).points)
    assert not torch.equal(a.points, load_training_data(data_file, _Config(seed=1), None).points)
    b = load_training_data(data_file, _Config(chunk_size=100), None)
    assert torch.equal(a.energy, b.energy) and np.array_equal(a.hits, b.hits)
    torch.testing.assert_close(a.stats.layer_energy, b.stats.layer_energy)
    few = load_training_data(data_file, _Config(max_showers=12), None)
    assert len(few.energy) == 10  # 12 showers read, 2 of them empty
    torch.testing.assert_close(few.energy, a.energy[:10])


def test_bad_files_are_refused(tmp_path):
    write_showers(tmp_path / "vox.h5", toy_voxels(3), "calochallenge-ds2", generator="toy")
    with pytest.raises(ValueError, match="holds voxels; CaloClouds trains on point clouds"):
        load_training_data(tmp_path / "vox.h5", _Config(), None, model="CaloClouds")
    empty = random_points(4, 5)
    empty.points[:] = 0.0
    write_showers(tmp_path / "empty.h5", empty, DET, generator="geant4")
    with pytest.raises(ValueError, match="holds no showers with points to train on"):
        load_training_data(tmp_path / "empty.h5", _Config(), None)


# ----------------------------------------------------------------------------- run state


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 2)
        self.calibration = NPointsCalibration.identity(100.0)
        self.complete = False

    def metadata(self) -> dict:
        return {"format": "toy", "calibration": self.calibration.to_dict(), "complete": self.complete}


class _EMA:
    num_updates = 0


class _Run(PointRunState):
    def __init__(self, n_showers: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.model, self.train_net, self.ema = _Model(), torch.nn.Linear(2, 2), _EMA()
        self.opt = torch.optim.Adam([*self.model.parameters(), *self.train_net.parameters()], lr=0.1)
        self.gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator().manual_seed(seed + 100)
        self.data = TrainingData(DET, torch.ones(n_showers), None, np.zeros(n_showers), None, "d.h5", (1, 2))
        self.step, self.skipped, self.elapsed_s = 0, 0, 0.0

    def optimizers(self) -> dict:
        return {"adam": self.opt}

    def train_step(self) -> None:
        x = torch.randn(4, 3, generator=self.gen)
        loss = self.train_net(self.model.net(x)).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        self.ema.num_updates += 1


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    a = _Run(5, seed=0)
    for _ in range(3):
        a.train_step()
    a.skipped, a.elapsed_s = 1, 12.5
    a.model.calibration = NPointsCalibration(100.0, 300, [0.0, 0.1, 0.0, 0.0], (0.0, 2.0))
    a.model.complete = True
    torch.save(a.state(), tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain data, as checkpoints must be
    assert state["data"] == {"path": "d.h5", "n_showers": 5} and state["format"] == "toy"

    b = _Run(5, seed=1)
    b.restore(state, tmp_path / "ckpt.pt")
    assert (b.step, b.skipped, b.elapsed_s, b.ema.num_updates) == (3, 1, 12.5, 3)
    assert b.model.complete and b.model.calibration.to_dict() == a.model.calibration.to_dict()
    for got, want in zip(b.model.parameters(), a.model.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The random streams and the optimiser moments continue where they were.
    a.train_step()
    b.train_step()
    for got, want in zip(b.train_net.parameters(), a.train_net.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(torch.randn(3, generator=b.noise_gen), torch.randn(3, generator=a.noise_gen))


def test_restore_refuses_other_data_and_broken_states(tmp_path):
    state = _Run(5, seed=0).state()
    with pytest.raises(CheckpointError, match=r"trained on 5 showers of 'd.h5', this run has 6: resume with"):
        _Run(6, seed=0).restore(state, tmp_path / "c.pt")
    broken = dict(state)
    del broken["optimizers"]
    with pytest.raises(CheckpointError, match=r"'.*c.pt' cannot be resumed from"):
        _Run(5, seed=0).restore(broken, tmp_path / "c.pt")
    other = _Run(5, seed=0)
    other.train_net = torch.nn.Linear(2, 3)  # weights of another shape
    with pytest.raises(CheckpointError, match="cannot be resumed from"):
        other.restore(state, tmp_path / "c.pt")
    with pytest.raises(NotImplementedError):
        PointRunState().optimizers()
