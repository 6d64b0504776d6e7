"""Every evaluation figure (SPEC 4): one function each, data in, ``matplotlib.figure.Figure`` out.

Each distribution is drawn for a reference sample (grey, filled) and one or more named
candidates (coloured lines), with statistical error bands and a ratio panel
(candidate / reference) below. Figures are built with :class:`matplotlib.figure.Figure`
directly — no ``pyplot``, no global backend or style change — so they are safe in
threads and tests; :func:`save_figure` writes PNG and PDF atomically.

matplotlib is an optional dependency (``pip install 'caloforge[plots]'``).

>>> import numpy as np
>>> fig = histogram_with_ratio(np.arange(100.0), {"model": np.arange(100.0) + 3}, xlabel="x [mm]")
>>> [ax.get_xlabel() for ax in fig.axes]
['', 'x [mm]']
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from caloforge.atomic import atomic_output
from caloforge.detector import get_detector
from caloforge.observables import ShowerObservables, radial_profile_edges

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from caloforge.metrics import ClassifierResult

__all__ = [
    "CANDIDATE_COLOURS",
    "PLOT_STYLE",
    "distribution_figures",
    "histogram_with_ratio",
    "plot_cell_energy",
    "plot_classifier_scores",
    "plot_cog",
    "plot_e_long_grid",
    "plot_e_radial_grid",
    "plot_energy_ratio",
    "plot_longitudinal_profile",
    "plot_n_hits",
    "plot_radial_profile",
    "plot_single_energy",
    "save_figure",
]

#: rc settings applied (inside ``matplotlib.rc_context``) while a figure is built.
PLOT_STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.direction": "in",
    "ytick.direction": "in",
    "xtick.top": True,
    "ytick.right": True,
    "xtick.minor.visible": True,
    "ytick.minor.visible": True,
    "savefig.bbox": "tight",
}

#: Line colours of the candidates, in order; the reference is grey.
CANDIDATE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
_REFERENCE_COLOUR = "0.65"
_RATIO_LIMITS = (0.5, 1.5)

_F = TypeVar("_F", bound=Callable[..., Any])


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401  (checks the full install)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'caloforge[plots]'") from exc
    return matplotlib


def _styled(func: _F) -> _F:
    """Build the figure inside ``rc_context(PLOT_STYLE)``: the style applies to it and nothing else."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _matplotlib().rc_context(PLOT_STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _ratio_grid(fig: Figure, n_rows: int, n_cols: int) -> list[tuple[Axes, Axes]]:
    """``n_rows × n_cols`` (main, ratio) axis pairs, the ratio panel below and sharing x."""
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[3, 1] * n_rows, hspace=0.0)
    pairs = []
    for r in range(n_rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[2 * r, c])
            rax = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
            ax.tick_params(which="both", labelbottom=False)
            pairs.append((ax, rax))
    return pairs


def _band(ax: Axes, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray, colour: str, alpha: float) -> None:
    """A statistical band drawn as steps over ``edges``."""
    ax.fill_between(
        edges, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post", color=colour, alpha=alpha, lw=0
    )


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: CANDIDATE_COLOURS[i % len(CANDIDATE_COLOURS)] for i, name in enumerate(names)}


def _draw_ratio(
    rax: Axes,
    edges: np.ndarray,
    ref: np.ndarray,
    ref_err: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colours: Mapping[str, str],
    reference_label: str,
) -> None:
    """Ratio panel: the reference's relative error around 1, each candidate / reference with its error."""
    ok = ref > 0
    safe = np.where(ok, ref, 1.0)
    rel = np.where(ok, ref_err / safe, 0.0)
    _band(rax, edges, 1 - rel, 1 + rel, _REFERENCE_COLOUR, 0.5)
    rax.axhline(1.0, color="0.3", lw=0.8)
    for name, (values, err) in curves.items():
        ratio = np.where(ok, values / safe, np.nan)
        ratio_err = np.where(ok, err / safe, np.nan)
        rax.stairs(ratio, edges, color=colours[name], lw=1.2)
        _band(rax, edges, ratio - ratio_err, ratio + ratio_err, colours[name], 0.25)
    rax.set_ylim(*_RATIO_LIMITS)
    rax.set_ylabel("ratio to ref.", fontsize=8)


