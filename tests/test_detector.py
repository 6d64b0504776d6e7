"""Geometry numbers of the built-in detectors and validation of user detector files."""

import math

import numpy as np
import pytest

from caloforge.detector import (
    CellGrid,
    DetectorError,
    PolarGrid,
    available_detectors,
    detector_from_dict,
    get_detector,
    load_detector,
)


def test_ild_geometry_matches_spec():
    det = get_detector("ild-ecal")
    assert det.n_layers == 30
    assert math.isclose(sum(det.absorber_thicknesses_mm), 84.0)
    # 84 mm of tungsten with X0 = 3.504 mm is ~24 radiation lengths.
    assert 23.5 < sum(det.absorber_thicknesses_mm) / 3.504 < 24.5
    assert det.layer_depths_mm[0] == 0.0
    assert math.isclose(det.layer_depths_mm[29], 198.705, abs_tol=1e-9)
    # ILD: first Si layer at 1811.34 mm, last at 2010.045 mm from the beam axis.
    assert math.isclose(1811.34 + det.layer_depths_mm[-1], 2010.045, abs_tol=1e-6)
    gaps = np.diff(det.layer_depths_mm)
    assert np.allclose(gaps[:19:2], 3.125) and np.allclose(gaps[1:19:2], 9.345)
    assert math.isclose(gaps[19], 11.445)
    assert np.allclose(gaps[20::2], 5.225) and np.allclose(gaps[21::2], 11.445)
    assert det.absorber_thicknesses_mm[19] == 2.1 and det.absorber_thicknesses_mm[20] == 4.2
    assert det.active_thickness_mm == 0.525 and det.threshold_mev == 0.1
    assert isinstance(det.readout, CellGrid) and det.readout.cell_size_mm == 5.0883
    assert det.readout.half_extent_mm >= 250.0
    assert math.isclose(det.front_mm, -2.1)


def test_ild_cell_grid_centred_on_gun():
    grid = get_detector("ild-ecal").readout
    centre = grid.n_cells // 2
    assert grid.cell_index(np.array([0.0]))[0] == centre
    assert grid.cell_centre(centre) == 0.0
    half = grid.cell_size_mm / 2
    assert grid.cell_index(np.array([half - 1e-6, half + 1e-6])).tolist() == [centre, centre + 1]
    assert grid.cell_index(np.array([-half - 1e-6])).tolist() == [centre - 1]


def test_ds2_geometry():
    det = get_detector("calochallenge-ds2")
    assert det.n_layers == 45
    assert isinstance(det.readout, PolarGrid)
    assert (det.readout.n_alpha, det.readout.n_radial) == (16, 9)
    assert det.n_channels == 6480
    assert np.allclose(np.diff(det.layer_depths_mm), 1.7)
    assert all(t == 1.4 for t in det.absorber_thicknesses_mm)
    assert det.threshold_mev == 0.5e-3 / 0.033  # the challenge's exact value, not 0.01515
    x, y = det.readout.voxel_centres()
    # Radius fastest: the first 9 voxels share one angle and walk outwards.
    assert np.allclose(np.arctan2(y[:9], x[:9]), np.arctan2(y[0], x[0]))
    assert np.all(np.diff(np.hypot(x[:9], y[:9])) > 0)


@pytest.mark.parametrize("name", available_detectors())
def test_round_trip_through_dict_and_yaml(name, tmp_path):
    import yaml

    det = get_detector(name)
    assert detector_from_dict(det.to_dict()) == det
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(det.to_dict()))
    assert load_detector(path) == det


def test_toml_detector(tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(
        'name = "toy"\nn_layers = 4\nlayer_pitch_mm = 6.0\nactive_thickness_mm = 0.5\n'
        "absorber_thicknesses_mm = 3.5\nthreshold_mev = 0.05\n"
        '[readout]\ntype = "cells"\ncell_size_mm = 10.0\nn_cells = 21\n'
    )
    det = get_detector(str(path))
    assert det.name == "toy" and det.n_layers == 4 and det.absorber_thicknesses_mm == (3.5,) * 4
    assert det.long_edges == (0, 1, 2, 3, 4)


def _base() -> dict:
    return get_detector("ild-ecal").to_dict()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layer_depths_mm": [0, 5, 4]}, "layer_depths_mm"),
        ({"absorber_thicknesses_mm": [2.1, 2.1]}, "absorber_thicknesses_mm"),
        ({"threshold_mev": -1}, "threshold_mev"),
        ({"readout": {"type": "cells", "cell_size_mm": 5.0, "n_cells": 0}}, "readout.n_cells"),
        ({"readout": {"type": "hex"}}, "readout.type"),
        ({"readout": {"type": "polar", "n_alpha": 4}}, "readout.radial_edges_mm"),
        ({"long_edges": [0, 10, 20]}, "long_edges"),
        ({"colour": "red"}, "colour"),
        ({"active_thickness_mm": "thin"}, "wrong type"),
    ],
)
def test_invalid_detector_names_the_field(change, field):
    data = _base() | change
    with pytest.raises(DetectorError, match=field.replace(".", r"\.")):
        detector_from_dict(data)


def test_missing_field_and_bad_file(tmp_path):
    data = _base()
    del data["threshold_mev"]
    with pytest.raises(DetectorError, match="'threshold_mev' is missing"):
        detector_from_dict(data)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(DetectorError, match="not valid toml"):
        load_detector(bad)
    with pytest.raises(DetectorError, match="unknown detector 'nope'"):
        get_detector("nope")


def test_layer_of_depth():
    det = get_detector("ild-ecal")
    centres = np.asarray(det.layer_depths_mm) + det.active_thickness_mm / 2
    assert det.layer_of_depth(centres).tolist() == list(range(30))
    assert det.layer_of_depth(np.array([-10.0, 500.0])).tolist() == [0, 29]
