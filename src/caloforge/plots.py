"""Every evaluation figure (SPEC 4): one function each, data in, ``matplotlib.figure.Figure`` out.

Each distribution is drawn for a reference sample (a dark step line over a grey band, its
statistical uncertainty) and one or more named candidates (coloured step lines with error
bars), with a ratio panel (candidate / reference, the reference's relative uncertainty as a
grey band around 1) below. At most :data:`MAX_CANDIDATES_PER_PANEL` candidates share a
panel: with more, a figure gets one group of panels per :func:`split_candidates` group, and
:func:`distribution_figures` one figure per group (``n_hits_1``, ``n_hits_2``, …). Histogram
bins follow the sample size (:func:`histogram_bins`). :func:`figure_caption` says in one
sentence what each figure shows. Figures are built with :class:`matplotlib.figure.Figure`
directly — no ``pyplot``, no global backend or style change — so they are safe in threads
and tests; :func:`save_figure` writes PNG and PDF atomically.

matplotlib is an optional dependency (``pip install 'caloforge[plots]'``).

>>> import numpy as np
>>> fig = histogram_with_ratio(np.arange(100.0), {"model": np.arange(100.0) + 3}, xlabel="x [mm]")
>>> [ax.get_xlabel() for ax in fig.axes]
['', 'x [mm]']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from caloforge.atomic import atomic_output
from caloforge.detector import get_detector
from caloforge.observables import ShowerObservables, radial_profile_edges

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    from caloforge.metrics import ClassifierResult

__all__ = [
    "CANDIDATE_COLOURS",
    "MAX_CANDIDATES_PER_PANEL",
    "PLOT_STYLE",
    "candidate_colours",
    "distribution_figures",
    "figure_caption",
    "histogram_bins",
    "histogram_with_ratio",
    "plot_cell_energy",
    "plot_classifier_scores",
    "plot_classifier_weights",
    "plot_cog",
    "plot_e_long_grid",
    "plot_e_radial_grid",
    "plot_energy_ratio",
    "plot_layer_occupancy",
    "plot_layer_radial_profile",
    "plot_longitudinal_profile",
    "plot_n_hits",
    "plot_radial_profile",
    "plot_single_energy",
    "save_figure",
    "shared_edges",
    "split_candidates",
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

#: Line colours of the candidates, in order; the reference is a near-black line.
CANDIDATE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
#: At most this many candidates share a panel (more would hide each other and the reference).
MAX_CANDIDATES_PER_PANEL = 4
_REFERENCE_COLOUR = "0.1"  # the reference's step line
_REFERENCE_BAND = "0.72"  # its statistical uncertainty
_RATIO_LIMITS = (0.5, 1.5)
_MIN_BINS, _MAX_BINS = 10, 50

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


def histogram_bins(n_entries: int, minimum: int = _MIN_BINS, maximum: int = _MAX_BINS) -> int:
    """Number of bins for a histogram of ``n_entries`` values: the Rice rule 2·n^(1/3), clamped.

    The Rice rule grows like the Freedman–Diaconis rule (bin width ∝ n^(-1/3)) but needs only
    the sample size, so it also sets the count of fixed physical edges (log cell energies).
    Given the smallest sample drawn, a few hundred showers get 10–15 bins, each holding
    enough entries for a readable ratio; ``minimum`` and ``maximum`` clamp it.

    >>> [histogram_bins(n) for n in (0, 100, 200, 1_000, 10_000, 1_000_000)]
    [10, 10, 12, 20, 43, 50]
    """
    rule = round(2.0 * max(int(n_entries), 0) ** (1.0 / 3.0))
    return int(min(max(rule, minimum), maximum))


def split_candidates(
    candidates: Mapping[str, _T], per_panel: int = MAX_CANDIDATES_PER_PANEL
) -> list[dict[str, _T]]:
    """``candidates`` in order, split into as few groups of at most ``per_panel`` as needed,
    their sizes as even as possible; no candidates give one empty group (the reference alone).

    >>> [list(g) for g in split_candidates(dict.fromkeys("abcde"))]
    [['a', 'b', 'c'], ['d', 'e']]
    """
    names = list(candidates)
    n_groups = max(1, -(-len(names) // max(per_panel, 1)))
    return [
        {k: candidates[k] for k in part} for part in np.array_split(np.array(names, dtype=object), n_groups)
    ]


def candidate_colours(names: Sequence[str]) -> dict[str, str]:
    """Line colour of each candidate (:data:`CANDIDATE_COLOURS` in order), for figures that show
    the candidates in groups but should keep each one's colour."""
    return {name: CANDIDATE_COLOURS[i % len(CANDIDATE_COLOURS)] for i, name in enumerate(names)}


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


#: ``draw(panel, candidates, colours)``: draws one group of candidates into a figure or subfigure.
_Draw = Callable[["Figure | SubFigure", Mapping[str, Any], Mapping[str, str]], None]