def _draw_curves(
    ax: Axes,
    rax: Axes,
    edges: np.ndarray,
    ref: tuple[np.ndarray, np.ndarray],
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    reference_label: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    legend: bool = True,
) -> None:
    """Reference (filled) and candidates (lines) with error bands, plus the ratio panel."""
    colours = _colours(list(curves))
    values, err = ref
    ax.stairs(values, edges, fill=True, color=_REFERENCE_COLOUR, alpha=0.6, label=reference_label)
    _band(ax, edges, values - err, values + err, "0.3", 0.25)
    for name, (v, e) in curves.items():
        ax.stairs(v, edges, color=colours[name], lw=1.4, label=name)
        _band(ax, edges, v - e, v + e, colours[name], 0.25)
    _draw_ratio(rax, edges, values, err, curves, colours, reference_label)
    ax.set_ylabel(ylabel)
    rax.set_xlabel(xlabel)
    if logx:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        # Log axes spanning under two decades label their minor ticks too, which then overlap.
        rax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        ax.set_yscale("log")
        positive = np.concatenate([values[values > 0], *(v[v > 0] for v, _ in curves.values())])
        if len(positive):
            # Error bands reaching down to zero would otherwise stretch the axis over decades.
            ax.set_ylim(bottom=0.3 * float(positive.min()))
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlim(edges[0], edges[-1])
    if legend:
        ax.legend(loc="best")


