"""The image data path: ild-ecal-30 cell images from point clouds, files, convert, evaluation."""

import json

import h5py
import numpy as np
import pytest

from caloforge.convert import convert_showers
from caloforge.detector import common_detector, get_detector
from caloforge.evaluate import EvaluationConfig, _distorted, evaluate
from caloforge.io import PointShowers, ShowerFileError, open_showers, write_showers
from caloforge.observables import observables_from_file
from caloforge.projection import hits_from_voxels, project_points, voxelise_with_loss
from conftest import cli_run, random_points, toy_images

IMAGES = get_detector("ild-ecal-30")
ILD = get_detector("ild-ecal")


def test_image_grid_is_a_window_of_ild_ecal() -> None:
    assert IMAGES.n_channels == 30 * 30 * 30
    assert IMAGES.readout.half_extent_mm == pytest.approx(76.3245)
    assert common_detector([ILD, IMAGES]) == IMAGES
    assert common_detector([get_detector("calochallenge-ds2"), IMAGES]) is None
    # the gun cell is cell 15 of the window, cell 49 of the full grid: the same centre
    assert IMAGES.readout.cell_centre(15) == ILD.readout.cell_centre(49) == 0.0


def test_projection_conserves_energy_inside_and_reports_the_rest() -> None:
    showers = random_points(20, 300, seed=3)
    showers.points[..., :2] *= 4.0  # spread beyond the 76 mm half-width
    images, outside = voxelise_with_loss(showers, IMAGES)
    total = showers.points[..., 3].sum(axis=1, dtype=np.float64)
    assert (outside > 0).all()
    np.testing.assert_allclose(images.voxels.sum(axis=1, dtype=np.float64) + outside, total, rtol=1e-5)


def test_images_hold_the_same_cells_as_the_full_grid() -> None:
    showers = random_points(10, 200, seed=5)
    full = project_points(showers, ILD)
    images, _ = voxelise_with_loss(showers, IMAGES)
    window = hits_from_voxels(images, IMAGES)
    inside = (np.abs(full.x) < IMAGES.readout.half_extent_mm) & (
        np.abs(full.y) < IMAGES.readout.half_extent_mm
    )
    key = lambda h, keep: sorted(  # noqa: E731
        zip(
            h.shower[keep],
            h.layer[keep],
            h.x[keep].round(3),
            h.y[keep].round(3),
            h.energy[keep].round(3),
            strict=True,
        )
    )
    assert key(full, inside) == key(window, np.ones(len(window.energy), bool))
    # [shower, layer, x, y] order of the flat image
    one = PointShowers([50.0], np.array([[[2 * 5.0883, -5.0883, 7.5, 1.0]]], np.float32))
    img = voxelise_with_loss(one, IMAGES)[0].voxels.reshape(30, 30, 30)
    assert img[7, 17, 14] == 1.0 and img.sum() == 1.0