def _grouped_figure(
    draw: _Draw,
    candidates: Mapping[str, Any],
    size: tuple[float, float],
    colours: Mapping[str, str] | None = None,
    side_by_side: bool = True,
) -> Figure:
    """One figure drawn by ``draw``; with more than :data:`MAX_CANDIDATES_PER_PANEL` candidates,
    one subfigure per group (side by side, or stacked), each with the reference, so that every
    candidate appears and none shares a panel with more than the maximum."""
    colours = dict(colours) if colours is not None else candidate_colours(list(candidates))
    groups = split_candidates(candidates)
    width, height = size
    if len(groups) == 1:
        fig = _new_figure(width, height)
        draw(fig, groups[0], colours)
        return fig
    n = len(groups)
    fig = _new_figure(width * n, height) if side_by_side else _new_figure(width, height * n)
    subfigs = np.ravel(fig.subfigures(1, n) if side_by_side else fig.subfigures(n, 1))
    first = 1
    for sub, group in zip(subfigs, groups, strict=True):
        draw(sub, group, colours)
        sub.suptitle(f"candidates {first}–{first + len(group) - 1} of {len(candidates)}", fontsize=9)
        first += len(group)
    return fig


def _ratio_grid(
    fig: Figure | SubFigure, n_rows: int, n_cols: int, n_used: int | None = None
) -> list[tuple[Axes, Axes]]:
    """``n_rows × n_cols`` (main, ratio) axis pairs, the ratio panel below and sharing x; with
    ``n_used`` only the first ``n_used`` pairs are returned and the rest of the grid is hidden."""
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[3, 1] * n_rows, hspace=0.0)
    pairs = []
    for r in range(n_rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[2 * r, c])
            rax = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
            ax.tick_params(which="both", labelbottom=False)
            pairs.append((ax, rax))
    n_used = len(pairs) if n_used is None else n_used
    for ax, rax in pairs[n_used:]:
        ax.set_visible(False)
        rax.set_visible(False)
    return pairs[:n_used]


def _band(
    ax: Axes, edges: np.ndarray, lo: np.ndarray, hi: np.ndarray, colour: str, alpha: float, zorder: float = 1
) -> Any:
    """A statistical band drawn as steps over ``edges``."""
    return ax.fill_between(
        edges,
        np.append(lo, lo[-1]),
        np.append(hi, hi[-1]),
        step="post",
        color=colour,
        alpha=alpha,
        lw=0,
        zorder=zorder,
    )


def _dodged(edges: np.ndarray, slot: int, n_slots: int, log: bool) -> np.ndarray:
    """x of the error bars of candidate ``slot`` of ``n_slots``: near the bin centres, spread
    so that the bars of several candidates do not cover each other."""
    frac = 0.5 + (slot - (n_slots - 1) / 2) * 0.12
    lo, hi = edges[:-1], edges[1:]
    if log and lo.min() > 0:
        return lo * (hi / lo) ** frac
    return lo + frac * (hi - lo)


def _draw_reference(ax: Axes, edges: np.ndarray, values: np.ndarray, err: np.ndarray) -> tuple[Any, Any]:
    """The reference: a dark step line on top of everything, over a grey band of its uncertainty."""
    band = _band(ax, edges, values - err, values + err, _REFERENCE_BAND, 0.7, zorder=1)
    line = ax.stairs(values, edges, color=_REFERENCE_COLOUR, lw=1.6, zorder=4)
    return band, line


def _draw_candidate(
    ax: Axes, edges: np.ndarray, values: np.ndarray, err: np.ndarray, colour: str, x: np.ndarray
) -> tuple[Any, Any]:
    """A candidate: a coloured step line and error bars (at ``x``), no fill."""
    line = ax.stairs(values, edges, color=colour, lw=1.3, zorder=3)
    bars = ax.errorbar(x, values, yerr=err, fmt="none", ecolor=colour, elinewidth=1.0, capsize=0, zorder=3)
    return line, bars


def _draw_ratio(
    rax: Axes,
    edges: np.ndarray,
    ref: np.ndarray,
    ref_err: np.ndarray,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colours: Mapping[str, str],
    log: bool = False,
) -> None:
    """Ratio panel: the reference's relative error around 1, each candidate / reference with its error."""
    ok = ref > 0
    safe = np.where(ok, ref, 1.0)
    rel = np.where(ok, ref_err / safe, 0.0)
    _band(rax, edges, 1 - rel, 1 + rel, _REFERENCE_BAND, 0.7)
    rax.axhline(1.0, color=_REFERENCE_COLOUR, lw=1.0, zorder=2)
    for slot, (name, (values, err)) in enumerate(curves.items()):
        ratio = np.where(ok, values / safe, np.nan)
        ratio_err = np.where(ok, err / safe, np.nan)
        _draw_candidate(rax, edges, ratio, ratio_err, colours[name], _dodged(edges, slot, len(curves), log))
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
    colours: Mapping[str, str] | None = None,
    logx: bool = False,
    logy: bool = False,
    legend: bool = True,
) -> None:
    """Reference (dark line, grey band) and candidates (coloured lines, error bars), plus the ratio panel."""
    colours = candidate_colours(list(curves)) if colours is None else colours
    values, err = ref
    handles: list[Any] = [_draw_reference(ax, edges, values, err)]
    for slot, (name, (v, e)) in enumerate(curves.items()):
        handles.append(
            _draw_candidate(ax, edges, v, e, colours[name], _dodged(edges, slot, len(curves), logx))
        )
    _draw_ratio(rax, edges, values, err, curves, colours, log=logx)
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
        ax.legend(handles, [reference_label, *curves], loc="best")


