"""Files that ``caloforge generate`` writes, read with exactly the calls the field's tools make:
the CaloChallenge's ``evaluate.py``/``HighLevelFeatures.py`` (voxels), the public CaloClouds II
code (points) and JetNet (jets). Datasets, shapes, dtypes, voxel order and units, and the
``units`` attribute on every dataset itself."""

import sys

import h5py
import numpy as np
import pytest

from caloforge import cli
from caloforge.detector import get_detector
from caloforge.io import read_showers
from caloforge.jets.io import read_jets
from caloforge.observables import compute_observables


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One small file per kind, written by the generate command from the shipped models."""
    out = tmp_path_factory.mktemp("field")
    files = {}
    for kind, model, n in (("voxels", "calodream", 12), ("points", "default", 12), ("jets", "epic-fm", 40)):
        files[kind] = out / f"{kind}.h5"
        args = ["generate", "--model", model, "-n", str(n), "--seed", "5", "--out", str(files[kind])]
        if kind != "jets":
            args += ["--energy", "20:80"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["caloforge", *args])
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
        assert code == 0, (kind, model)
    return files


def test_calochallenge_reads_our_voxel_files(written):
    det = get_detector("calochallenge-ds2")
    # evaluate.py: source_file = h5py.File(path, 'r'); source_file['showers'][:],
    # source_file['incident_energies'][:]; check_file: showers.shape[1] == 6480 for dataset 2.
    with h5py.File(written["voxels"], "r") as source_file:
        shower, energy = source_file["showers"][:], source_file["incident_energies"][:]
        units = {k: source_file[k].attrs["units"] for k in ("showers", "incident_energies")}
    assert shower.shape == (12, 6480) and energy.shape == (12, 1)
    assert shower.dtype == energy.dtype == np.float64  # its evaluate.py runs in float64
    assert units == {"showers": "MeV", "incident_energies": "MeV"}
    assert np.all((energy >= 20e3) & (energy <= 80e3))  # --energy 20:80 GeV, in MeV
    # HighLevelFeatures: voxels layer by layer (45 × 144 for dataset 2), each layer's 16 angular
    # bins of 9 radial bins (radius fastest); E_layer is the sum over a layer's 144 voxels.
    e_layer = shower.reshape(12, 45, 16, 9).sum(axis=(2, 3))
    mine = compute_observables(read_showers(written["voxels"]), det)
    np.testing.assert_allclose(e_layer.sum(axis=1) / energy[:, 0], mine.e_ratio, rtol=1e-4)
    # most of the energy sits in the innermost radial bins: the radius really is the fastest axis
    radial = shower.reshape(12, 45, 16, 9).sum(axis=(0, 1, 2))
    assert radial[0] + radial[1] > radial[-1] + radial[-2]


def test_caloclouds_reads_our_point_files(written):
    # the public CaloClouds II code: f['events'][:] is (N, 4, P) as x, depth (layer), y, E [GeV],
    # f['energy'][:] is (N, 1) in GeV.
    with h5py.File(written["points"], "r") as f:
        events, energy = f["events"][:], f["energy"][:]
        attrs = dict(f["events"].attrs)
        energy_units = f["energy"].attrs["units"]
    assert events.shape[:2] == (12, 4) and energy.shape == (12, 1) and events.dtype == np.float32
    assert list(attrs["axes"].split(",")) == ["x", "depth", "y", "E"]
    assert list(attrs["units"].split(",")) == ["mm", "layer", "mm", "GeV"] and energy_units == "GeV"
    x, depth, y, e = events[:, 0], events[:, 1], events[:, 2], events[:, 3]
    hit = e > 0
    assert (
        np.all((depth[hit] >= 0) & (depth[hit] < 30))
        and max(np.abs(x[hit]).max(), np.abs(y[hit]).max()) < 500
    )
    # E in GeV on disk (MeV in memory): the visible energy is about 1-3 % of the incident energy
    assert 0.005 < np.median(e.sum(axis=1) / energy[:, 0]) < 0.05
    np.testing.assert_allclose(
        e.sum(axis=1) * 1000, read_showers(written["points"]).points[..., 3].sum(axis=1), rtol=1e-4
    )


def test_jetnet_reads_our_jet_files(written):
    # JetNet: f["particle_features"] (N, P, 4) as etarel, phirel, ptrel, mask;
    # f["jet_features"] (N, 4) as pt, eta, mass, num_particles (the type comes from the name or
    # the jet_type attribute).
    with h5py.File(written["jets"], "r") as f:
        pf, jf = f["particle_features"][:], f["jet_features"][:]
        pf_attrs, jf_attrs = dict(f["particle_features"].attrs), dict(f["jet_features"].attrs)
        jet_type = f.attrs["jet_type"]
    assert pf.shape == (40, 30, 4) and jf.shape == (40, 4) and pf.dtype == jf.dtype == np.float32
    assert pf_attrs["features"].split(",") == ["etarel", "phirel", "ptrel", "mask"]
    assert pf_attrs["units"].split(",") == ["1", "rad", "1", "1"]
    assert jf_attrs["features"].split(",") == ["pt", "eta", "mass", "num_particles"]
    assert jf_attrs["units"].split(",") == ["GeV", "1", "GeV", "1"] and jet_type == "t"
    mask = pf[..., 3]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask.sum(axis=1), jf[:, 3])  # num_particles = real particles
    assert np.all(pf[mask == 0] == 0)  # padding is all zeros, and comes last
    assert np.all(np.diff(mask, axis=1) <= 0)
    assert np.all(pf[..., 2].sum(axis=1) < 1.3) and np.all(np.abs(pf[..., 1]) <= np.pi)
    assert len(read_jets(written["jets"])) == 40
