"""Evaluation metrics (SPEC 5): W1 scores, classifier AUCs and the CaloChallenge scores.

* :func:`w1_scores` / :func:`w1_floor` — 1-d Wasserstein distances between standardised
  observables of a reference and a candidate sample, mean ± std over draws, in units of
  :data:`W1_UNIT` (``1e-2``; see the note below).
* :func:`classifier_auc` — a small MLP trained to tell two feature sets apart (high level:
  :meth:`~caloforge.observables.ShowerObservables.high_level`; low level:
  :func:`low_level_features` of voxel showers); 0.5 means indistinguishable.
  :func:`auc_standard_error` and :func:`minimum_detectable_auc` give the statistical noise
  of an AUC at a test size, i.e. how far from 0.5 an AUC must be to mean anything.
* :func:`calochallenge_features`, :func:`separation_power`, :func:`separation_powers`,
  :func:`fpd`, :func:`kpd` — the CaloChallenge 2022 metrics for voxel showers, with
  caloforge's estimators (draws without replacement, up to the sample size);
  :func:`fpd_jetnet`, :func:`kpd_jetnet` — the same distances with jetnet 0.2.5's estimators
  (draws with replacement, fixed sizes), the ones behind the published tables
  (:mod:`caloforge.evaluate.protocols`).

Units of W1: the CaloClouds II paper labels its W1 table "×10⁻³", but its public code
multiplies the distances by 100, and two independent 50k samples of one standardised
Gaussian already differ by W1 ≈ 6.6·10⁻³, so the published numbers are in units of 10⁻².
Every W1 value returned here is ``W1 / W1_UNIT``, directly comparable with SPEC 7's table.

>>> a = np.random.default_rng(0).normal(size=1000)
>>> round(w1_distance(a, a + 0.5), 6)         # a shift moves the whole distribution
0.5
>>> round(separation_power([1, 2, 3], [1, 2, 3]), 3), separation_power([1, 0], [0, 1])
(0.0, 1.0)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from caloforge.detector import CALOCHALLENGE_THRESHOLD_MEV, CellGrid, Detector, PolarGrid, get_detector
from caloforge.io import VoxelShowers
from caloforge.observables import ShowerObservables
from caloforge.projection import Hits

__all__ = [
    "CELL_WINDOW",
    "DEFAULT_DRAW_SIZE",
    "HIGH_LEVEL_HIDDEN",
    "LOW_LEVEL_HIDDEN",
    "W1_OBSERVABLES",
    "W1_UNIT",
    "WEIGHT_RANGE",
    "ClassifierResult",
    "W1Scores",
    "auc_standard_error",
    "calochallenge_features",
    "cell_level_features",
    "classifier_auc",
    "classifier_inputs",
    "classifier_weights",
    "default_draw_size",
    "feature_matrix",
    "fpd",
    "fpd_jetnet",
    "frechet_distance",
    "kpd",
    "kpd_jetnet",
    "low_level_features",
    "minimum_detectable_auc",
    "separation_power",
    "separation_powers",
    "w1_distance",
    "w1_floor",
    "w1_scores",
    "weight_summary",
]

#: Unit of every W1 value returned by :func:`w1_scores` and :func:`w1_floor` (SPEC 5).
W1_UNIT = 1e-2

#: Showers per draw in the CaloClouds II protocol (10 draws of 50k vs 50k).
DEFAULT_DRAW_SIZE = 50_000

#: Keys of :class:`W1Scores`, in the order of SPEC 7's table. m1 X/Y are transverse (mm),
#: m1 Z is the depth (layer index), as in the paper's table.
#: The last, log E_cell, is caloforge's (not in the published table): see :func:`w1_scores`.
W1_OBSERVABLES = (
    "N_hits",
    "E_vis/E_inc",
    "E_cell",
    "E_long",
    "E_radial",
    "m1 X",
    "m1 Y",
    "m1 Z",
    "log E_cell",
)

#: Most cell energies per side and draw in the log E_cell W1 (drawn uniformly beyond it).
LOG_CELL_MAX = 1_000_000

#: Hidden widths of the high-level classifier (SPEC 5) and of the wider low-level one.
HIGH_LEVEL_HIDDEN = (32, 16, 8)
LOW_LEVEL_HIDDEN = (512, 512, 256)


# --------------------------------------------------------------------------------------
# W1 scores
# --------------------------------------------------------------------------------------


def w1_distance(u: np.ndarray, v: np.ndarray) -> float:
    """Exact 1-d Wasserstein distance ∫|F_u − F_v| dx between two empirical samples.

    Same value as :func:`scipy.stats.wasserstein_distance` (unweighted), computed from the
    sorted samples; for equal sizes it is the mean absolute difference of the sorted values.

    >>> w1_distance(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    1.0
    """
    u = np.sort(np.asarray(u, np.float64).ravel())
    v = np.sort(np.asarray(v, np.float64).ravel())
    if len(u) == 0 or len(v) == 0:
        raise ValueError("w1_distance needs two non-empty samples")
    if len(u) == len(v):
        return float(np.mean(np.abs(u - v)))
    grid = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(grid)))


@dataclass(frozen=True, eq=False)  # equality as a mapping (Mapping.__eq__), not field by field
class W1Scores(Mapping[str, tuple[float, float]]):
    """W1 scores: a mapping ``observable -> (mean, std)`` over draws, in units of :data:`W1_UNIT`.

    ``draw_size`` showers were drawn from each side ``n_draws`` times; ``disjoint`` says
    whether the draws of one side shared no shower (otherwise each draw is an independent
    random subset and the std underestimates the spread of truly independent samples).
    ``per_draw`` holds the value of every draw (same unit).
    """

    scores: dict[str, tuple[float, float]]
    per_draw: dict[str, np.ndarray]
    draw_size: int
    n_draws: int
    disjoint: bool
    n_reference: int
    n_candidate: int
    unit: float = W1_UNIT

    def __getitem__(self, key: str) -> tuple[float, float]:
        return self.scores[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def metadata(self) -> dict[str, Any]:
        """How the scores were made, for a report: sizes, draws, unit."""
        return {
            "draw_size": self.draw_size,
            "n_draws": self.n_draws,
            "disjoint_draws": self.disjoint,
            "n_reference": self.n_reference,
            "n_candidate": self.n_candidate,
            "unit": self.unit,
        }


@dataclass(frozen=True)
class _Standardiser:
    """Reference means and stds of every W1 observable (columns) and of the cell energies."""

    mean: np.ndarray
    std: np.ndarray
    cell_mean: float
    cell_std: float
    log_cell_mean: float
    log_cell_std: float

    def table(self, obs: ShowerObservables) -> np.ndarray:
        """The standardised per-shower W1 observables of ``obs``."""
        return (_w1_table(obs) - self.mean) / self.std

    @classmethod
    def from_reference(cls, reference: ShowerObservables) -> _Standardiser:
        table = _w1_table(reference)
        std = table.std(axis=0)
        cells = reference.cell_energy.astype(np.float64)
        cell_std = float(cells.std()) if len(cells) else 1.0
        logs = _log_cells(cells)
        log_std = float(logs.std()) if len(logs) else 1.0
        # A constant observable (std 0) is left unscaled rather than divided by zero.
        return cls(
            mean=table.mean(axis=0),
            std=np.where(std > 0, std, 1.0),
            cell_mean=float(cells.mean()) if len(cells) else 0.0,
            cell_std=cell_std if cell_std > 0 else 1.0,
            log_cell_mean=float(logs.mean()) if len(logs) else 0.0,
            log_cell_std=log_std if log_std > 0 else 1.0,
        )


def _log_cells(cells: np.ndarray) -> np.ndarray:
    """log10 of cell energies (cells hold energies above the threshold, so positive)."""
    return np.log10(np.maximum(cells, np.finfo(np.float64).tiny))


def _w1_table(obs: ShowerObservables) -> np.ndarray:
    """Per-shower W1 observables: N_hits, E_vis/E_inc, m1 x/y/z, E_long..., E_radial..."""
    return np.column_stack(
        [obs.n_hits.astype(np.float64), obs.e_ratio, obs.cog, obs.e_long, obs.e_radial]
    ).astype(np.float64)


def default_draw_size(n_reference: int, n_candidate: int | None = None) -> int:
    """Showers per W1 draw: 50k, or less when the data are smaller.

    Capped at half the reference so that :func:`w1_floor` (two disjoint reference halves)
    and :func:`w1_scores` use the same size and their values can be compared directly.

    >>> default_draw_size(1_000_000), default_draw_size(10_000, 3_000)
    (50000, 3000)
    """
    size = min(DEFAULT_DRAW_SIZE, n_reference // 2)
    if n_candidate is not None:
        size = min(size, n_candidate)
    if size < 1:
        raise ValueError(
            f"too few showers for W1 draws (reference {n_reference}, candidate {n_candidate}): "
            "need at least 2 reference showers and 1 candidate shower"
        )
    return size


def _draw_indices(n: int, size: int, n_draws: int, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """``n_draws`` index sets of ``size`` out of ``n``: disjoint blocks of one permutation if they fit."""
    if n_draws * size <= n:
        perm = rng.permutation(n)
        return [perm[k * size : (k + 1) * size] for k in range(n_draws)], True
    return [rng.choice(n, size, replace=False) for _ in range(n_draws)], False


def _sample_cells(
    obs: ShowerObservables, showers: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``size`` cell energies drawn uniformly (without replacement) from the cells of ``showers``."""
    counts = obs.cell_offsets[showers + 1] - obs.cell_offsets[showers]
    total = int(counts.sum())
    ranks = np.arange(total) if total <= size else np.sort(rng.choice(total, size, replace=False))
    ends = np.cumsum(counts)
    owner = np.searchsorted(ends, ranks, side="right")
    within = ranks - (ends[owner] - counts[owner])
    return obs.cell_energy[obs.cell_offsets[showers[owner]] + within].astype(np.float64)


def _w1_one_draw(
    ref: ShowerObservables,
    ref_table: np.ndarray,
    ref_idx: np.ndarray,
    cand: ShowerObservables,
    cand_table: np.ndarray,
    cand_idx: np.ndarray,
    std: _Standardiser,
    rng: np.random.Generator,
    log_rng: np.random.Generator,
) -> dict[str, float]:
    """W1 of every observable for one draw; the tables are already standardised. ``log_rng``
    draws the log E_cell cells (apart, so the other draws are those of the published protocol)."""
    a, b = ref_table[ref_idx], cand_table[cand_idx]
    per_column = np.array([w1_distance(a[:, j], b[:, j]) for j in range(a.shape[1])])
    n_long = ref.e_long.shape[1]
    cells_a = (_sample_cells(ref, ref_idx, len(ref_idx), rng) - std.cell_mean) / std.cell_std
    cells_b = (_sample_cells(cand, cand_idx, len(cand_idx), rng) - std.cell_mean) / std.cell_std
    e_cell = w1_distance(cells_a, cells_b) if len(cells_a) and len(cells_b) else float("nan")
    logs = [
        (_log_cells(_sample_cells(obs, idx, LOG_CELL_MAX, log_rng)) - std.log_cell_mean) / std.log_cell_std
        for obs, idx in ((ref, ref_idx), (cand, cand_idx))
    ]
    log_cell = w1_distance(*logs) if len(logs[0]) and len(logs[1]) else float("nan")
    return {
        "N_hits": per_column[0],
        "E_vis/E_inc": per_column[1],
        "E_cell": e_cell,
        "E_long": float(per_column[5 : 5 + n_long].mean()),
        "E_radial": float(per_column[5 + n_long :].mean()),
        "m1 X": per_column[2],
        "m1 Y": per_column[3],
        "m1 Z": per_column[4],
        "log E_cell": log_cell,
    }


def _summarise(draws: list[dict[str, float]], **meta: Any) -> W1Scores:
    per_draw = {k: np.array([d[k] for d in draws]) / W1_UNIT for k in W1_OBSERVABLES}
    scores = {k: (float(np.mean(v)), float(np.std(v))) for k, v in per_draw.items()}
    return W1Scores(scores=scores, per_draw=per_draw, **meta)


def w1_scores(
    reference: ShowerObservables,
    candidate: ShowerObservables,
    n_draws: int = 10,
    draw_size: int | None = None,
    seed: int = 0,
) -> W1Scores:
    """SPEC 5 W1 scores of ``candidate`` against ``reference``, in units of :data:`W1_UNIT` (1e-2).

    Every observable is standardised with the mean and std of the *whole* reference, then
    ``n_draws`` times ``draw_size`` showers are drawn from each sample and the 1-d W1 is
    computed; the result is the mean ± std over draws. E_long and E_radial are, per draw,
    the mean of the W1 of their 10 observables (the std is then over draws of that mean;
    the public code instead quoted sqrt(Σ σ_i²), which is larger).

    E_cell follows the public CaloClouds II convention of comparing as many cell energies
    as there are showers: each draw takes ``draw_size`` cells uniformly from all the cells
    (above threshold) of the drawn showers, standardised with the mean/std of all reference
    cells (linear energies, as in the paper). This keeps the E_cell floor on the same
    1/√n scale as the others; the public code took the first cells of its file instead,
    which are not a random sample. So few cells cannot see the shape of the cell-energy
    spectrum (a pile-up just above the threshold, the MIP peak); ``log E_cell`` (caloforge's,
    not in the published table) does: the W1 of log10 of *every* cell energy of the drawn
    showers (at most :data:`LOG_CELL_MAX`, drawn uniformly beyond), standardised with the
    reference's log cells.

    ``draw_size`` defaults to :func:`default_draw_size` (50k, or half the reference, or the
    candidate size). Draws are disjoint when ``n_draws · draw_size`` fits in a sample,
    otherwise independent random subsets (see :class:`W1Scores`). Both samples should have
    the same incident-energy spectrum.

    >>> from caloforge.detector import get_detector
    >>> from caloforge.io import PointShowers
    >>> from caloforge.observables import compute_observables
    >>> rng = np.random.default_rng(1)
    >>> pts = np.zeros((40, 20, 4), np.float32)
    >>> pts[..., :2] = rng.normal(0, 10, (40, 20, 2)); pts[..., 2] = rng.integers(0, 30, (40, 20)) + 0.5
    >>> pts[..., 3] = rng.exponential(1.0, (40, 20))
    >>> obs = compute_observables(PointShowers(np.full(40, 50.0), pts), get_detector("ild-ecal"))
    >>> s = w1_scores(obs.subset(np.arange(20)), obs.subset(np.arange(20, 40)), n_draws=2)
    >>> list(s)[:3], s.draw_size
    (['N_hits', 'E_vis/E_inc', 'E_cell'], 10)
    """
    if n_draws < 1:
        raise ValueError("n_draws must be at least 1")
    size = default_draw_size(len(reference), len(candidate)) if draw_size is None else int(draw_size)
    if not 1 <= size <= min(len(reference), len(candidate)):
        raise ValueError(
            f"draw_size {size} must be between 1 and the smaller sample "
            f"({len(reference)} reference, {len(candidate)} candidate showers)"
        )
    rng, log_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    std = _Standardiser.from_reference(reference)
    ref_table, cand_table = std.table(reference), std.table(candidate)
    ref_draws, ref_disjoint = _draw_indices(len(reference), size, n_draws, rng)
    cand_draws, cand_disjoint = _draw_indices(len(candidate), size, n_draws, rng)
    draws = [
        _w1_one_draw(reference, ref_table, ri, candidate, cand_table, ci, std, rng, log_rng)
        for ri, ci in zip(ref_draws, cand_draws, strict=True)
    ]
    return _summarise(
        draws,
        draw_size=size,
        n_draws=n_draws,
        disjoint=ref_disjoint and cand_disjoint,
        n_reference=len(reference),
        n_candidate=len(candidate),
    )


def w1_floor(
    reference: ShowerObservables,
    n_draws: int = 10,
    draw_size: int | None = None,
    seed: int = 0,
) -> W1Scores:
    """Reference-vs-reference W1 floor: the protocol of :func:`w1_scores` on two disjoint halves.

    Each draw compares two disjoint sets of ``draw_size`` reference showers (default
    :func:`default_draw_size` of the reference alone, i.e. at most half of it). When
    ``2 · n_draws · draw_size`` showers exist all draws are disjoint blocks of one
    permutation; otherwise every draw re-splits the reference at random. Standardisation
    uses the whole reference, as in :func:`w1_scores`. The floor scales as 1/√draw_size.
    """
    if n_draws < 1:
        raise ValueError("n_draws must be at least 1")
    n = len(reference)
    size = default_draw_size(n) if draw_size is None else int(draw_size)
    if not 1 <= size <= n // 2:
        raise ValueError(f"draw_size {size} must be between 1 and half the reference ({n // 2})")
    rng = np.random.default_rng(seed)
    std = _Standardiser.from_reference(reference)
    table = std.table(reference)
    disjoint = 2 * n_draws * size <= n
    if disjoint:
        perm = rng.permutation(n)
        pairs = [
            (perm[2 * k * size : (2 * k + 1) * size], perm[(2 * k + 1) * size : (2 * k + 2) * size])
            for k in range(n_draws)
        ]
    else:
        pairs = []
        for _ in range(n_draws):
            perm = rng.permutation(n)
            pairs.append((perm[:size], perm[size : 2 * size]))
    log_rng = np.random.default_rng([seed, 1])
    draws = [_w1_one_draw(reference, table, a, reference, table, b, std, rng, log_rng) for a, b in pairs]
    return _summarise(draws, draw_size=size, n_draws=n_draws, disjoint=disjoint, n_reference=n, n_candidate=n)


# --------------------------------------------------------------------------------------
# Classifier AUC
# --------------------------------------------------------------------------------------


@dataclass(eq=False)  # holds arrays: no element-wise field comparison
class ClassifierResult:
    """Outcome of :func:`classifier_auc`.

    ``auc``/``auc_std``: mean and std of the test AUC over the splits (0.5: the classifier
    cannot tell the samples apart). ``scores_a``/``scores_b``: sigmoid outputs on the test
    folds for the samples of ``features_a`` (label 0) and ``features_b`` (label 1), every
    used sample exactly once per split, for histograms. ``aucs``: AUC of each split.
    """

    auc: float
    auc_std: float
    scores_a: np.ndarray
    scores_b: np.ndarray
    aucs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_per_class: int = 0
    #: Row of ``features_a`` / ``features_b`` behind each entry of ``scores_a`` / ``scores_b``.
    index_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    index_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def as_tuple(self) -> tuple[float, float]:
        """``(auc, auc_std)``, the ``(value, uncertainty)`` form of the other metrics."""
        return self.auc, self.auc_std

    @property
    def n_test(self) -> tuple[int, int]:
        """Test showers per class behind :attr:`auc`: every test fold of the splits that ran.

        ``n_per_class`` with all 10 splits, fewer with ``n_splits < 10``.
        """
        return len(self.scores_a), len(self.scores_b)

    def minimum_detectable_auc(self) -> float:
        """:func:`minimum_detectable_auc` for the test showers this AUC was measured on."""
        return minimum_detectable_auc(*self.n_test)


def auc_standard_error(auc: float, n_a: int, n_b: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC measured on ``n_a`` and ``n_b`` test samples.

    SE² = [A(1 − A) + (n_a − 1)(Q1 − A²) + (n_b − 1)(Q2 − A²)] / (n_a n_b), with
    Q1 = A / (2 − A) and Q2 = 2A² / (1 + A). At A = 0.5 (two samples of one distribution)
    Q1 = Q2 = 1/3 and SE² = (n_a + n_b + 1) / (12 n_a n_b), the exact null variance of the
    Mann–Whitney statistic: SE ≈ 1 / √(6 n) for n per class. It is the noise of the test
    sample alone; the spread from retraining (the ± over splits) comes on top.

    >>> round(auc_standard_error(0.5, 100, 100), 4), round(auc_standard_error(0.5, 10_000, 10_000), 5)
    (0.0409, 0.00408)
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"need at least one test sample per class, got {n_a} and {n_b}")
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_a - 1) * (q1 - a * a) + (n_b - 1) * (q2 - a * a)) / (n_a * n_b)
    return float(np.sqrt(max(var, 0.0)))