def _histogram(values: np.ndarray, edges: np.ndarray, norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts per bin divided by ``norm`` and their Poisson errors."""
    counts, _ = np.histogram(values, edges)
    norm = norm if norm > 0 else 1.0
    return counts / norm, np.sqrt(counts) / norm


def shared_edges(samples: Sequence[np.ndarray], log: bool = False, n_bins: int | None = None) -> np.ndarray:
    """Bin edges shared by all ``samples``, covering the central 99.8 % of every one (so a shifted
    candidate stays visible); log-spaced over the positive values with ``log``.

    ``n_bins`` defaults to :func:`histogram_bins` of the smallest non-empty sample (every
    sample drawn gets bins it can fill); integer data (N_hits) get edges between integers.

    >>> len(shared_edges([np.linspace(0.0, 1.0, 150), np.linspace(0.0, 1.0, 5000)])) - 1
    11
    """
    arrays = [np.asarray(s, np.float64) for s in samples]
    finite = [s[np.isfinite(s)] for s in arrays if len(s)]
    finite = [s[s > 0] if log else s for s in finite]
    finite = [s for s in finite if len(s)]
    if n_bins is None:
        n_bins = histogram_bins(min((len(s) for s in finite), default=0))
    if not finite:
        return np.linspace(0.0, 1.0, n_bins + 1)
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
    colours: Mapping[str, str] | None = None,
    logx: bool = False,
    logy: bool = False,
    legend: bool = True,
) -> None:
    reference = np.asarray(reference, np.float64)
    cands = {k: np.asarray(v, np.float64) for k, v in candidates.items()}
    if edges is None:
        edges = shared_edges([reference, *cands.values()], log=logx)
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
        colours=colours,
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
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """One normalised histogram of any per-shower quantity, with a ratio panel.

    ``edges`` default to :func:`shared_edges` over every sample (the same bins in every panel
    when the candidates are split over several); ``colours`` (name -> colour) keeps a
    candidate's colour across figures (default: :func:`candidate_colours`).
    """
    reference = np.asarray(reference, np.float64)
    cands = {k: np.asarray(v, np.float64) for k, v in candidates.items()}
    if edges is None:
        edges = shared_edges([reference, *cands.values()], log=logx)

    def draw(panel: Figure | SubFigure, group: Mapping[str, np.ndarray], cols: Mapping[str, str]) -> None:
        ((ax, rax),) = _ratio_grid(panel, 1, 1)
        _draw_histogram(
            ax,
            rax,
            reference,
            group,
            xlabel=xlabel,
            reference_label=reference_label,
            edges=edges,
            logx=logx,
            logy=logy,
            ylabel=ylabel,
            colours=cols,
        )

    return _grouped_figure(draw, cands, (4.5, 4.2), colours)


def _scalar_figure(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    get: Callable[[ShowerObservables], np.ndarray],
    xlabel: str,
    reference_label: str,
    logy: bool = False,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    return histogram_with_ratio(
        get(reference),
        {k: get(v) for k, v in candidates.items()},
        xlabel,
        reference_label=reference_label,
        logy=logy,
        colours=colours,
    )


def plot_n_hits(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Distribution of the number of cells (or voxels) above threshold per shower."""
    return _scalar_figure(
        reference, candidates, lambda o: o.n_hits, "number of hits N_hits", reference_label, colours=colours
    )


def plot_energy_ratio(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Distribution of the visible over the incident energy (sampling fraction)."""
    return _scalar_figure(
        reference, candidates, lambda o: o.e_ratio, "E_vis / E_inc", reference_label, colours=colours
    )


def _plural(noun: str) -> str:
    return noun if noun.endswith("s") else noun + "s"


@_styled
def plot_cell_energy(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    threshold_mev: float | None = None,
    *,
    cell_noun: str = "cell",
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Spectrum of the cell energies (log x), as cells per shower and bin; ``threshold_mev`` is marked.

    ``cell_noun`` names the readout channel in the labels ("cell", or "voxel" for a voxel
    readout). The log-spaced edges are shared by every sample, their number set by the
    smallest sample's count of cells (:func:`histogram_bins`).
    """
    cell = {k: v.cell_energy for k, v in candidates.items()}
    edges = shared_edges([np.asarray(reference.cell_energy, np.float64), *cell.values()], log=True)
    norms = {k: float(len(v)) for k, v in candidates.items()}

    def draw(panel: Figure | SubFigure, group: Mapping[str, np.ndarray], cols: Mapping[str, str]) -> None:
        ((ax, rax),) = _ratio_grid(panel, 1, 1)
        _draw_histogram(
            ax,
            rax,
            reference.cell_energy,
            group,
            xlabel=f"{cell_noun} energy [MeV]",
            reference_label=reference_label,
            edges=edges,
            norms=(len(reference), norms),
            ylabel=f"{_plural(cell_noun)} per shower",
            colours=cols,
            logx=True,
            logy=True,
        )
        if threshold_mev is not None:
            ax.axvline(threshold_mev, color="0.3", ls=":", lw=1.0, label="threshold")
            rax.axvline(threshold_mev, color="0.3", ls=":", lw=1.0)

    return _grouped_figure(draw, cell, (4.5, 4.2), colours)


@_styled
def plot_cog(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Centre of gravity m1 in X, Y (transverse, mm) and Z (depth, layer), three panels."""
    labels = ("m1 X [mm]", "m1 Y [mm]", "m1 Z [layer]")
    edges = [
        shared_edges([reference.cog[:, i], *(v.cog[:, i] for v in candidates.values())]) for i in range(3)
    ]

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        for i, (ax, rax) in enumerate(_ratio_grid(panel, 1, 3)):
            _draw_histogram(
                ax,
                rax,
                reference.cog[:, i],
                {k: v.cog[:, i] for k, v in group.items()},
                xlabel=labels[i],
                reference_label=reference_label,
                edges=edges[i],
                colours=cols,
                legend=i == 0,
            )

    return _grouped_figure(draw, candidates, (12.0, 4.2), colours, side_by_side=False)


def _profile(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over showers per bin and its standard error."""
    matrix = np.asarray(matrix, np.float64)
    n = max(len(matrix), 1)
    std = matrix.std(axis=0) if len(matrix) > 1 else np.zeros(matrix.shape[1])
    return matrix.mean(axis=0) if len(matrix) else np.zeros(matrix.shape[1]), std / np.sqrt(n)


@_styled
def plot_longitudinal_profile(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Mean energy per layer (log y) against the layer index."""
    edges = np.arange(reference.e_layer.shape[1] + 1) - 0.5
    ref = _profile(reference.e_layer)

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        ((ax, rax),) = _ratio_grid(panel, 1, 1)
        _draw_curves(
            ax,
            rax,
            edges,
            ref,
            {k: _profile(v.e_layer) for k, v in group.items()},
            reference_label,
            "layer",
            "mean energy per layer [MeV]",
            colours=cols,
            logy=True,
        )

    return _grouped_figure(draw, candidates, (4.5, 4.2), colours)


@_styled
def plot_radial_profile(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    max_radius_mm: float | None = None,
    edges_mm: Sequence[float] | None = None,
    *,
    colours: Mapping[str, str] | None = None,
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
    ref = _profile(reference.radial_profile)
    n_bins = reference.radial_profile.shape[1]
    if max_radius_mm is None:
        filled = np.flatnonzero(ref[0] > 0)
        last = int(filled[-1]) + 1 if len(filled) else n_bins
    else:
        last = min(n_bins, max(1, int(np.searchsorted(all_edges, max_radius_mm))))
    edges = all_edges[: last + 1]

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        ((ax, rax),) = _ratio_grid(panel, 1, 1)
        _draw_curves(
            ax,
            rax,
            edges,
            (ref[0][:last], ref[1][:last]),
            {k: tuple(p[:last] for p in _profile(v.radial_profile)) for k, v in group.items()},
            reference_label,
            "radius [mm]",
            "mean energy per ring [MeV]",
            colours=cols,
            logy=True,
        )

    return _grouped_figure(draw, candidates, (4.5, 4.2), colours)


def _layer_edges(edges_mm: Sequence[float] | None) -> np.ndarray:
    """The rings of the per-layer figures (:func:`caloforge.observables.layer_ring_edges`; default:
    those of ``ild-ecal``), an open last ring (``inf``) drawn one ring wider than the one before."""
    from caloforge.observables import layer_ring_edges

    edges = np.array(layer_ring_edges(get_detector("ild-ecal")) if edges_mm is None else edges_mm, np.float64)
    if len(edges) > 2 and not np.isfinite(edges[-1]):
        edges[-1] = 2 * edges[-2] - edges[-3]
    return edges


#: Layer groups of :func:`plot_layer_radial_profile`; rings of :func:`plot_layer_occupancy`.
LAYER_GROUPS, OCCUPANCY_RINGS = 6, 4


def _layer_groups(n_layers: int, n_groups: int = LAYER_GROUPS) -> list[np.ndarray]:
    """Consecutive layer groups of (almost) equal size."""
    return [g for g in np.array_split(np.arange(n_layers), min(n_groups, n_layers)) if len(g)]


@_styled
def plot_layer_radial_profile(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    edges_mm: Sequence[float] | None = None,
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Mean energy per ring around the shower axis (log y) in groups of consecutive layers, one
    panel each: where the layer-summed radial profile hides a layer-dependent halo or core.

    ``edges_mm`` are the rings of ``ShowerObservables.layer_ring_energy``
    (:func:`caloforge.observables.layer_ring_edges`; default: those of ``ild-ecal``; an open
    last ring is drawn one ring wide).
    """
    edges = _layer_edges(edges_mm)
    groups = _layer_groups(reference.layer_ring_energy.shape[1])
    n_cols = 3
    n_rows = -(-len(groups) // n_cols)

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        for k, (ax, rax) in enumerate(_ratio_grid(panel, n_rows, n_cols, len(groups))):
            layers = groups[k]
            _draw_curves(
                ax,
                rax,
                edges,
                _profile(reference.layer_ring_energy[:, layers].sum(1)),
                {name: _profile(v.layer_ring_energy[:, layers].sum(1)) for name, v in group.items()},
                reference_label,
                "radius [mm]",
                "mean energy per ring [MeV]",
                colours=cols,
                logy=True,
                legend=k == 0,
            )
            ax.set_title(f"layers {layers[0]}–{layers[-1]}", fontsize=9)

    return _grouped_figure(draw, candidates, (4.2 * n_cols, 4.0 * n_rows), colours, side_by_side=False)


@_styled
def plot_layer_occupancy(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    edges_mm: Sequence[float] | None = None,
    *,
    n_rings: int = OCCUPANCY_RINGS,
    cell_noun: str = "cell",
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Mean number of hit cells (voxels) per shower in each layer (x: layer index) for the
    ``n_rings`` rings nearest the shower axis, one panel each (ring 0 of a cell grid is the axis
    cell): the occupancy near the core, layer by layer."""
    edges_r = _layer_edges(edges_mm)
    n_layers, total = reference.layer_ring_hits.shape[1:]
    rings = list(range(min(n_rings, total)))
    edges = np.arange(n_layers + 1) - 0.5

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        for k, (ax, rax) in enumerate(_ratio_grid(panel, 1, len(rings))):
            r = rings[k]
            _draw_curves(
                ax,
                rax,
                edges,
                _profile(reference.layer_ring_hits[:, :, r]),
                {name: _profile(v.layer_ring_hits[:, :, r]) for name, v in group.items()},
                reference_label,
                "layer",
                f"hit {_plural(cell_noun)} per shower",
                colours=cols,
                legend=k == 0,
            )
            ax.set_title(f"ring {r}: {edges_r[r]:.3g}–{edges_r[r + 1]:.3g} mm", fontsize=9)

    return _grouped_figure(draw, candidates, (4.2 * len(rings), 4.0), colours, side_by_side=False)


def _observable_grid(
    reference: np.ndarray,
    candidates: Mapping[str, np.ndarray],
    labels: Sequence[str],
    reference_label: str,
    colours: Mapping[str, str] | None = None,
    n_cols: int = 5,
) -> Figure:
    n = reference.shape[1]
    n_rows = int(np.ceil(n / n_cols))
    edges = [shared_edges([reference[:, i], *(v[:, i] for v in candidates.values())]) for i in range(n)]

    def draw(panel: Figure | SubFigure, group: Mapping[str, np.ndarray], cols: Mapping[str, str]) -> None:
        for i, (ax, rax) in enumerate(_ratio_grid(panel, n_rows, n_cols, n)):
            _draw_histogram(
                ax,
                rax,
                reference[:, i],
                {k: v[:, i] for k, v in group.items()},
                xlabel=labels[i],
                reference_label=reference_label,
                edges=edges[i],
                colours=cols,
                legend=i == 0,
            )

    return _grouped_figure(draw, candidates, (3.0 * n_cols, 3.4 * n_rows), colours, side_by_side=False)


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
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Distributions of the E_long,i observables (energy in layer groups), one panel each.

    ``long_edges`` (e.g. ``detector.long_edges``) adds each group's layer range to its label.
    """
    labels = _range_labels("E_long", long_edges, reference.e_long.shape[1], " layers")
    return _observable_grid(
        reference.e_long, {k: v.e_long for k, v in candidates.items()}, labels, reference_label, colours
    )


@_styled
def plot_e_radial_grid(
    reference: ShowerObservables,
    candidates: Mapping[str, ShowerObservables],
    reference_label: str = "Geant4",
    radial_edges_mm: Sequence[float] | None = None,
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Distributions of the E_radial,i observables (energy in rings), one panel each.

    ``radial_edges_mm`` (e.g. ``detector.radial_edges_mm``) adds each ring's radii to its label.
    """
    labels = _range_labels("E_radial", radial_edges_mm, reference.e_radial.shape[1], " mm")
    return _observable_grid(
        reference.e_radial, {k: v.e_radial for k, v in candidates.items()}, labels, reference_label, colours
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
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """N_hits (top) and E_vis (bottom) for showers near fixed incident energies, one column each.

    For each of ``energies_gev`` the nearest incident energy present in the reference is
    taken, and every sample keeps its showers within ± ``half_width_gev`` of it (so a
    sample made at discrete energies is matched exactly, a continuous one in a window).
    """
    if len(reference) == 0:
        raise ValueError("the reference sample is empty")
    n_cols = len(energies_gev)
    rows = ((lambda o: o.n_hits, "number of hits N_hits"), (lambda o: o.e_vis, "E_vis [MeV]"))
    windows = []
    for target in energies_gev:
        centre, ref_mask = _energy_window(reference.energy, target, half_width_gev)
        cand_masks = {k: np.abs(v.energy - centre) <= half_width_gev for k, v in candidates.items()}
        windows.append((centre, ref_mask, cand_masks))
    edges = {
        (row, j): shared_edges([get(reference)[m], *(get(v)[cm[k]] for k, v in candidates.items())])
        for j, (_, m, cm) in enumerate(windows)
        for row, (get, _) in enumerate(rows)
    }

    def draw(
        panel: Figure | SubFigure, group: Mapping[str, ShowerObservables], cols: Mapping[str, str]
    ) -> None:
        pairs = _ratio_grid(panel, 2, n_cols)
        for j, (centre, ref_mask, cand_masks) in enumerate(windows):
            title = f"E_inc = {centre:.3g} ± {half_width_gev:g} GeV ({int(ref_mask.sum())} ref. showers)"
            for row, (get, xlabel) in enumerate(rows):
                ax, rax = pairs[row * n_cols + j]
                _draw_histogram(
                    ax,
                    rax,
                    get(reference)[ref_mask],
                    {k: get(v)[cand_masks[k]] for k, v in group.items() if cand_masks[k].any()},
                    xlabel=xlabel,
                    reference_label=reference_label,
                    edges=edges[row, j],
                    colours=cols,
                    legend=row == 0 and j == 0,
                )
                if row == 0:
                    ax.set_title(title, fontsize=9)

    return _grouped_figure(draw, candidates, (4.0 * n_cols, 7.6), colours, side_by_side=False)


@_styled
def plot_classifier_scores(
    results: ClassifierResult | Mapping[str, ClassifierResult],
    reference_label: str = "Geant4",
    n_bins: int | None = None,
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Histograms of the test-fold classifier outputs for the reference and each candidate.

    ``results`` maps candidate names to :class:`~caloforge.metrics.ClassifierResult` (or is
    one result, labelled "candidate"); one panel per candidate (at most
    :data:`MAX_CANDIDATES_PER_PANEL` per row), its AUC in the title. ``n_bins`` defaults to
    :func:`histogram_bins` of the smaller sample of scores.
    """
    if not isinstance(results, Mapping):
        results = {"candidate": results}
    n = max(len(results), 1)
    n_cols = min(n, MAX_CANDIDATES_PER_PANEL)
    n_rows = -(-n // n_cols)
    fig = _new_figure(4.2 * n_cols, 3.6 * n_rows)
    colours = candidate_colours(list(results)) if colours is None else colours
    for i, (name, res) in enumerate(results.items()):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        # A good generator leaves every score near 0.5: bin the range the scores cover, not [0, 1].
        edges = shared_edges([np.asarray(res.scores_a), np.asarray(res.scores_b)], n_bins=n_bins)
        for scores, label, colour, lw in (
            (res.scores_a, reference_label, _REFERENCE_COLOUR, 1.6),
            (res.scores_b, name, colours[name], 1.3),
        ):
            counts, _ = np.histogram(scores, edges)
            ax.stairs(counts / max(len(scores), 1), edges, color=colour, lw=lw, label=label)
        ax.set_xlabel(f"classifier output (1 = {name})")
        ax.set_ylabel("fraction of showers")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(bottom=0)
        ax.set_title(f"AUC = {res.auc:.3f} ± {res.auc_std:.3f}", fontsize=9)
        ax.legend(loc="best")
    return fig


#: Titles of the classifiers whose weights :func:`plot_classifier_weights` shows, by result key.
CLASSIFIER_TITLES = {
    "classifier_auc": "SPEC 5 classifier",
    "high_level_auc": "high-level classifier",
    "low_level_auc": "low-level classifier",
    "cell_level_auc": "cell-level classifier",
}


def plot_classifier_weights(
    fits: Mapping[str, Mapping[str, ClassifierResult]],
    reference_label: str = "Geant4",
    *,
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """Histograms of the classifier weights w = (1 − C) / C of the test showers (log x), the
    reference's and each candidate's, one panel per candidate and classifier.

    ``fits`` maps candidate names to their fits by result key (``classifier_auc``,
    ``low_level_auc``…; titles in :data:`CLASSIFIER_TITLES`). The band is
    :data:`~caloforge.metrics.WEIGHT_RANGE`; each title gives the candidate showers' share
    outside it. A classifier that cannot tell the samples apart leaves every weight near 1.
    """
    from caloforge.metrics import WEIGHT_RANGE, classifier_weights

    panels = [(name, key, fit) for name, by_key in fits.items() for key, fit in by_key.items()]
    n = max(len(panels), 1)
    n_cols = min(n, MAX_CANDIDATES_PER_PANEL)
    n_rows = -(-n // n_cols)
    fig = _new_figure(4.2 * n_cols, 3.6 * n_rows)
    colours = candidate_colours(list(fits)) if colours is None else colours
    edges = np.logspace(-3, 3, 49)
    lo, hi = WEIGHT_RANGE
    for i, (name, key, fit) in enumerate(panels):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        ax.axvspan(lo, hi, color="0.9", lw=0)
        w_b = classifier_weights(fit.scores_b)
        for scores, label, colour, lw in (
            (fit.scores_a, reference_label, _REFERENCE_COLOUR, 1.6),
            (fit.scores_b, name, colours[name], 1.3),
        ):
            w = np.clip(classifier_weights(scores), edges[0], edges[-1])
            counts, _ = np.histogram(w, edges)
            ax.stairs(counts / max(len(w), 1), edges, color=colour, lw=lw, label=label)
        ax.set_xscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"weight w = (1 − C) / C ({CLASSIFIER_TITLES.get(key, key)})")
        ax.set_ylabel("fraction of showers")
        outside = float(np.mean((w_b < lo) | (w_b > hi))) if len(w_b) else float("nan")
        ax.set_title(f"{name}: {outside:.0%} outside [{lo:g}, {hi:g}]", fontsize=9)
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
    cell_noun: str = "cell",
    layer_edges_mm: Sequence[float] | None = None,
) -> dict[str, Figure]:
    """Every SPEC 4 figure, keyed by a file-name stem (``n_hits``, ``cell_energy``, …).

    With more than :data:`MAX_CANDIDATES_PER_PANEL` candidates each figure is made once per
    group of :func:`split_candidates`, keyed ``n_hits_1``, ``n_hits_2``, …, every candidate
    keeping its colour throughout. ``cell_noun`` names the readout channel in the labels
    ("voxel" for a voxel readout). ``layer_edges_mm``: the rings of the per-layer figures
    (:func:`caloforge.observables.layer_ring_edges`). :func:`figure_caption` describes each key.
    """
    colours = candidate_colours(list(candidates))
    makers: dict[str, Callable[[Mapping[str, ShowerObservables]], Figure]] = {
        "n_hits": lambda c: plot_n_hits(reference, c, reference_label, colours=colours),
        "energy_ratio": lambda c: plot_energy_ratio(reference, c, reference_label, colours=colours),
        "cell_energy": lambda c: plot_cell_energy(
            reference, c, reference_label, threshold_mev, cell_noun=cell_noun, colours=colours
        ),
        "cog": lambda c: plot_cog(reference, c, reference_label, colours=colours),
        "longitudinal_profile": lambda c: plot_longitudinal_profile(
            reference, c, reference_label, colours=colours
        ),
        "radial_profile": lambda c: plot_radial_profile(
            reference, c, reference_label, edges_mm=profile_edges_mm, colours=colours
        ),
        "layer_radial_profile": lambda c: plot_layer_radial_profile(
            reference, c, reference_label, edges_mm=layer_edges_mm, colours=colours
        ),
        "layer_occupancy": lambda c: plot_layer_occupancy(
            reference, c, reference_label, edges_mm=layer_edges_mm, cell_noun=cell_noun, colours=colours
        ),
        "e_long": lambda c: plot_e_long_grid(reference, c, reference_label, long_edges, colours=colours),
        "e_radial": lambda c: plot_e_radial_grid(
            reference, c, reference_label, radial_edges_mm, colours=colours
        ),
        "single_energy": lambda c: plot_single_energy(
            reference, c, reference_label, energies_gev, colours=colours
        ),
    }
    groups = split_candidates(candidates)
    if len(groups) == 1:
        return {name: make(candidates) for name, make in makers.items()}
    return {f"{name}_{k}": make(group) for name, make in makers.items() for k, group in enumerate(groups, 1)}


_HIST_BANDS = (
    "the reference is the dark step line over a grey band (its Poisson uncertainty), each candidate a "
    "coloured step line with Poisson error bars, and the lower panel shows candidate / reference, the "
    "grey band around 1 being the reference's relative uncertainty"
)
_PROFILE_BANDS = _HIST_BANDS.replace("Poisson uncertainty", "standard error of the mean").replace(
    "Poisson error bars", "error bars (standard error of the mean)"
)

#: Captions of the figures the evaluations write, by name; ``{cell}`` / ``{cells}`` are the
#: readout channel's noun. Shower figures first, then jet figures.
_CAPTIONS: dict[str, str] = {
    "n_hits": "Number of {cells} above the readout threshold per shower (N_hits), as the fraction of "
    "showers per bin; " + _HIST_BANDS + ".",
    "energy_ratio": "Visible over incident energy per shower (E_vis / E_inc, dimensionless: the sampling "
    "fraction), as the fraction of showers per bin; " + _HIST_BANDS + ".",
    "cell_energy": "Energy of every {cell} above the readout threshold [MeV] on log axes (dotted line: "
    "the threshold), as {cells} per shower and bin; " + _HIST_BANDS + ".",
    "cog": "Energy-weighted centre of gravity m1 of each shower, transverse X and Y [mm] and depth Z "
    "[layer index] in one panel each, as the fraction of showers per bin; " + _HIST_BANDS + ".",
    "longitudinal_profile": "Mean energy deposited per layer [MeV] (log y) against the layer index, "
    "averaged over showers; " + _PROFILE_BANDS + ".",
    "radial_profile": "Mean energy per ring around the shower axis [MeV] (log y) against the ring's "
    "radius [mm], averaged over showers; " + _PROFILE_BANDS + ".",
    "layer_radial_profile": "Mean energy per ring around the shower axis [MeV] (log y) against the "
    "ring's radius [mm] in groups of consecutive layers, one panel per group (the layer range in its "
    "title; the outermost ring takes everything beyond), averaged over showers; " + _PROFILE_BANDS + ".",
    "layer_occupancy": "Mean number of hit {cells} per shower in each layer against the layer index, "
    "for the rings nearest the shower axis, one panel per ring (its radii in the title; ring 0 holds "
    "the {cells} on the axis); " + _PROFILE_BANDS + ".",
    "e_long": "Energy in each group of layers, E_long,i [MeV] (the layer range in each x label), one "
    "panel per group, as the fraction of showers per bin; " + _HIST_BANDS + ".",
    "e_radial": "Energy in each ring around the shower axis, E_radial,i [MeV], one panel per ring, as "
    "the fraction of showers per bin; " + _HIST_BANDS + ".",
    "single_energy": "Number of {cells} above threshold N_hits (top row) and visible energy E_vis [MeV] "
    "(bottom row) of the showers near a few fixed incident energies (one column each, the energy window "
    "and the reference's shower count in its title), as the fraction of showers per bin; "
    + _HIST_BANDS
    + ".",
    "classifier_scores": "Test-fold output of the classifier trained to tell each candidate (output 1) "
    "from the reference (output 0), as the fraction of showers per bin, the reference's showers as a "
    "dark step line and the candidate's as a coloured one, one panel per candidate with the AUC ± its "
    "spread over the folds in the title; a classifier that cannot tell them apart leaves both at 0.5.",
    "classifier_weights": "Classifier weights w = (1 − C) / C ≈ p_reference / p_candidate of the "
    "test-fold showers (log x), the reference's as a dark step line and the candidate's as a coloured "
    "one, one panel per candidate and classifier with the candidate's share of weights outside the "
    "grey band [0.5, 2] in the title; a candidate the classifier cannot tell from the reference keeps "
    "its weights near 1, a pile-up at small w marks showers the reference does not make.",
    "jet_mass": "Relative jet mass m / pT_jet (dimensionless), as the fraction of jets per bin; "
    + _HIST_BANDS
    + ".",
    "constituent_ptrel": "Constituent transverse momentum relative to the jet's, pT_rel = pT / pT_jet "
    "(log y), as the fraction of particles per bin; "
    + _HIST_BANDS
    + "; a spike in one bin at a model's largest pT_rel is its sampler's clip (EPiC-JeDi clips its "
    "denoised particles at 3σ, ≈ 0.27 for top jets; MODEL.md), not a feature of the jets.",
    "constituent_etarel": "Constituent pseudorapidity relative to the jet axis, η_rel, as the fraction "
    "of particles per bin; " + _HIST_BANDS + ".",
    "constituent_phirel": "Constituent azimuth relative to the jet axis, φ_rel [rad], as the fraction of "
    "particles per bin; " + _HIST_BANDS + ".",
    "tau21": "N-subjettiness ratio τ21 = τ2 / τ1 per jet (dimensionless; low: two-prong), as the "
    "fraction of jets per bin; " + _HIST_BANDS + ".",
    "tau32": "N-subjettiness ratio τ32 = τ3 / τ2 per jet (dimensionless; low: three-prong), as the "
    "fraction of jets per bin; " + _HIST_BANDS + ".",
    "multiplicity": "Number of particles per jet, as the fraction of jets per bin; " + _HIST_BANDS + ".",
    "efp": "Energy-flow polynomial of the first prime graph with n = 4 vertices and d = 4 edges per jet "
    "(dimensionless, log x), as the fraction of jets per bin; " + _HIST_BANDS + ".",
}


def figure_caption(name: str, cell_noun: str = "cell") -> str:
    """One sentence saying what figure ``name`` (a key of an evaluation's ``figures``) shows.

    ``cell_noun`` names the readout channel ("voxel" for a voxel readout). A name split over
    candidate groups (``n_hits_2``) gets its figure's caption and the part; an unknown name a
    generic sentence.

    >>> figure_caption("cell_energy", "voxel").split(" [MeV]")[0]
    'Energy of every voxel above the readout threshold'
    >>> figure_caption("n_hits_2").endswith("(candidates, part 2).")
    True
    """
    base, part = name, None
    split = re.fullmatch(r"(.+)_(\d+)", name)
    if name not in _CAPTIONS and split is not None and split.group(1) in _CAPTIONS:
        base, part = split.group(1), int(split.group(2))
    template = _CAPTIONS.get(base)
    if template is None:
        return (
            f"Figure '{name}': the reference (dark line, grey band: its statistical uncertainty) "
            "compared with each candidate (coloured lines with statistical error bars)."
        )
    text = template.format(cell=cell_noun, cells=_plural(cell_noun))
    return text if part is None else f"{text[:-1]} (candidates, part {part})."


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