def _histogram(values: np.ndarray, edges: np.ndarray, norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts per bin divided by ``norm`` and their Poisson errors."""
    counts, _ = np.histogram(values, edges)
    norm = norm if norm > 0 else 1.0
    return counts / norm, np.sqrt(counts) / norm


def _auto_edges(samples: Sequence[np.ndarray], n_bins: int | None = None, log: bool = False) -> np.ndarray:
    """Shared edges covering the central 99.8 % of every sample (so a shifted candidate stays visible).

    ``n_bins`` defaults to 50, fewer for small samples (about 2√n) so that sparse panels
    (e.g. a narrow incident-energy window) are not all spikes; integer data (N_hits) get
    edges between integers.
    """
    finite = [s[np.isfinite(s)] for s in samples if len(s)]
    finite = [s[s > 0] if log else s for s in finite]
    finite = [s for s in finite if len(s)]
    if not finite:
        return np.linspace(0.0, 1.0, (n_bins or 50) + 1)
    if n_bins is None:
        n_bins = int(np.clip(2 * np.sqrt(len(finite[0])), 10, 50))
    lo = min(float(np.quantile(s, 0.001)) for s in finite)
    hi = max(float(np.quantile(s, 0.999)) for s in finite)
    if log:
        lo = max(lo, 1e-12)
        return np.geomspace(lo, max(hi, lo * 10), n_bins + 1)
    if all(np.array_equal(s, np.round(s)) for s in finite):
        width = max(1, int(np.ceil((hi - lo + 1) / n_bins)))
        return np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 0.5 + width, width)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def _draw_histogram(
    ax: Axes,
    rax: Axes,
    reference: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    *,
    xlabel: str,
    reference_label: str,
    edges: np.ndarray | None = None,
    norms: tuple[float, Mapping[str, float]] | None = None,
    ylabel: str = "fraction of showers",
    logx: bool = False,
    logy: bool = False,
    legend: bool = True,
) -> None:
    reference = np.asarray(reference, np.float64)
    cands = {k: np.asarray(v, np.float64) for k, v in candidates.items()}
    if edges is None:
        edges = _auto_edges([reference, *cands.values()], log=logx)
    ref_norm, cand_norms = (
        norms if norms is not None else (len(reference), {k: len(v) for k, v in cands.items()})
    )
    _draw_curves(
        ax,
        rax,
        edges,
        _histogram(reference, edges, ref_norm),
        {k: _histogram(v, edges, cand_norms[k]) for k, v in cands.items()},
        reference_label,
        xlabel,
        ylabel,
        logx=logx,
        logy=logy,
        legend=legend,
    )


@_styled
def histogram_with_ratio(
    reference: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    xlabel: str,
    *,
    reference_label: str = "Geant4",
    edges: np.ndarray | None = None,
    logx: bool = False,
    logy: bool = False,
    ylabel: str = "fraction of showers",
) -> Figure:
    """One normalised histogram of any per-shower quantity, with a ratio panel."""
    fig = _new_figure(4.5, 4.2)
    ((ax, rax),) = _ratio_grid(fig, 1, 1)
    _draw_histogram(
        ax,
        rax,
        reference,
        candidates,
        xlabel=xlabel,
        reference_label=reference_label,
        edges=edges,
        logx=logx,
        logy=logy,
        ylabel=ylabel,
    )
    return fig


def _scalar_figure(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    get: Callable[[ShowerObservables], np.ndarray],
    xlabel: str,
    reference_label: str,
    logy: bool = False,
) -> Figure:
    return histogram_with_ratio(
        get(reference),
        {k: get(v) for k, v in candidates.items()},
        xlabel,
        reference_label=reference_label,
        logy=logy,
    )


def plot_n_hits(
    reference: ShowerObservables, candidates: Mapping[str, ShowerObservables], reference_label: str = "Geant4"
) -> Figure:
    """Distribution of the number of cells above threshold per shower."""
    return _scalar_figure(reference, candidates, lambda o: o.n_hits, "number of hits N_hits", reference_label)


def plot_energy_ratio(
    reference: ShowerObservables, candidates: Mapping[str, ShowerObservables], reference_label: str = "Geant4"
) -> Figure:
    """Distribution of the visible over the incident energy (sampling fraction)."""
    return _scalar_figure(reference, candidates, lambda o: o.e_ratio, "E_vis / E_inc", reference_label)


@_styled
def plot_cell_energy(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    threshold_mev: float | None = None,
) -> Figure:
    """Spectrum of the cell energies (log x), as cells per shower and bin; ``threshold_mev`` is marked."""
    fig = _new_figure(4.5, 4.2)
    ((ax, rax),) = _ratio_grid(fig, 1, 1)
    _draw_histogram(
        ax,
        rax,
        reference.cell_energy,
        {k: v.cell_energy for k, v in candidates.items()},
        xlabel="cell energy [MeV]",
        reference_label=reference_label,
        norms=(len(reference), {k: len(v) for k, v in candidates.items()}),
        ylabel="cells per shower",
        logx=True,
        logy=True,
    )
    if threshold_mev is not None:
        ax.axvline(threshold_mev, color="0.3", ls=":", lw=1.0, label="threshold")
        rax.axvline(threshold_mev, color="0.3", ls=":", lw=1.0)
    return fig


@_styled
def plot_cog(
    reference: ShowerObservables, candidates: Mapping[str, ShowerObservables], reference_label: str = "Geant4"
) -> Figure:
    """Centre of gravity m1 in X, Y (transverse, mm) and Z (depth, layer), three panels."""
    fig = _new_figure(12.0, 4.2)
    labels = ("m1 X [mm]", "m1 Y [mm]", "m1 Z [layer]")
    for i, (ax, rax) in enumerate(_ratio_grid(fig, 1, 3)):
        _draw_histogram(
            ax,
            rax,
            reference.cog[:, i],
            {k: v.cog[:, i] for k, v in candidates.items()},
            xlabel=labels[i],
            reference_label=reference_label,
            legend=i == 0,
        )
    return fig


def _profile(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over showers per bin and its standard error."""
    matrix = np.asarray(matrix, np.float64)
    n = max(len(matrix), 1)
    std = matrix.std(axis=0) if len(matrix) > 1 else np.zeros(matrix.shape[1])
    return matrix.mean(axis=0) if len(matrix) else np.zeros(matrix.shape[1]), std / np.sqrt(n)


@_styled
def plot_longitudinal_profile(
    reference: ShowerObservables, candidates: Mapping[str, ShowerObservables], reference_label: str = "Geant4"
) -> Figure:
    """Mean energy per layer (log y) against the layer index."""
    fig = _new_figure(4.5, 4.2)
    ((ax, rax),) = _ratio_grid(fig, 1, 1)
    edges = np.arange(reference.e_layer.shape[1] + 1) - 0.5
    _draw_curves(
        ax,
        rax,
        edges,
        _profile(reference.e_layer),
        {k: _profile(v.e_layer) for k, v in candidates.items()},
        reference_label,
        "layer",
        "mean energy per layer [MeV]",
        logy=True,
    )
    return fig


@_styled
def plot_radial_profile(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    max_radius_mm: float | None = None,
    edges_mm: Sequence[float] | None = None,
) -> Figure:
    """Mean energy per ring around the shower axis (log y).

    ``edges_mm`` are the rings of ``ShowerObservables.radial_profile``
    (:func:`caloforge.observables.radial_profile_edges`; default: those of ``ild-ecal``).
    The x range ends at ``max_radius_mm`` (default: the outermost ring where the reference
    has energy).
    """
    all_edges = np.asarray(
        radial_profile_edges(get_detector("ild-ecal")) if edges_mm is None else edges_mm, np.float64
    )
    fig = _new_figure(4.5, 4.2)
    ((ax, rax),) = _ratio_grid(fig, 1, 1)
    ref = _profile(reference.radial_profile)
    n_bins = reference.radial_profile.shape[1]
    if max_radius_mm is None:
        filled = np.flatnonzero(ref[0] > 0)
        last = int(filled[-1]) + 1 if len(filled) else n_bins
    else:
        last = min(n_bins, max(1, int(np.searchsorted(all_edges, max_radius_mm))))
    edges = all_edges[: last + 1]
    _draw_curves(
        ax,
        rax,
        edges,
        (ref[0][:last], ref[1][:last]),
        {k: tuple(p[:last] for p in _profile(v.radial_profile)) for k, v in candidates.items()},
        reference_label,
        "radius [mm]",
        "mean energy per ring [MeV]",
        logy=True,
    )
    return fig


def _observable_grid(
    reference: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    labels: Sequence[str],
    reference_label: str,
    n_cols: int = 5,
) -> Figure:
    n = reference.shape[1]
    n_rows = int(np.ceil(n / n_cols))
    fig = _new_figure(3.0 * n_cols, 3.4 * n_rows)
    pairs = _ratio_grid(fig, n_rows, n_cols)
    for i, (ax, rax) in enumerate(pairs):
        if i >= n:
            ax.set_visible(False)
            rax.set_visible(False)
            continue
        _draw_histogram(
            ax,
            rax,
            reference[:, i],
            {k: v[:, i] for k, v in candidates.items()},
            xlabel=labels[i],
            reference_label=reference_label,
            legend=i == 0,
        )
    return fig


def _range_labels(name: str, edges: Sequence[float] | None, n: int, unit: str) -> list[str]:
    if edges is None or len(edges) != n + 1:
        return [f"{name},{i + 1} [MeV]" for i in range(n)]
    return [f"{name},{i + 1} [MeV] ({edges[i]:g}–{edges[i + 1]:g}{unit})" for i in range(n)]


@_styled
def plot_e_long_grid(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    long_edges: Sequence[int] | None = None,
) -> Figure:
    """Distributions of the E_long,i observables (energy in layer groups), one panel each.

    ``long_edges`` (e.g. ``detector.long_edges``) adds each group's layer range to its label.
    """
    labels = _range_labels("E_long", long_edges, reference.e_long.shape[1], " layers")
    return _observable_grid(
        reference.e_long, {k: v.e_long for k, v in candidates.items()}, labels, reference_label
    )


@_styled
def plot_e_radial_grid(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    radial_edges_mm: Sequence[float] | None = None,
) -> Figure:
    """Distributions of the E_radial,i observables (energy in rings), one panel each.

    ``radial_edges_mm`` (e.g. ``detector.radial_edges_mm``) adds each ring's radii to its label.
    """
    labels = _range_labels("E_radial", radial_edges_mm, reference.e_radial.shape[1], " mm")
    return _observable_grid(
        reference.e_radial, {k: v.e_radial for k, v in candidates.items()}, labels, reference_label
    )


def _energy_window(energy: np.ndarray, target: float, half_width: float) -> tuple[float, np.ndarray]:
    """The incident energy present nearest to ``target``; the mask of showers within ``half_width`` of it."""
    centre = float(energy[np.argmin(np.abs(energy - target))])
    return centre, np.abs(energy - centre) <= half_width


@_styled
def plot_single_energy(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    energies_gev: Sequence[float] = (10.0, 50.0, 90.0),
    half_width_gev: float = 2.0,
) -> Figure:
    """N_hits (top) and E_vis (bottom) for showers near fixed incident energies, one column each.

    For each of ``energies_gev`` the nearest incident energy present in the reference is
    taken, and every sample keeps its showers within ± ``half_width_gev`` of it (so a
    sample made at discrete energies is matched exactly, a continuous one in a window).
    """
    if len(reference) == 0:
        raise ValueError("the reference sample is empty")
    n_cols = len(energies_gev)
    fig = _new_figure(4.0 * n_cols, 7.6)
    pairs = _ratio_grid(fig, 2, n_cols)
    for j, target in enumerate(energies_gev):
        centre, ref_mask = _energy_window(reference.energy, target, half_width_gev)
        cand_masks = {k: np.abs(v.energy - centre) <= half_width_gev for k, v in candidates.items()}
        title = f"E_inc = {centre:.3g} ± {half_width_gev:g} GeV ({int(ref_mask.sum())} ref. showers)"
        for row, (get, xlabel) in enumerate(
            ((lambda o: o.n_hits, "number of hits N_hits"), (lambda o: o.e_vis, "E_vis [MeV]"))
        ):
            ax, rax = pairs[row * n_cols + j]
            _draw_histogram(
                ax,
                rax,
                get(reference)[ref_mask],
                {k: get(v)[cand_masks[k]] for k, v in candidates.items() if cand_masks[k].any()},
                xlabel=xlabel,
                reference_label=reference_label,
                legend=row == 0 and j == 0,
            )
            if row == 0:
                ax.set_title(title, fontsize=9)
    return fig


@_styled
def plot_classifier_scores(
    results: ClassifierResult | Mapping[str, ClassifierResult],
    reference_label: str = "Geant4",
    n_bins: int = 40,
) -> Figure:
    """Histograms of the test-fold classifier outputs for the reference and each candidate.

    ``results`` maps candidate names to :class:`~caloforge.metrics.ClassifierResult` (or is
    one result, labelled "candidate"); one panel per candidate, its AUC in the title.
    """
    if not isinstance(results, Mapping):
        results = {"candidate": results}
    fig = _new_figure(4.2 * max(len(results), 1), 3.6)
    axes = [fig.add_subplot(1, max(len(results), 1), i + 1) for i in range(max(len(results), 1))]
    colours = _colours(list(results))
    for ax, (name, res) in zip(axes, results.items(), strict=False):
        # A good generator leaves every score near 0.5: bin the range the scores cover, not [0, 1].
        edges = _auto_edges([np.asarray(res.scores_a), np.asarray(res.scores_b)], n_bins)
        for scores, label, colour, fill in (
            (res.scores_a, reference_label, _REFERENCE_COLOUR, True),
            (res.scores_b, name, colours[name], False),
        ):
            counts, _ = np.histogram(scores, edges)
            ax.stairs(counts / max(len(scores), 1), edges, fill=fill, color=colour, lw=1.4, label=label)
        ax.set_xlabel(f"classifier output (1 = {name})")
        ax.set_ylabel("fraction of showers")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"AUC = {res.auc:.3f} ± {res.auc_std:.3f}", fontsize=9)
        ax.legend(loc="best")
    return fig


