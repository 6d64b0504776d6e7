"""`caloforge simulate`: physics validation on small samples, determinism, resume, interrupts."""

import importlib.util
import shutil

import h5py
import numpy as np
import pytest

from caloforge.detector import CALOCHALLENGE_THRESHOLD_MEV, get_detector
from caloforge.io import open_showers, read_showers
from caloforge.observables import compute_observables, derive_edges
from caloforge.pieces import pieces_dir
from caloforge.simulate.driver import EnergySpec, SimulationConfig, draw_energies, simulate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("geant4_pybind") is None or shutil.which("g++") is None,
    reason="needs geant4_pybind and g++",
)

ILD = get_detector("ild-ecal")
SAMPLES = {10.0: 16, 50.0: 6, 90.0: 4}  # showers per energy: ~3 s of Geant4 in all


@pytest.fixture(scope="module")
def by_energy(tmp_path_factory):
    """Photon showers at 10, 50 and 90 GeV in the ILD-like ECAL (two workers)."""
    out = {}
    for energy, n in SAMPLES.items():
        path = tmp_path_factory.mktemp("sim") / f"g{energy:.0f}.h5"
        config = SimulationConfig(energy=EnergySpec("fixed", energy, energy), n_showers=n, seed=21)
        simulate(config, path, workers=2)
        out[energy] = read_showers(path)
    return out


def test_visible_fraction_and_linearity(by_energy):
    energies = np.array(list(by_energy))
    visible = np.array([s.points[..., 3].sum(axis=1).mean() for s in by_energy.values()])  # MeV
    fraction = visible / (energies * 1000)
    assert np.all((fraction > 0.02) & (fraction < 0.04)), fraction
    slope, offset = np.polyfit(energies, visible, 1)
    residual = visible / (slope * energies + offset) - 1
    assert np.all(np.abs(residual) < 0.03), residual


def test_shower_maximum_moves_deeper_with_energy(by_energy):
    depth = {e: compute_observables(s, ILD).cog[:, 2].mean() for e, s in by_energy.items()}
    assert depth[10.0] < depth[50.0] < depth[90.0]
    # t_max grows like ln(E): ln 9 ~ 2.2 X0 ~ 1-3 layers between 10 and 90 GeV
    assert 0.7 < depth[90.0] - depth[10.0] < 4.0, depth


def test_transverse_containment_of_order_moliere_radius(by_energy):
    """90 % of the energy lies within one to two effective Molière radii of the stack.

    R_M(W) = 9.3 mm holds for solid tungsten; the ILD stack is only ~42 % tungsten by depth
    (the rest silicon and gaps), so its effective Molière radius is 9.3 mm / 0.42 ~ 22 mm.
    """
    stack_depth = ILD.layer_depths_mm[-1] + ILD.active_thickness_mm - ILD.front_mm
    moliere_eff = 9.3 / (sum(ILD.absorber_thicknesses_mm) / stack_depth)
    radii = []
    for showers in by_energy.values():
        for cloud in showers.points:
            cloud = cloud[cloud[:, 3] > 0]
            r = np.hypot(cloud[:, 0], cloud[:, 1])
            order = np.argsort(r)
            cumulative = np.cumsum(cloud[order, 3]) / cloud[:, 3].sum()
            radii.append(r[order][np.searchsorted(cumulative, 0.9)])
    assert 1.0 < np.mean(radii) / moliere_eff < 2.0, (np.mean(radii), moliere_eff)


def test_radial_hit_deciles_match_full_ild_geant4(by_energy):
    """SPEC 4's E_radial edges are the deciles of hit radii in the full ILD Geant4 sample."""
    _, radial = derive_edges(list(by_energy.values()), ILD)
    ratio = np.asarray(radial[1:-1]) / np.asarray(ILD.radial_edges_mm[1:-1])
    assert np.all(np.abs(ratio - 1) < 0.3), ratio


def test_file_contents_and_attributes(by_energy, tmp_path):
    showers = by_energy[10.0]
    assert len(showers) == 16 and np.all(showers.energy == 10.0)
    layers = showers.points[..., 2][showers.mask]
    assert np.all((layers >= 0) & (layers < 30)) and np.allclose(layers % 1, 0.5)
    assert showers.n_points.min() > 100