def test_convert_writes_images_and_summarises_the_outside(tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "points.h5"
    attrs = {"particle": "gamma", "energy_min_gev": 10.0}
    write_showers(
        src, random_points(30, 200, seed=1), detector="ild-ecal", generator="geant4", seed=4, attrs=attrs
    )
    code, out, err = cli_run(
        monkeypatch, capsys, "convert", src, "--out", tmp_path / "img.h5", "--chunk-size", 7
    )
    assert code == 0, err
    assert "energy outside the readout" in out
    with open_showers(tmp_path / "img.h5") as f:
        assert f.kind == "voxels" and f.detector.name == "ild-ecal-30" and len(f) == 30
        assert list(f.attrs["image_shape"]) == [30, 30, 30] and f.attrs["generator"] == "geant4"
        assert 0 <= f.attrs["outside_fraction_mean"] <= f.attrs["outside_fraction_max"] < 0.5
        assert f.attrs["seed"] == 4 and f.attrs["converted_from"] == "points.h5"
        assert "layout" not in f.attrs and "depth_unit" not in f.attrs
        assert f.attrs["particle"] == "gamma" and f.attrs["energy_min_gev"] == 10.0
        images = f.read()
    expect, _ = voxelise_with_loss(open_showers(src).read(), IMAGES)
    np.testing.assert_allclose(images.voxels, expect.voxels, rtol=1e-6)


def test_convert_refuses_showers_outside_the_window_and_keeps_the_old_file(
    tmp_path, monkeypatch, capsys
) -> None:
    pts = np.zeros((3, 2, 4), np.float32)
    pts[:, 0] = [0.0, 0.0, 3.5, 1.0]
    pts[2] = [[120.0, 0.0, 3.5, 5.0], [0.0, 0.0, 3.5, 1.0]]  # 83 % outside the window
    src = tmp_path / "off.h5"
    write_showers(src, PointShowers([20.0, 30.0, 40.0], pts), detector="ild-ecal")
    out = tmp_path / "img.h5"
    out.write_bytes(b"keep me")
    code, _, err = cli_run(monkeypatch, capsys, "convert", src, "--out", out, "--overwrite")
    assert code == 2 and "shower 2 has 83% of its energy outside" in err
    assert len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    # an image file is not a point file
    write_showers(tmp_path / "v.h5", toy_images(2), detector="ild-ecal-30")
    with pytest.raises(ShowerFileError, match="already holds voxels"):
        convert_showers(tmp_path / "v.h5", tmp_path / "again.h5")


def test_image_files_with_a_wrong_grid_or_nan_are_refused(tmp_path) -> None:
    bad = tmp_path / "grid.h5"
    with h5py.File(bad, "w") as h5:
        h5["showers"] = np.zeros((2, 20 * 20 * 30), np.float32)
        h5["incident_energies"] = np.full((2, 1), 5e4)
        h5.attrs["detector"] = "ild-ecal-30"
    with pytest.raises(ShowerFileError, match=r"12000 voxels .*\(30 layers × 30 × 30 cells\)"):
        open_showers(bad)
    nan = tmp_path / "nan.h5"
    images = toy_images(3)
    images.voxels[1, 100] = np.nan
    with h5py.File(nan, "w") as h5:  # a CaloChallenge-layout file without attributes
        h5["showers"], h5["incident_energies"] = images.voxels, images.energy[:, None] * 1000
    with open_showers(nan) as f:
        assert f.detector.name == "ild-ecal-30"  # named by its 27,000 voxels
        with pytest.raises(ShowerFileError, match="shower 1: holds a non-finite value"):
            f.read()


def test_image_distortion_moves_energy_outwards_and_keeps_it() -> None:
    images = toy_images(4, seed=2)
    wider = _distorted(images, IMAGES)
    np.testing.assert_allclose(wider.voxels.sum(axis=1), images.voxels.sum(axis=1), rtol=1e-5)
    r = np.hypot(*np.meshgrid(np.arange(30) - 15, np.arange(30) - 15, indexing="ij")).reshape(-1)
    radius = lambda v: (v.reshape(4, 30, 900) * r).sum(axis=(1, 2)) / v.sum(axis=1)  # noqa: E731
    assert (radius(wider.voxels) > radius(images.voxels)).all()


def test_evaluate_compares_points_and_images_on_the_same_cells(tmp_path) -> None:
    ref = tmp_path / "ref.h5"
    showers = random_points(120, 150, seed=7)
    showers.points[..., :2] *= 2.5  # some energy beyond the window
    write_showers(ref, showers, detector="ild-ecal", generator="geant4")
    convert_showers(ref, tmp_path / "ref_img.h5")
    config = EvaluationConfig(n_draws=2, classifier_splits=2, classifier_epochs=1, plots=False)
    result = evaluate(ref, [tmp_path / "ref_img.h5"], tmp_path / "eval", config)
    assert result["detector"] == "ild-ecal-30"
    assert any("compared on the cells of ild-ecal-30" in n for n in result["notes"])
    # the same showers on the same cells: the same observables
    points, images = (observables_from_file(p, IMAGES) for p in (ref, tmp_path / "ref_img.h5"))
    np.testing.assert_array_equal(points.n_hits, images.n_hits)
    np.testing.assert_allclose(points.cog, images.cog, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(points.e_radial, images.e_radial, rtol=1e-4, atol=1e-4)
    assert (points.lost_mev > 0).any() and not images.lost_mev.any()
    # an image reference gets the image distortion check
    result = evaluate(tmp_path / "ref_img.h5", [ref], tmp_path / "eval2", config)
    check = result["distortion_check"]["auc"]["classifier_auc"]
    assert check["distortion"] == "5 % of the energy one cell further out"
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["detector"] == "ild-ecal-30"


def test_evaluate_refuses_images_on_a_larger_grid(tmp_path) -> None:
    from caloforge.evaluate import EvaluationError
    from caloforge.io import VoxelShowers

    write_showers(tmp_path / "img.h5", toy_images(4), detector="ild-ecal-30")
    big = VoxelShowers([20.0, 30.0], np.zeros((2, ILD.n_channels), np.float32))
    big.voxels[:, 49 * 99 + 49] = 5.0
    write_showers(tmp_path / "big.h5", big, detector="ild-ecal")
    with pytest.raises(EvaluationError, match="only point files are projected onto a window"):
        evaluate(tmp_path / "img.h5", [tmp_path / "big.h5"], tmp_path / "eval", EvaluationConfig(plots=False))
