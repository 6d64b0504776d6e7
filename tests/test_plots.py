"""Plots: every figure builds from data, carries its axis labels and legend, and saves as PNG + PDF."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from caloforge import plots
from caloforge.detector import get_detector
from caloforge.io import PointShowers
from caloforge.metrics import ClassifierResult
from caloforge.observables import ShowerObservables, compute_observables
from conftest import random_points

ILD = get_detector("ild-ecal")


def _obs(seed: int, energies: np.ndarray | None = None, n: int = 300) -> ShowerObservables:
    showers = random_points(n, 40, seed=seed)
    energy = showers.energy if energies is None else energies
    return compute_observables(PointShowers(energy, showers.points), ILD)


@pytest.fixture(scope="module")
def samples() -> tuple[ShowerObservables, dict[str, ShowerObservables]]:
    return _obs(1), {"CaloClouds II": _obs(2), "CM": _obs(3)}


def _labels(fig: Figure) -> tuple[set[str], set[str]]:
    visible = [ax for ax in fig.axes if ax.get_visible()]
    return {ax.get_xlabel() for ax in visible} - {""}, {ax.get_ylabel() for ax in visible} - {""}


def _legend_texts(fig: Figure) -> set[str]:
    return {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}


@pytest.mark.parametrize(
    ("func", "xlabels", "ylabel"),
    [
        (plots.plot_n_hits, {"number of hits N_hits"}, "fraction of showers"),
        (plots.plot_energy_ratio, {"E_vis / E_inc"}, "fraction of showers"),
        (plots.plot_cell_energy, {"cell energy [MeV]"}, "cells per shower"),
        (plots.plot_cog, {"m1 X [mm]", "m1 Y [mm]", "m1 Z [layer]"}, "fraction of showers"),
        (plots.plot_longitudinal_profile, {"layer"}, "mean energy per layer [MeV]"),
        (plots.plot_radial_profile, {"radius [mm]"}, "mean energy per ring [MeV]"),
    ],
)
def test_distribution_figures_have_labels_and_ratio(samples, func, xlabels, ylabel):
    reference, candidates = samples
    fig = func(reference, candidates, reference_label="Geant4")
    assert isinstance(fig, Figure)
    xs, ys = _labels(fig)
    assert xs == xlabels
    assert ylabel in ys and "ratio to ref." in ys  # the ratio panel
    assert {"Geant4", "CaloClouds II", "CM"} <= _legend_texts(fig)


def test_cell_energy_is_log_x(samples):
    reference, candidates = samples
    fig = plots.plot_cell_energy(reference, candidates, threshold_mev=ILD.threshold_mev)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


def test_observable_grids_label_ranges(samples):
    reference, candidates = samples
    fig = plots.plot_e_long_grid(reference, candidates, long_edges=ILD.long_edges)
    xs, _ = _labels(fig)
    assert len(xs) == 10 and "E_long,1 [MeV] (0–8 layers)" in xs
    fig = plots.plot_e_radial_grid(reference, candidates)
    xs, _ = _labels(fig)
    assert xs == {f"E_radial,{i} [MeV]" for i in range(1, 11)}


def test_single_energy_picks_nearest_energies():
    energies = np.repeat([20.0, 60.0], 150)
    reference = _obs(4, energies)
    candidate = _obs(5, energies)
    fig = plots.plot_single_energy(reference, {"model": candidate}, energies_gev=(10, 50, 90))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(" ±")[0] for t in titles] == ["E_inc = 20", "E_inc = 60", "E_inc = 60"]
    assert all("(150 ref. showers)" in t for t in titles)
    xs, _ = _labels(fig)
    assert xs == {"number of hits N_hits", "E_vis [MeV]"}


def test_histogram_with_ratio_survives_empty_and_integer_data():
    fig = plots.histogram_with_ratio(np.arange(20.0), {"empty": np.array([])}, xlabel="N")
    assert fig.axes[1].get_xlabel() == "N"


def test_classifier_score_histograms():
    rng = np.random.default_rng(0)
    res = ClassifierResult(0.6, 0.01, rng.uniform(0, 0.7, 500), rng.uniform(0.3, 1, 500))
    fig = plots.plot_classifier_scores({"CM": res, "CaloClouds II": res})
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "AUC = 0.600 ± 0.010"
    assert fig.axes[0].get_xlabel() == "classifier output (1 = CM)"
    assert {"Geant4", "CM"} <= _legend_texts(fig)


def test_save_figure_writes_png_and_pdf(samples, tmp_path):
    reference, candidates = samples
    png, pdf = plots.save_figure(plots.plot_n_hits(reference, candidates), tmp_path / "n_hits")
    assert (png.name, pdf.name) == ("n_hits.png", "n_hits.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n_hits.pdf", "n_hits.png"]  # no leftovers


def test_distribution_figures_cover_spec4(samples):
    reference, candidates = samples
    figs = plots.distribution_figures(reference, candidates, threshold_mev=ILD.threshold_mev)
    assert set(figs) == {
        "n_hits",
        "energy_ratio",
        "cell_energy",
        "cog",
        "longitudinal_profile",
        "radial_profile",
        "e_long",
        "e_radial",
        "single_energy",
    }
    assert all(isinstance(f, Figure) for f in figs.values())


def test_style_does_not_leak():
    import matplotlib

    before = matplotlib.rcParams["xtick.direction"]
    plots.histogram_with_ratio(np.arange(10.0), {}, xlabel="x")
    assert matplotlib.rcParams["xtick.direction"] == before
