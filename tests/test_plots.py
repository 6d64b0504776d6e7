"""Plots: every figure builds from data, carries its axis labels and legend, and saves as PNG + PDF."""

from pathlib import Path

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


def test_per_layer_figures(samples):
    reference, candidates = samples
    fig = plots.plot_layer_radial_profile(reference, candidates)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "layers 0–4" and titles[-1] == "layers 25–29" and len(titles) == 6
    fig = plots.plot_layer_occupancy(reference, candidates)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["ring 0: 0–5.09 mm", "ring 1: 5.09–10.2 mm"] and len(titles) == 4
    assert fig.axes[1].get_xlabel() == "layer" and "hit cells per shower" in fig.axes[0].get_ylabel()


def test_per_layer_observables_add_up(samples):
    reference, _ = samples
    np.testing.assert_allclose(reference.layer_ring_energy.sum(2), reference.e_layer, rtol=1e-4)
    np.testing.assert_array_equal(reference.layer_ring_hits.sum(2), reference.hits_layer)


def test_classifier_weight_histograms():
    rng = np.random.default_rng(0)
    res = ClassifierResult(0.6, 0.01, rng.uniform(0.3, 0.6, 500), rng.uniform(0.45, 0.99, 500))
    fig = plots.plot_classifier_weights({"CM": {"classifier_auc": res, "low_level_auc": res}})
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    share = np.mean(((1 - res.scores_b) / res.scores_b < 0.5) | ((1 - res.scores_b) / res.scores_b > 2))
    assert fig.axes[1].get_title() == f"CM: {share:.0%} outside [0.5, 2]"
    assert "low-level classifier" in fig.axes[1].get_xlabel()
    assert {"Geant4", "CM"} <= _legend_texts(fig)


def test_save_figure_writes_png_and_pdf(samples, tmp_path):
    reference, candidates = samples
    png, pdf = plots.save_figure(plots.plot_n_hits(reference, candidates), tmp_path / "n_hits")
    assert (png.name, pdf.name) == ("n_hits.png", "n_hits.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n_hits.pdf", "n_hits.png"]  # no leftovers


#: The figures of :func:`caloforge.plots.distribution_figures` (SPEC 4).
SHOWER_FIGURES = (
    "n_hits",
    "energy_ratio",
    "cell_energy",
    "cog",
    "longitudinal_profile",
    "radial_profile",
    "layer_radial_profile",
    "layer_occupancy",
    "e_long",
    "e_radial",
    "single_energy",
)


def test_distribution_figures_cover_spec4(samples):
    reference, candidates = samples
    figs = plots.distribution_figures(reference, candidates, threshold_mev=ILD.threshold_mev)
    assert set(figs) == set(SHOWER_FIGURES)
    assert all(isinstance(f, Figure) for f in figs.values())


def test_style_does_not_leak():
    import matplotlib

    before = matplotlib.rcParams["xtick.direction"]
    plots.histogram_with_ratio(np.arange(10.0), {}, xlabel="x")
    assert matplotlib.rcParams["xtick.direction"] == before


# Bins follow the sample size, the reference is an outline, at most a few candidates per panel


@pytest.mark.parametrize(
    ("n", "bins"),
    [(0, 10), (50, 10), (150, 11), (200, 12), (1_000, 20), (10_000, 43), (100_000, 50), (10**8, 50)],
)
def test_histogram_bins_follow_the_sample_size(n, bins):
    assert plots.histogram_bins(n) == bins
    assert plots.histogram_bins(n, minimum=5, maximum=200) == max(5, min(200, round(2 * n ** (1 / 3))))


@pytest.mark.parametrize(("n_small", "max_bins"), [(100, 10), (200, 12), (5_000, 34)])
def test_edges_are_set_by_the_smallest_sample(n_small, max_bins):
    rng = np.random.default_rng(0)
    edges = plots.shared_edges([rng.normal(size=n_small), rng.normal(size=20_000)])
    assert len(edges) - 1 == max_bins
    log_edges = plots.shared_edges([rng.exponential(size=n_small), rng.exponential(size=20_000)], log=True)
    assert len(log_edges) - 1 == max_bins and np.allclose(
        np.diff(np.log(log_edges)), np.log(log_edges[1] / log_edges[0])
    )