def minimum_detectable_auc(n_a: int, n_b: int, k: float = 2.0) -> float:
    """The smallest AUC that stands out from test noise: 0.5 + k · SE(0.5; n_a, n_b), k = 2.

    SE is :func:`auc_standard_error` at AUC = 0.5 for ``n_a`` and ``n_b`` test samples per
    class, so MDA = 0.5 + 2 √((n_a + n_b + 1) / (12 n_a n_b)). Two samples of one
    distribution exceed it by chance in about 2 % of evaluations; an AUC below it cannot be
    told from 0.5 at this test size, whatever the samples are.

    >>> round(minimum_detectable_auc(100, 100), 3), round(minimum_detectable_auc(10_000, 10_000), 3)
    (0.582, 0.508)
    """
    return 0.5 + k * auc_standard_error(0.5, n_a, n_b)


def _mlp(n_in: int, hidden: tuple[int, ...], slope: float = 0.2) -> Any:
    """Linear layers of widths ``hidden``, each followed by LeakyReLU(``slope``) (0.2 as in the
    public CaloClouds II classifier), then one logit."""
    import torch

    layers: list[torch.nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.LeakyReLU(slope)]
        width = h
    layers.append(torch.nn.Linear(width, 1))  # a logit: the sigmoid lives in BCEWithLogitsLoss
    return torch.nn.Sequential(*layers)