def distribution_figures(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    *,
    threshold_mev: float | None = None,
    long_edges: Sequence[int] | None = None,
    radial_edges_mm: Sequence[float] | None = None,
    profile_edges_mm: Sequence[float] | None = None,
    energies_gev: Sequence[float] = (10.0, 50.0, 90.0),
) -> dict[str, Figure]:
    """Every SPEC 4 figure, keyed by a file-name stem (``n_hits``, ``cell_energy``, …)."""
    return {
        "n_hits": plot_n_hits(reference, candidates, reference_label),
        "energy_ratio": plot_energy_ratio(reference, candidates, reference_label),
        "cell_energy": plot_cell_energy(reference, candidates, reference_label, threshold_mev),
        "cog": plot_cog(reference, candidates, reference_label),
        "longitudinal_profile": plot_longitudinal_profile(reference, candidates, reference_label),
        "radial_profile": plot_radial_profile(
            reference, candidates, reference_label, edges_mm=profile_edges_mm
        ),
        "e_long": plot_e_long_grid(reference, candidates, reference_label, long_edges),
        "e_radial": plot_e_radial_grid(reference, candidates, reference_label, radial_edges_mm),
        "single_energy": plot_single_energy(reference, candidates, reference_label, energies_gev),
    }


def save_figure(fig: Figure, path_without_suffix: str | Path, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.pdf``, each atomically; returns both paths."""
    base = Path(path_without_suffix)
    written = []
    for suffix in (".png", ".pdf"):
        target = base.with_name(base.name + suffix)
        with atomic_output(target) as tmp:
            # The temporary name has no image suffix, so the format is given explicitly.
            fig.savefig(tmp, format=suffix[1:], dpi=dpi)
        written.append(target)
    return written[0], written[1]