def _step_patches(ax):
    from matplotlib.patches import StepPatch

    return [p for p in ax.patches if isinstance(p, StepPatch)]


def test_reference_is_an_outline_on_top_and_candidates_are_lines():
    from matplotlib.colors import to_rgb

    rng = np.random.default_rng(1)
    fig = plots.histogram_with_ratio(rng.normal(size=150), {"a": rng.normal(size=150)}, xlabel="x")
    ax = fig.axes[0]
    steps = _step_patches(ax)
    assert steps and not any(p.get_fill() for p in steps)  # no filled histograms to bury anything
    ref = max(steps, key=lambda p: p.get_zorder())
    assert sum(to_rgb(ref.get_edgecolor())) < 0.6  # dark grey / black, drawn above the candidates
    assert len(ref.get_data().values) == 11  # 150 showers: 11 bins, not 28
    assert ax.collections and fig.axes[1].collections  # reference band; ratio panel band around 1


@pytest.mark.parametrize("n", [0, 1, 4, 5, 7, 9])
def test_split_candidates_keeps_every_candidate_in_small_groups(n):
    cands = {f"m{i}": i for i in range(n)}
    groups = plots.split_candidates(cands)
    assert [k for g in groups for k in g] == list(cands)
    assert all(len(g) <= plots.MAX_CANDIDATES_PER_PANEL for g in groups)
    assert len(groups) == max(1, -(-n // plots.MAX_CANDIDATES_PER_PANEL))


def _legends(fig: Figure) -> list[list[str]]:
    return [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_legend()]


@pytest.mark.parametrize("n", [3, 4, 5, 9])
def test_more_candidates_than_a_panel_shows_are_split_over_panels(n):
    rng = np.random.default_rng(2)
    cands = {f"model {i}": rng.normal(0.1 * i, 1, 300) for i in range(n)}
    fig = plots.histogram_with_ratio(rng.normal(size=300), cands, xlabel="x")
    legends = _legends(fig)
    assert len(legends) == max(1, -(-n // plots.MAX_CANDIDATES_PER_PANEL))
    assert all(leg[0] == "Geant4" and len(leg) - 1 <= plots.MAX_CANDIDATES_PER_PANEL for leg in legends)
    assert sorted(name for leg in legends for name in leg[1:]) == sorted(cands)


def test_distribution_figures_split_into_numbered_figures(samples):
    reference, candidates = samples
    many = {f"model {i}": candidates["CM"] for i in range(5)}
    figs = plots.distribution_figures(reference, many, threshold_mev=ILD.threshold_mev)
    names = SHOWER_FIGURES
    assert set(figs) == {f"{name}_{k}" for name in names for k in (1, 2)}
    for name in names:
        shown = [set(_legend_texts(figs[f"{name}_{k}"])) - {"Geant4"} for k in (1, 2)]
        assert all(0 < len(s) <= plots.MAX_CANDIDATES_PER_PANEL for s in shown)
        assert shown[0] | shown[1] == set(many) and not shown[0] & shown[1]


def test_plot_classifier_scores_wraps_many_candidates_into_rows():
    rng = np.random.default_rng(0)
    res = ClassifierResult(0.6, 0.01, rng.uniform(0, 0.7, 500), rng.uniform(0.3, 1, 500))
    fig = plots.plot_classifier_scores({f"m{i}": res for i in range(6)})
    assert len(fig.axes) == 6
    assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 2  # two rows of at most four


# Captions and the readout's noun

DS2 = get_detector("calochallenge-ds2")


@pytest.fixture(scope="module")
def voxel_samples() -> tuple[ShowerObservables, dict[str, ShowerObservables]]:
    from caloforge.projection import voxelise

    def obs(seed: int) -> ShowerObservables:
        return compute_observables(voxelise(random_points(150, 40, seed=seed, n_layers=45), DS2), DS2)

    return obs(1), {"CaloDREAM": obs(2)}


def _written_names() -> dict[str, list[str]]:
    """Every figure name the evaluations write, per kind of sample."""
    from caloforge.evaluate.jets import FIGURES

    showers = [*SHOWER_FIGURES, "classifier_scores", "classifier_weights"]
    return {"points": showers, "voxels": showers, "jets": list(FIGURES)}


GENERIC = plots.figure_caption("no_such_figure")


@pytest.mark.parametrize(
    ("kind", "name"), [(kind, name) for kind, names in _written_names().items() for name in names]
)
def test_every_written_figure_has_its_own_caption(kind, name):
    noun = "voxel" if kind == "voxels" else "cell"
    caption = plots.figure_caption(name, noun)
    assert caption != GENERIC and "no_such_figure" not in caption
    assert caption.endswith(".") and caption.count(". ") == 0  # one sentence
    if kind == "voxels":
        assert "cell" not in caption
    if name in ("n_hits", "cell_energy", "single_energy"):
        assert noun in caption
    if kind != "jets" and not name.startswith("classifier_"):
        assert "ratio" not in caption or "candidate / reference" in caption
    split = plots.figure_caption(f"{name}_2", noun)
    assert split.startswith(caption[:-1]) and split.endswith("(candidates, part 2).")


def test_caption_names_cover_distribution_figures(samples):
    reference, candidates = samples
    figs = plots.distribution_figures(reference, candidates, threshold_mev=ILD.threshold_mev)
    assert set(figs) | {"classifier_scores", "classifier_weights"} == set(_written_names()["points"])


def test_unknown_figure_gets_a_generic_caption():
    assert GENERIC.startswith("Figure 'no_such_figure': the reference")
    assert plots.figure_caption("tau21") != plots.figure_caption("tau21_x")


def test_voxel_readout_says_voxel(voxel_samples):
    from caloforge.evaluate.showers import _cell_noun

    assert _cell_noun(DS2) == "voxel"
    assert _cell_noun(ILD) == _cell_noun(get_detector("ild-ecal-30")) == "cell"
    reference, candidates = voxel_samples
    fig = plots.plot_cell_energy(reference, candidates, threshold_mev=DS2.threshold_mev, cell_noun="voxel")
    xs, ys = _labels(fig)
    assert xs == {"voxel energy [MeV]"} and "voxels per shower" in ys
    assert "voxel" in plots.figure_caption("cell_energy", _cell_noun(DS2))


def test_jet_figures_and_captions_share_names(tmp_path, monkeypatch):
    from caloforge.evaluate import jets as ej

    def quick_save(fig, base):  # the figures are built; writing 16 PNGs and PDFs is not the point
        png = Path(base).with_suffix(".png")
        png.write_bytes(b"")
        return png, png.with_suffix(".pdf")

    monkeypatch.setattr(plots, "save_figure", quick_save)

    rng = np.random.default_rng(3)

    def obs() -> dict[str, np.ndarray]:
        n = 120
        return {
            "mass": rng.uniform(0, 0.3, n),
            "ptrel": rng.exponential(0.05, 30 * n),
            "etarel": rng.normal(0, 0.1, 30 * n),
            "phirel": rng.normal(0, 0.1, 30 * n),
            "tau21": rng.uniform(0, 1, n),
            "tau32": rng.uniform(0, 1, n),
            "multiplicity": rng.integers(10, 30, n).astype(float),
            "efps": rng.exponential(1e-3, (n, 5)),
        }

    figures = ej._write_plots(tmp_path, obs(), {f"gen {i}": obs() for i in range(5)}, None)
    assert set(figures) == {f"{name}_{k}" for name in ej.FIGURES for k in (1, 2)}
    captions = ej._figure_captions(figures)
    assert set(captions) == set(figures) and GENERIC not in captions.values()