def _fit_one_split(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    hidden: tuple[int, ...],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str = "cpu",
) -> np.ndarray:
    """Train on ``train``, keep the epoch with the lowest loss on ``val``; sigmoid scores on
    ``test``. The network is initialised and the batches drawn on the CPU whatever ``device``
    it trains on (so only rounding differs between devices)."""
    import torch

    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    scale = np.where(std > 0, std, 1.0)

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.float32)).to(device)

    x_tr, x_val, x_te = (tensor((x[idx] - mean) / scale) for idx in (train, val, test))
    y_tr, y_val = tensor(y[train])[:, None], tensor(y[val])[:, None]
    torch.manual_seed(seed)
    net = _mlp(x.shape[1], hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    best_loss, best_state = float("inf"), copy.deepcopy(net.state_dict())
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            opt.zero_grad()
            loss_fn(net(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(net(x_val), y_val))
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        return torch.sigmoid(net(x_te)).cpu().numpy().ravel().astype(np.float64)


def classifier_inputs(features_a: np.ndarray, features_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two classifier feature sets as float64 ``(n, d)`` arrays (1-d: one feature), checked: the
    same ``d``, every value finite."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature arrays must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("classifier features contain NaN or inf; clean or transform them first")
    return a, b


def classifier_auc(
    features_a: np.ndarray,
    features_b: np.ndarray,
    n_splits: int = 10,
    epochs: int = 10,
    seed: int = 0,
    hidden: tuple[int, ...] = HIGH_LEVEL_HIDDEN,
    batch_size: int = 256,
    lr: float = 1e-3,
    n_threads: int | None = None,
    device: str = "cpu",
) -> ClassifierResult:
    """AUC of an MLP trained to separate ``features_a`` (label 0) from ``features_b`` (label 1).

    SPEC 5 / the public CaloClouds II protocol: the larger sample is subsampled to the size
    of the smaller (balanced classes); both are shuffled and cut into 10 folds, each fold
    holding equal numbers of both classes. Split ``i`` tests on fold ``i``, validates on fold
    ``i + 1`` and trains on the other 8 (80/10/10); ``n_splits`` (≤ 10) of these splits run.
    Inputs are standardised with the training split's mean/std. The MLP (``hidden`` widths,
    LeakyReLU) is trained with Adam on BCE-with-logits for ``epochs`` epochs; the epoch
    with the lowest validation loss scores the test fold (sklearn ``roc_auc_score``).

    High level: the 25 features of :meth:`ShowerObservables.high_level` with the default
    ``hidden=(32, 16, 8)``. Low level: :func:`low_level_features` of voxel showers with
    ``hidden=LOW_LEVEL_HIDDEN``. The AUC is that of the raw scores: the CaloChallenge's
    isotonic calibration is monotone but not strictly so (it maps ranges of scores onto one
    value), and the ties it makes change the AUC — by up to 0.02 on 2,000-shower samples — so
    its AUC is a different number (:func:`caloforge.calochallenge.classifier_auc`, the
    ``calochallenge`` protocol).

    Trains on ``device`` (a torch device string, :func:`caloforge.devices.resolve_device`); the
    CPU part runs with ``n_threads`` torch threads (default: 1 for a small MLP, where more
    threads only add overhead, else at most 4). The global torch RNG and thread setting
    are restored afterwards.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    n_folds = 10
    a, b = classifier_inputs(features_a, features_b)
    if not 1 <= n_splits <= n_folds:
        raise ValueError(f"n_splits must be between 1 and {n_folds}, got {n_splits}")
    n = min(len(a), len(b))
    if n < 2 * n_folds:
        raise ValueError(f"need at least {2 * n_folds} samples per class for the classifier, got {n}")
    rng = np.random.default_rng(seed)
    rows_a, rows_b = rng.permutation(len(a))[:n], rng.permutation(len(b))[:n]
    a, b = a[rows_a], b[rows_b]
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    folds = [
        np.concatenate([fa, n + fb])
        for fa, fb in zip(
            np.array_split(rng.permutation(n), n_folds),
            np.array_split(rng.permutation(n), n_folds),
            strict=True,
        )
    ]
    old_threads = torch.get_num_threads()
    if n_threads is None:
        # Thread start-up costs more than the matmuls of a small MLP, and with other work on
        # the machine extra threads can slow it tenfold: one thread unless the net is wide.
        widths = (x.shape[1], *hidden)
        largest = max((w_in * w_out for w_in, w_out in itertools.pairwise(widths)), default=0)
        n_threads = 1 if largest < 65_536 else min(old_threads, 4)
    torch.set_num_threads(max(1, n_threads))
    aucs, scores_a, scores_b, index_a, index_b = [], [], [], [], []
    try:
        with torch.random.fork_rng(devices=[]):
            for i in range(n_splits):
                test, val = folds[i], folds[(i + 1) % n_folds]
                train = np.concatenate([f for k, f in enumerate(folds) if k not in (i, (i + 1) % n_folds)])
                s = _fit_one_split(
                    x, y, train, val, test, tuple(hidden), epochs, batch_size, lr, seed + i, device
                )
                aucs.append(roc_auc_score(y[test], s))
                scores_a.append(s[y[test] == 0])
                scores_b.append(s[y[test] == 1])
                index_a.append(rows_a[test[y[test] == 0]])
                index_b.append(rows_b[test[y[test] == 1] - n])
    finally:
        torch.set_num_threads(old_threads)
    aucs_arr = np.array(aucs)
    return ClassifierResult(
        auc=float(aucs_arr.mean()),
        auc_std=float(aucs_arr.std()),
        scores_a=np.concatenate(scores_a),
        scores_b=np.concatenate(scores_b),
        aucs=aucs_arr,
        n_per_class=n,
        index_a=np.concatenate(index_a),
        index_b=np.concatenate(index_b),
    )


#: Classifier weights w = (1 - C) / C outside this range flag a sample as far from the reference.
WEIGHT_RANGE = (0.5, 2.0)


def classifier_weights(scores: np.ndarray) -> np.ndarray:
    """Classifier weights ``w = (1 − C) / C`` of candidate-class outputs ``C``: the ratio
    p_reference / p_candidate the classifier has learned (1: it cannot tell; small: far more
    candidate-like than any reference shower), clipped to [1e-6, 1e6].

    >>> classifier_weights(np.array([0.5, 0.8, 0.2])).round(3).tolist()
    [1.0, 0.25, 4.0]
    """
    c = np.clip(np.asarray(scores, np.float64), 1e-6 / (1 + 1e-6), 1 / (1 + 1e-6))
    return (1 - c) / c


def weight_summary(fit: ClassifierResult, n_least: int = 5) -> dict[str, Any]:
    """The classifier weights (:func:`classifier_weights`) of a fit's test showers: the share
    of reference and of candidate showers with a weight outside :data:`WEIGHT_RANGE`, the 1,
    10, 50, 90 and 99 % quantiles of each, and the ``n_least`` candidate showers the classifier
    finds least reference-like (smallest weight), as row indices of ``features_b`` with their
    weights."""
    lo, hi = WEIGHT_RANGE
    out: dict[str, Any] = {"range": [lo, hi]}
    for name, scores in (("reference", fit.scores_a), ("candidate", fit.scores_b)):
        w = classifier_weights(scores)
        out[name] = {
            "outside": float(np.mean((w < lo) | (w > hi))) if len(w) else float("nan"),
            "quantiles": dict(
                zip(
                    ("1", "10", "50", "90", "99"),
                    np.quantile(w, [0.01, 0.1, 0.5, 0.9, 0.99]).tolist(),
                    strict=True,
                )
            )
            if len(w)
            else {},
        }
    w_b = classifier_weights(fit.scores_b)
    order = np.argsort(w_b, kind="stable")[:n_least]
    out["least_like"] = (
        [{"row": int(fit.index_b[k]), "weight": float(w_b[k])} for k in order] if len(fit.index_b) else []
    )
    return out


def low_level_features(
    voxels: VoxelShowers, threshold_mev: float | Detector = CALOCHALLENGE_THRESHOLD_MEV
) -> np.ndarray:
    """Low-level classifier inputs of voxel showers: ``(n, 1 + n_voxels)``.

    Column 0 is log10(E_inc / GeV); the others are ln(1 + E_voxel / threshold) with voxels
    below the threshold set to 0 first. The log tames the many decades of voxel energy
    (the CaloChallenge fed E_voxel / E_inc linearly; that leaves the network to learn the
    scale); empty voxels map to exactly 0 and a voxel at threshold to ln 2.
    ``threshold_mev`` may be a detector (its threshold is used).

    >>> thr = CALOCHALLENGE_THRESHOLD_MEV  # 0.5 keV / 0.033 = 0.0151515… MeV
    >>> v = VoxelShowers([10.0], np.array([[0.0, 0.01515, thr, 100 * thr]]))
    >>> low_level_features(v).round(3).tolist()
    [[1.0, 0.0, 0.0, 0.693, 4.615]]
    """
    thr = threshold_mev.threshold_mev if isinstance(threshold_mev, Detector) else float(threshold_mev)
    if thr <= 0:
        raise ValueError("low_level_features needs a positive threshold to set the energy scale")
    e = voxels.voxels.astype(np.float64)
    e = np.where(e >= thr, e, 0.0)
    return np.column_stack([np.log10(voxels.energy), np.log1p(e / thr)])


#: Cells per side of the window of the cell-level classifier, centred on the shower axis.
CELL_WINDOW = 13


def cell_level_features(
    hits: Hits, energy_gev: np.ndarray, detector: Detector, window: int = CELL_WINDOW
) -> np.ndarray:
    """Cell-level classifier inputs of showers on a cell grid: ``(n, 1 + L·w² + L)``.

    Column 0 is log10(E_inc / GeV); then, layer after layer, ln(1 + E / threshold) of the
    ``w × w`` cells around the shower axis (``w = window``, odd; order layer → x → y), then of
    each layer's energy outside them (the cells beyond the window, and energy beyond the
    readout is not counted). ``hits`` are the thresholded readout hits of the ``n`` showers
    (:func:`caloforge.projection.to_hits`, :func:`~caloforge.projection.apply_threshold`):
    point clouds projected on the cells and cell images alike give the same inputs.

    >>> from caloforge.detector import get_detector
    >>> from caloforge.io import PointShowers
    >>> from caloforge.projection import apply_threshold, to_hits
    >>> det = get_detector("ild-ecal")
    >>> pts = np.array([[[0.0, 0.0, 0.5, 10.0], [40.0, 0.0, 0.5, 5.0], [0.0, 5.1, 2.5, 1.0]]], np.float32)
    >>> x = cell_level_features(apply_threshold(to_hits(PointShowers([50.0], pts), det), 0.1), [50.0], det, 3)
    >>> x.shape, round(float(x[0, 0]), 3)  # 1 + 30 layers x 9 cells + 30 outside
    ((1, 301), 1.699)
    >>> [round(float(v), 3) for v in (x[0, 5], x[0, 1 + 2 * 9 + 5], x[0, 271])]  # centre, y+1, outside
    [4.615, 2.398, 3.932]
    """
    if not isinstance(detector.readout, CellGrid):
        raise ValueError(f"cell_level_features needs a cell-grid detector, not {detector.name}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the window must be an odd number of cells, got {window}")
    thr = detector.threshold_mev
    n, n_layers, half = len(energy_gev), detector.n_layers, window // 2
    size = detector.readout.cell_size_mm
    ix = np.rint(hits.x / size).astype(np.int64) + half
    iy = np.rint(hits.y / size).astype(np.int64) + half
    inside = (ix >= 0) & (ix < window) & (iy >= 0) & (iy < window)
    cells = np.zeros((n, n_layers * window * window))
    flat = (hits.layer * window + ix) * window + iy
    np.add.at(cells, (hits.shower[inside], flat[inside]), hits.energy[inside])
    outside = np.zeros((n, n_layers))
    np.add.at(outside, (hits.shower[~inside], hits.layer[~inside]), hits.energy[~inside])
    return np.column_stack(
        [np.log10(np.asarray(energy_gev, np.float64)), np.log1p(cells / thr), np.log1p(outside / thr)]
    )


# --------------------------------------------------------------------------------------
# CaloChallenge metrics
# --------------------------------------------------------------------------------------


def calochallenge_features(
    voxels: VoxelShowers, detector: str | Detector = "calochallenge-ds2", chunk_size: int = 10_000
) -> dict[str, np.ndarray]:
    """CaloChallenge high-level features of voxel showers, after the detector's threshold.

    Returns, per shower (``L`` = number of layers; energies in MeV, lengths in mm):

    * ``E_layer`` ``(n, L)``: energy per layer;
    * ``EC_x``, ``EC_y`` ``(n, L)``: energy-weighted centre per layer along x and y (the
      challenge's η/φ; x/y of the voxel centres here), 0 for an empty layer;
    * ``width_x``, ``width_y`` ``(n, L)``: energy-weighted standard deviation around it;
    * ``sparsity`` ``(n, L)``: fraction of the layer's voxels *below* threshold (1 = empty
      layer, 0 = every voxel fired);
    * ``EC_r``, ``width_r`` ``(n, L)``: energy-weighted mean and standard deviation of the
      voxels' radial bin centres;
    * ``E_tot`` ``(n,)``: deposited energy; ``E_ratio`` ``(n,)``: deposited over incident energy.

    These are the challenge's features since November 2023 (``HighLevelFeatures.py`` of its
    public code: E_tot, sparsity and the radial centre and width added to the layer energies,
    centres and widths).

    Works through ``chunk_size`` showers at a time to bound memory.
    """
    det = get_detector(detector)
    if not isinstance(det.readout, PolarGrid):
        raise ValueError(f"detector '{det.name}' has no voxel readout; CaloChallenge features need one")
    if voxels.voxels.shape[1] != det.n_channels:
        raise ValueError(
            f"{voxels.voxels.shape[1]} voxels per shower but detector '{det.name}' has {det.n_channels}"
        )
    cx, cy = det.readout.voxel_centres()
    edges = np.asarray(det.readout.radial_edges_mm, np.float64)
    cr = np.tile((edges[:-1] + edges[1:]) / 2, det.readout.n_alpha)  # radius is the fastest index
    n_layers, per_layer = det.n_layers, det.n_cells_per_layer
    keys = (
        "E_layer",
        "EC_x",
        "EC_y",
        "width_x",
        "width_y",
        "sparsity",
        "EC_r",
        "width_r",
        "E_tot",
        "E_ratio",
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for lo in range(0, len(voxels), chunk_size):
        e = voxels.voxels[lo : lo + chunk_size].astype(np.float64).reshape(-1, n_layers, per_layer)
        e = np.where(e >= det.threshold_mev, e, 0.0)
        e_layer = e.sum(axis=-1)
        safe = np.where(e_layer > 0, e_layer, 1.0)
        for axis, c in (("x", cx), ("y", cy), ("r", cr)):
            centre = (e @ c) / safe
            second = (e @ (c * c)) / safe
            parts[f"EC_{axis}"].append(centre)
            # Rounding can make the variance slightly negative for single-voxel layers.
            parts[f"width_{axis}"].append(np.sqrt(np.clip(second - centre**2, 0.0, None)))
        parts["E_layer"].append(e_layer)
        parts["sparsity"].append((e == 0).mean(axis=-1))
        e_tot = e_layer.sum(axis=1)
        parts["E_tot"].append(e_tot)
        parts["E_ratio"].append(e_tot / (voxels.energy[lo : lo + chunk_size] * 1000.0))
    empty = {k: np.zeros((0,) if k in ("E_tot", "E_ratio") else (0, n_layers)) for k in keys}
    return {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}


def _columns(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One 1-d array per feature column: ``E_layer_0`` … for 2-d features, the key itself for 1-d."""
    out = {}
    for key, values in features.items():
        values = np.asarray(values)
        if values.ndim == 1:
            out[key] = values
        else:
            for i in range(values.shape[1]):
                out[f"{key}_{i}"] = values[:, i]
    return out


def feature_matrix(features: Mapping[str, np.ndarray], log_energy: bool = True) -> np.ndarray:
    """Stack a feature dict (e.g. :func:`calochallenge_features`) into an ``(n, d)`` matrix.

    With ``log_energy`` the ``E_layer`` columns become ln(1 + E / MeV), so that FPD/KPD and
    classifiers are not dominated by the few layers with the most energy.
    """
    cols = []
    for key, values in features.items():
        values = np.asarray(values, np.float64)
        if log_energy and key.startswith("E_layer"):
            values = np.log1p(np.clip(values, 0.0, None))
        cols.append(values.reshape(len(values), -1))
    return np.concatenate(cols, axis=1)


def separation_power(h1: np.ndarray, h2: np.ndarray) -> float:
    """½ Σ (h1 − h2)² / (h1 + h2) of two histograms normalised to unit sum (empty bins skipped).

    0 for identical shapes, 1 for disjoint ones.

    >>> separation_power([1, 1, 0], [0, 1, 1])
    0.5
    """
    h1 = np.asarray(h1, np.float64)
    h2 = np.asarray(h2, np.float64)
    if h1.shape != h2.shape:
        raise ValueError(f"histograms have different shapes {h1.shape} and {h2.shape}")
    if h1.sum() <= 0 or h2.sum() <= 0:
        raise ValueError("separation_power needs two histograms with positive content")
    p, q = h1 / h1.sum(), h2 / h2.sum()
    filled = (p + q) > 0
    return float(0.5 * np.sum((p[filled] - q[filled]) ** 2 / (p[filled] + q[filled])))


def _reference_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bins holding equal shares of the reference (ties merged), plus under- and overflow."""
    finite = values[np.isfinite(values)]
    inner = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)))
    if len(inner) == 1:  # a constant reference feature: one bin around its value
        inner = np.array([inner[0] - 0.5, inner[0] + 0.5])
    # Bins are [a, b): nudge the top edge so the reference maximum is inside, not in the overflow.
    inner[-1] = np.nextafter(inner[-1], np.inf)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def separation_powers(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], n_bins: int = 50
) -> dict[str, float]:
    """Separation power of every feature column, with binning taken from the reference.

    Features of shape ``(n, L)`` give one entry per column (``E_layer_0`` …). Bins hold
    equal shares of the reference (``n_bins`` quantiles, so no linear/log choice is needed
    per feature), with under- and overflow bins so that candidate values outside the
    reference range count against it.
    """
    ref_cols, cand_cols = _columns(reference), _columns(candidate)
    missing = sorted(set(ref_cols) ^ set(cand_cols))
    if missing:
        raise ValueError(f"features differ between reference and candidate: {', '.join(missing)}")
    out = {}
    for name, ref in ref_cols.items():
        edges = _reference_edges(np.asarray(ref, np.float64), n_bins)
        h_ref, _ = np.histogram(ref, edges)
        h_cand, _ = np.histogram(cand_cols[name], edges)
        out[name] = separation_power(h_ref, h_cand)
    return out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between two Gaussians.

    Tr (Σ1 Σ2)^½ is computed as Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (eigh only,
    no general matrix square root).

    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 9)
    4.0
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sum(np.sqrt(np.clip(lam, 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def _normalised(x: np.ndarray, y: np.ndarray, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets have different widths {x.shape[1]} and {y.shape[1]}")
    if not normalise:
        return x, y
    # jetnet's convention: divide both by the reference's largest absolute value per feature.
    scale = np.abs(x).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return x / scale, y / scale


def _frechet_of_draws(
    x: np.ndarray, y: np.ndarray, index_pairs: Iterator[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Mean Fréchet distance between the Gaussians of ``x[ix]`` and ``y[iy]`` over the pairs."""
    values = [
        frechet_distance(xs.mean(0), np.cov(xs, rowvar=False), ys.mean(0), np.cov(ys, rowvar=False))
        for xs, ys in ((x[ix], y[iy]) for ix, iy in index_pairs)
    ]
    return float(np.mean(values))


def _intercept(sizes: np.ndarray, values: list[float]) -> tuple[float, float]:
    """``(a, σ_a)`` of the fit a + b/N (a, b ≥ 0) of ``values`` at sample sizes ``sizes``."""
    from scipy.optimize import curve_fit

    if len(sizes) < 2:
        return float(values[0]), float("nan")
    params, cov = curve_fit(
        lambda inv_n, a, b: a + b * inv_n, 1.0 / sizes, np.array(values), bounds=([0, 0], [np.inf, np.inf])
    )
    return float(params[0]), float(np.sqrt(cov[0, 0]))


def fpd(
    x: np.ndarray,
    y: np.ndarray,
    min_samples: int | None = None,
    max_samples: int | None = None,
    n_points: int = 10,
    n_batches: int = 20,
    normalise: bool = True,
    seed: int = 0,
) -> tuple[float, float]:
    """Fréchet distance between Gaussians fitted to ``x`` (reference) and ``y``, extrapolated to N → ∞.

    jetnet's definition with caloforge's estimator: at ``n_points`` sample sizes N evenly
    spaced from ``min_samples`` to ``max_samples`` (default 20k–50k, scaled down to the data:
    max = the smaller sample, min = 0.4·max), the mean Fréchet distance of ``n_batches`` pairs
    of random subsets drawn *without* replacement is fitted by a + b/N; returns ``(a, σ_a)``,
    the intercept and its standard error. ``normalise`` divides every feature by the
    reference's max |value|. :func:`fpd_jetnet` is jetnet's own estimator.
    """
    x, y = _normalised(x, y, normalise)
    n_max = min(50_000, len(x), len(y)) if max_samples is None else int(max_samples)
    n_min = min(20_000, max(2, int(0.4 * n_max))) if min_samples is None else int(min_samples)
    if not 2 <= n_min <= n_max <= min(len(x), len(y)):
        raise ValueError(
            f"need 2 <= min_samples ({n_min}) <= max_samples ({n_max}) <= smaller sample "
            f"({min(len(x), len(y))})"
        )
    rng = np.random.default_rng(seed)
    sizes = np.unique(np.linspace(n_min, n_max, n_points).astype(int))

    def draws(n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _ in range(n_batches):
            yield rng.choice(len(x), n, replace=False), rng.choice(len(y), n, replace=False)

    return _intercept(sizes, [_frechet_of_draws(x, y, draws(n)) for n in sizes])


def fpd_jetnet(
    x: np.ndarray,
    y: np.ndarray,
    min_samples: int = 20_000,
    max_samples: int = 50_000,
    n_points: int = 10,
    n_batches: int = 20,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """FPD with jetnet 0.2.5's estimator (``jetnet.evaluation.fpd``), the published tables' one.

    The ``n_points`` sample sizes are evenly spaced in 1/N between ``1/min_samples`` and
    ``1/max_samples`` (truncated to integers); at each, ``n_batches`` pairs of samples are
    drawn *with* replacement from the whole of ``x`` and ``y`` — whatever their size, so a
    sample smaller than ``min_samples`` is bootstrapped and its own finite-sample distance is
    part of the result — and the mean Fréchet distance is fitted by a + b/N (a, b ≥ 0);
    returns the intercept and its standard error. One ``numpy.random.default_rng(seed)``
    draws every index in jetnet's order, so the same inputs and seed give jetnet's numbers
    (to the rounding of the matrix square root). The CaloChallenge calls it with
    ``min_samples=10_000`` on its high-level features.
    """
    if not 2 <= min_samples <= max_samples:
        raise ValueError(f"need 2 <= min_samples ({min_samples}) <= max_samples ({max_samples})")
    x, y = _normalised(x, y, normalise)
    sizes = (1 / np.linspace(1.0 / min_samples, 1.0 / max_samples, n_points)).astype(np.int32)
    rng = np.random.default_rng(seed)

    def draws(n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _ in range(n_batches):
            yield rng.choice(len(x), size=n), rng.choice(len(y), size=n)

    return _intercept(sizes, [_frechet_of_draws(x, y, draws(int(n))) for n in sizes])


#: Degree of the polynomial kernel of KPD (jetnet 0.2.5 ``_mmd_poly_quadratic_unbiased``).
KPD_DEGREE = 4


def _poly_kernel_sums(
    a: np.ndarray, b: np.ndarray, same: bool, degree: int = KPD_DEGREE, block: int = 2048
) -> float:
    """Σ k(a_i, b_j) with k(x, y) = (x·y/d + 1)^degree, leaving out the diagonal i == j when
    ``same`` (jetnet subtracts the trace); in row blocks."""
    d = a.shape[1]
    total = 0.0
    for lo in range(0, len(a), block):
        k = a[lo : lo + block] @ b.T
        k /= d
        k += 1.0
        if degree == 4:  # squaring twice is much faster than pow()
            k *= k
            k *= k
        else:
            k **= degree
        if same:
            rows = np.arange(lo, min(lo + block, len(a)))
            k[rows - lo, rows] = 0.0
        total += float(k.sum())
    return total


def _mmd2_unbiased(xs: np.ndarray, ys: np.ndarray, degree: int) -> float:
    """Unbiased MMD² of two samples with the polynomial kernel of ``degree``."""
    m, n = len(xs), len(ys)
    kxx = _poly_kernel_sums(xs, xs, same=True, degree=degree) / (m * (m - 1))
    kyy = _poly_kernel_sums(ys, ys, same=True, degree=degree) / (n * (n - 1))
    return kxx + kyy - 2 * _poly_kernel_sums(xs, ys, same=False, degree=degree) / (m * n)


def _median_spread(values: list[float]) -> tuple[float, float]:
    """Median and half the 16–84 % interquantile range (jetnet's KPD summary)."""
    q16, q84 = np.percentile(values, [16.275, 83.725])
    return float(np.median(values)), float((q84 - q16) / 2)


def kpd(
    x: np.ndarray,
    y: np.ndarray,
    n_batches: int = 10,
    batch_size: int | None = None,
    normalise: bool = True,
    seed: int = 0,
    degree: int = KPD_DEGREE,
) -> tuple[float, float]:
    """Kernel physics distance: unbiased MMD² with the kernel k(x, y) = (x·y/d + 1)⁴.

    jetnet's definition (degree 4) with caloforge's estimator: ``n_batches`` pairs of
    ``batch_size`` random samples (default 5000, or half the smaller sample), each drawn
    *without* replacement (jetnet draws with replacement, which puts duplicate pairs into the
    "unbiased" within-sample sums: :func:`kpd_jetnet`); returns the median and half the
    16–84 % interquantile range. ``normalise`` as in :func:`fpd`. Values near 0 (either
    sign) mean no difference.

    By hand, for x = (1, 2, 3) and y = (1, 2, 4) (d = 1): the mean kernel over the pairs
    within x is (3⁴ + 4⁴ + 7⁴) / 3 = 912.667, within y (3⁴ + 5⁴ + 9⁴) / 3 = 2422.333, across
    39207 / 9 = 4356.333, so MMD² = 912.667 + 2422.333 − 2 · 4356.333:

    >>> x = np.array([[1.0], [2.0], [3.0]]); y = np.array([[1.0], [2.0], [4.0]])
    >>> round(kpd(x, y, n_batches=1, batch_size=3, normalise=False)[0], 3)
    -5377.667
    """
    x, y = _normalised(x, y, normalise)
    # Half the smaller sample at most, so that the batches differ from one another.
    m = min(5000, min(len(x), len(y)) // 2) if batch_size is None else int(batch_size)
    if not 2 <= m <= min(len(x), len(y)):
        raise ValueError(f"batch_size {m} must be between 2 and the smaller sample ({min(len(x), len(y))})")
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(
            x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)], degree
        )
        for _ in range(n_batches)
    ]
    return _median_spread(values)


def kpd_jetnet(
    x: np.ndarray,
    y: np.ndarray,
    n_batches: int = 10,
    batch_size: int = 5000,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """KPD with jetnet 0.2.5's estimator (``jetnet.evaluation.kpd``), the published tables' one.

    Batch ``i`` draws ``batch_size`` indices of ``x`` and then of ``y`` *with* replacement from
    ``numpy.random.default_rng(seed + 1000 i)``, whatever the sample sizes; the unbiased MMD²
    of the degree-4 polynomial kernel leaves out only the diagonal, so duplicated samples count
    as pairs. Median ± half the 16–84 % range over the batches. The CaloChallenge calls it with
    ``batch_size=10_000``.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    x, y = _normalised(x, y, normalise)
    values = []
    for i in range(n_batches):
        rng = np.random.default_rng(seed + i * 1000)
        ix, iy = rng.choice(len(x), size=batch_size), rng.choice(len(y), size=batch_size)
        values.append(_mmd2_unbiased(x[ix], y[iy], KPD_DEGREE))
    return _median_spread(values)