def test_same_seed_same_file_whatever_the_workers_and_resume(tmp_path):
    config = SimulationConfig(energy=EnergySpec("uniform", 5, 15), n_showers=6, seed=4)
    simulate(config, tmp_path / "one.h5", workers=1, block_size=2)
    simulate(config, tmp_path / "two.h5", workers=2, block_size=3)
    half = SimulationConfig(energy=config.energy, n_showers=6, seed=4)
    seen = []

    def stop_after_first_block(done, total):
        seen.append(done)
        raise KeyboardInterrupt

    result = simulate(half, tmp_path / "resumed.h5", block_size=2, progress=stop_after_first_block)
    # Interrupted: the output is not written, the finished block waits in the piece store.
    assert result.interrupted and result.n_done == 2 and not (tmp_path / "resumed.h5").exists()
    assert pieces_dir(tmp_path / "resumed.h5").is_dir()
    simulate(half, tmp_path / "resumed.h5", block_size=2, resume=True)
    assert not pieces_dir(tmp_path / "resumed.h5").exists()
    again = simulate(half, tmp_path / "resumed.h5", block_size=2, resume=True)  # nothing left to do
    assert again.n_new == 0 and not pieces_dir(tmp_path / "resumed.h5").exists()
    files = [h5py.File(tmp_path / name) for name in ("one.h5", "two.h5", "resumed.h5")]
    events = [f["events"][...] for f in files]
    width = min(e.shape[2] for e in events)
    for other in events[1:]:
        assert np.array_equal(events[0][..., :width], other[..., :width])
        assert not events[0][..., width:].any() and not other[..., width:].any()
    assert np.allclose(files[0]["energy"][:, 0], draw_energies(config.energy, 6, 4))
    with open_showers(tmp_path / "one.h5") as f:
        assert f.generator == "geant4" and f.attrs["seed"] == 4 and f.attrs["physics"] == "datafree"
        assert f.attrs["particle"] == "gamma" and f.attrs["energy_min_gev"] == 5


def test_refuses_to_clobber_or_resume_other_settings(tmp_path):
    config = SimulationConfig(energy=EnergySpec("fixed", 5, 5), n_showers=1, seed=1)
    simulate(config, tmp_path / "x.h5")
    with pytest.raises(FileExistsError, match="--resume"):
        simulate(config, tmp_path / "x.h5")
    other = SimulationConfig(energy=EnergySpec("fixed", 5, 5), n_showers=2, seed=2)
    with pytest.raises(ValueError, match="seed"):
        simulate(other, tmp_path / "x.h5", resume=True)


def test_calochallenge_voxels_match_points(tmp_path):
    config = SimulationConfig(
        detector="calochallenge-ds2", particle="e-", energy=EnergySpec("fixed", 5, 5), n_showers=2, seed=3
    )
    outs = [tmp_path / "v.h5", (tmp_path / "v3.h5", "calochallenge-ds3")]
    result = simulate(config, tmp_path / "p.h5", voxel_out=outs)
    assert result.voxel_paths == [tmp_path / "v.h5", tmp_path / "v3.h5"]
    points, voxels = read_showers(tmp_path / "p.h5"), read_showers(tmp_path / "v.h5")
    assert voxels.voxels.shape == (2, 6480)
    inside = np.hypot(points.points[..., 0], points.points[..., 1]) < 41.85
    contained = np.where(inside, points.points[..., 3], 0).sum(axis=1)
    # Voxels are filled from raw steps, points from the fine grid: only the outer ring edge differs.
    assert np.allclose(voxels.voxels.sum(axis=1), contained, rtol=0.02)
    assert 0.8 < voxels.voxels.sum(axis=1).mean() / points.points[..., 3].sum(axis=1).mean() <= 1.0
    # The dataset-3 file of the same showers, checked as a CaloChallenge user would read it.
    with h5py.File(tmp_path / "v3.h5", "r") as f:
        assert sorted(f) == ["incident_energies", "showers"]
        e_inc, ds3 = f["incident_energies"][:], f["showers"][:]
        assert f.attrs["detector"] == "calochallenge-ds3" and "50 angular x 18 radial" in str(
            f.attrs["detector_description"]
        )
    assert e_inc.shape == (2, 1) and np.all(e_inc == 5000.0)  # MeV
    assert ds3.shape == (2, 40500) and ds3.dtype == np.float64  # as the challenge's files
    assert np.all(ds3 >= 0) and (ds3 > CALOCHALLENGE_THRESHOLD_MEV).sum() > 100  # uncut, as theirs
    # Order layer, angle, radius (radius fastest): two dataset-3 rings make one dataset-2 ring.
    rings3 = ds3.reshape(2, 45, 50, 18).sum(2).reshape(2, 45, 9, 2).sum(-1)
    rings2 = voxels.voxels.reshape(2, 45, 16, 9).sum(2)
    np.testing.assert_allclose(rings3, rings2, rtol=1e-4, atol=1e-4)


def test_voxel_readouts_must_share_the_stack(tmp_path):
    config = SimulationConfig(
        detector="calochallenge-ds2", particle="e-", energy=EnergySpec("fixed", 5, 5), n_showers=1, seed=3
    )
    with pytest.raises(ValueError, match="cell readout"):
        simulate(config, tmp_path / "p.h5", voxel_out=[(tmp_path / "v.h5", "ild-ecal-30")])
    with pytest.raises(ValueError, match="is not a readout of 'ild-ecal'"):
        simulate(
            SimulationConfig(n_showers=1),
            tmp_path / "p.h5",
            voxel_out=[(tmp_path / "v.h5", "calochallenge-ds3")],
        )
    assert not (tmp_path / "p.h5").exists()


def test_energy_spec_parsing():
    assert EnergySpec.parse("50").kind == "fixed"
    with pytest.raises(ValueError, match="LO:HI"):
        EnergySpec.parse("a:b")
    with pytest.raises(ValueError, match="0 < LO <= HI"):
        EnergySpec.parse("90:10")
    log = draw_energies(EnergySpec.parse("1:100", log=True), 20000, 0)
    assert 0.45 < np.mean(np.log10(log) < 1.0) < 0.55
