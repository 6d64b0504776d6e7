"""Jet metrics in JetNet's conventions (jetnet 0.2.5 ``evaluation``), on :mod:`.observables`.

* :func:`w1m`, :func:`w1p`, :func:`w1efp`: 1-d Wasserstein distances of the relative jet mass,
  of the real particles' ``eta_rel, phi_rel, pt_rel`` (mean of the three) and of the five
  EFPs (mean of the five), each as mean ± std over ``num_batches`` batches of
  ``num_eval_samples`` jets per side. jetnet draws every batch *with* replacement from the
  whole samples (``replace=True`` here, the ``jetnet`` protocol); by default every batch is
  drawn *without* replacement (disjoint blocks of one permutation when they fit), and the
  default batch size is 50,000 or half the smaller sample, whichever is smaller, so that
  batches differ and the ± means something.
* :func:`kl_divergence`, :func:`batched_kl`: KL(reference ‖ candidate) of histograms with
  bins from the reference's quantiles (the seed table's KL m, KL pT const, KL τ21, KL τ32).
* :func:`fpd_kpd`: FPD and KPD (:func:`caloforge.metrics.fpd`, :func:`caloforge.metrics.kpd`,
  jetnet's definitions, or with ``published`` jetnet's estimators
  :func:`caloforge.metrics.fpd_jetnet`, :func:`caloforge.metrics.kpd_jetnet`) on EFPs (jetnet
  recommends the 36 EFPs with d <= 4).

Units of the published tables (:data:`UNITS`): W1m and W1p in 10⁻³, W1efp in 10⁻⁵, FPD and
KPD in 10⁻⁴, KL in 10⁻³ (a table entry is the value divided by its unit).

>>> w1m(np.zeros(100), np.full(100, 0.01), num_eval_samples=50, num_batches=2)
(0.01, 0.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from caloforge.jets.io import Jets
from caloforge.metrics import fpd, fpd_jetnet, kpd, kpd_jetnet, w1_distance

__all__ = [
    "DEFAULT_EVAL_SAMPLES",
    "KL_BINS",
    "KL_EPSILON",
    "UNITS",
    "batched_kl",
    "default_batch_size",
    "draw_batches",
    "fpd_kpd",
    "kl_bins",
    "kl_divergence",
    "quantile_edges",
    "w1efp",
    "w1m",
    "w1p",
]

#: jetnet's ``num_eval_samples``: jets per side and batch.
DEFAULT_EVAL_SAMPLES = 50_000
#: Unit of every metric in the report (the published tables' units): value / unit is shown.
UNITS: Mapping[str, float] = {"w1m": 1e-3, "w1p": 1e-3, "w1efp": 1e-5, "fpd": 1e-4, "kpd": 1e-4, "kl": 1e-3}
#: Bins of the KL histograms (equal shares of the reference) and the floor added to each bin.
KL_BINS = 50
KL_MIN_PER_BIN = 20
KL_EPSILON = 1e-8
PARTICLE_FEATURES = ("etarel", "phirel", "ptrel")

Batches = list[tuple[np.ndarray, np.ndarray]]


def default_batch_size(n_a: int, n_b: int | None = None) -> int:
    """Jets per batch: 50,000 or half the smaller sample, whichever is smaller (at least 1).

    >>> default_batch_size(1_000_000), default_batch_size(600, 400)
    (50000, 200)
    """
    n = n_a if n_b is None else min(n_a, n_b)
    return max(1, min(DEFAULT_EVAL_SAMPLES, n // 2))


def _indices(n: int, size: int, n_batches: int, rng: np.random.Generator, replace: bool) -> list[np.ndarray]:
    if replace:
        return [np.sort(rng.choice(n, size)) for _ in range(n_batches)]
    if n_batches * size <= n:
        perm = rng.permutation(n)
        return [np.sort(perm[k * size : (k + 1) * size]) for k in range(n_batches)]
    return [np.sort(rng.choice(n, size, replace=False)) for _ in range(n_batches)]


def draw_batches(
    n_a: int,
    n_b: int,
    num_eval_samples: int | None = None,
    num_batches: int = 5,
    seed: int = 0,
    replace: bool = False,
) -> Batches:
    """``num_batches`` pairs of jet index sets, ``num_eval_samples`` (default
    :func:`default_batch_size`) from each side, without replacement within a batch; disjoint
    batches where they fit. With ``replace`` (jetnet's draws) every batch is drawn with
    replacement from the whole sample, of any size. The same arguments give the same batches."""
    size = default_batch_size(n_a, n_b) if num_eval_samples is None else int(num_eval_samples)
    if size < 1 or (not replace and size > min(n_a, n_b)):
        raise ValueError(
            f"num_eval_samples {size} must be between 1 and the smaller sample ({min(n_a, n_b)})"
        )
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    rng = np.random.default_rng(seed)
    return list(
        zip(
            _indices(n_a, size, num_batches, rng, replace),
            _indices(n_b, size, num_batches, rng, replace),
            strict=True,
        )
    )


def _summary(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def _per_batch(
    fn: Callable[[np.ndarray, np.ndarray], Any],
    a: np.ndarray,
    b: np.ndarray,
    num_eval_samples: int | None,
    num_batches: int,
    seed: int,
    replace: bool,
) -> np.ndarray:
    batches = draw_batches(len(a), len(b), num_eval_samples, num_batches, seed, replace)
    return np.array([fn(a[ia], b[ib]) for ia, ib in batches], np.float64)


def w1m(
    mass_a: np.ndarray,
    mass_b: np.ndarray,
    num_eval_samples: int | None = None,
    num_batches: int = 5,
    seed: int = 0,
    replace: bool = False,
) -> tuple[float, float]:
    """W1 of the (relative) jet masses, mean ± std over the batches (jetnet ``w1m``)."""
    a, b = np.asarray(mass_a, np.float64), np.asarray(mass_b, np.float64)
    return _summary(_per_batch(w1_distance, a, b, num_eval_samples, num_batches, seed, replace))


def _particles(jets: Jets | np.ndarray) -> np.ndarray:
    p = jets.particles if isinstance(jets, Jets) else np.asarray(jets)
    if p.ndim != 3 or p.shape[2] < 3:
        raise ValueError(f"particles must have shape (n, P, 3 or 4), got {p.shape}")
    return p


def _real(p: np.ndarray) -> np.ndarray:
    """``(n, P)`` bool: the real particles (the mask column, else non-zero features, as jetnet)."""
    if p.shape[2] >= 4:
        return p[..., 3] > 0.5
    return np.linalg.norm(p[..., :3], axis=2) > 0


def w1p(
    particles_a: Jets | np.ndarray,
    particles_b: Jets | np.ndarray,
    num_eval_samples: int | None = None,
    num_batches: int = 5,
    seed: int = 0,
    replace: bool = False,
) -> dict[str, tuple[float, float]]:
    """W1 of the real particles' features (jetnet ``w1p``): per batch of jets, W1 of the
    ``eta_rel``, ``phi_rel`` and ``pt_rel`` of all their real particles; ``w1p`` is the mean of
    the three. Each as mean ± std over the batches."""
    pa, pb = _particles(particles_a), _particles(particles_b)
    ma, mb = _real(pa), _real(pb)

    def one(ia: np.ndarray, ib: np.ndarray) -> list[float]:
        xa, xb = pa[ia][ma[ia]], pb[ib][mb[ib]]
        if len(xa) == 0 or len(xb) == 0:
            return [np.inf] * 3
        return [w1_distance(xa[:, k], xb[:, k]) for k in range(3)]

    batches = draw_batches(len(pa), len(pb), num_eval_samples, num_batches, seed, replace)
    per = np.array([one(ia, ib) for ia, ib in batches], np.float64)
    out = {"w1p": _summary(per.mean(axis=1))}
    out |= {name: _summary(per[:, k]) for k, name in enumerate(PARTICLE_FEATURES)}
    return out


def w1efp(
    efps_a: np.ndarray,
    efps_b: np.ndarray,
    num_eval_samples: int | None = None,
    num_batches: int = 5,
    seed: int = 0,
    replace: bool = False,
) -> dict[str, tuple[float, float]]:
    """W1 of each EFP column (``efp_0`` …) and their mean ``w1efp`` (jetnet ``w1efp``, averaged
    over the EFPs as the JetNet papers report it), mean ± std over the batches."""
    a, b = np.asarray(efps_a, np.float64), np.asarray(efps_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"EFP arrays must be (n, k) with the same k, got {a.shape} and {b.shape}")
    per = _per_batch(
        lambda x, y: [w1_distance(x[:, k], y[:, k]) for k in range(x.shape[1])],
        a, b, num_eval_samples, num_batches, seed, replace,
    )  # fmt: skip
    out = {"w1efp": _summary(per.mean(axis=1))}
    out |= {f"efp_{k}": _summary(per[:, k]) for k in range(per.shape[1])}
    return out


def quantile_edges(reference: np.ndarray, n_bins: int = KL_BINS) -> np.ndarray:
    """Bin edges holding equal shares of ``reference`` (ties merged), plus under- and overflow bins.

    >>> quantile_edges(np.arange(5.0), 2).tolist()
    [-inf, 0.0, 2.0, 4.000000000000001, inf]
    """
    values = np.asarray(reference, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError("quantile_edges needs finite reference values")
    inner = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(inner) == 1:
        inner = np.array([inner[0] - 0.5, inner[0] + 0.5])
    inner[-1] = np.nextafter(inner[-1], np.inf)  # bins are [a, b): keep the maximum inside
    return np.concatenate([[-np.inf], inner, [np.inf]])


def kl_divergence(
    reference: np.ndarray,
    candidate: np.ndarray,
    edges: np.ndarray | None = None,
    n_bins: int = KL_BINS,
    eps: float = KL_EPSILON,
) -> float:
    """KL(reference ‖ candidate) = Σ p log(p / q) of the two normalised histograms (natural log).

    Bins: ``edges``, by default :func:`quantile_edges` of ``reference`` (``n_bins`` bins of
    equal reference share, plus under- and overflow, so candidate values outside the
    reference's range lower q inside it). ``eps`` is added to every bin of p and q before
    renormalising, so an empty candidate bin costs a finite amount. 0 for identical histograms.

    >>> x = np.arange(100.0); round(kl_divergence(x, x), 12), kl_divergence(x, x + 50) > 1
    (0.0, True)
    """
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if len(ref) == 0 or len(cand) == 0:
        raise ValueError("kl_divergence needs two non-empty samples")
    edges = quantile_edges(ref, n_bins) if edges is None else np.asarray(edges, np.float64)
    p = np.histogram(ref, edges)[0] / len(ref) + eps
    q = np.histogram(cand, edges)[0] / len(cand) + eps
    p, q = p / p.sum(), q / q.sum()
    return float(max(np.sum(p * np.log(p / q)), 0.0))


def kl_bins(n_values: int) -> int:
    """Bins of a batch's KL histograms: :data:`KL_BINS`, fewer for small batches so that every bin
    expects at least :data:`KL_MIN_PER_BIN` reference entries (at least 5 bins).

    >>> kl_bins(50_000), kl_bins(2_000), kl_bins(30)
    (50, 50, 5)
    """
    return int(min(KL_BINS, max(5, n_values // KL_MIN_PER_BIN)))


def batched_kl(
    reference: Jets | np.ndarray,
    candidate: Jets | np.ndarray,
    column: int | None = None,
    num_eval_samples: int | None = None,
    num_batches: int = 5,
    seed: int = 0,
    n_bins: int | None = None,
) -> tuple[float, float]:
    """:func:`kl_divergence` over the batches of :func:`draw_batches` (mean ± std).

    Per-jet values: 1-d ``reference`` and ``candidate``. Per-particle values (KL pT const):
    particle arrays ``(n, P, 4)`` and ``column`` (2 for pt_rel): a batch of jets contributes
    all its real particles. The bins are quantiles of the whole reference sample, the same
    for every batch; ``n_bins`` defaults to :func:`kl_bins` of a reference batch's entries
    (50 for JetNet-size batches: with few entries per bin, empty candidate bins would make
    the KL mostly noise).
    """
    batches = draw_batches(len(reference), len(candidate), num_eval_samples, num_batches, seed)
    if column is None:
        ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
        edges = quantile_edges(ref, kl_bins(len(batches[0][0])) if n_bins is None else n_bins)
        return _summary(np.array([kl_divergence(ref[ia], cand[ib], edges) for ia, ib in batches]))
    pa, pb = _particles(reference), _particles(candidate)
    ma, mb = _real(pa), _real(pb)
    per_batch = int(ma[batches[0][0]].sum())
    edges = quantile_edges(pa[..., column][ma], kl_bins(per_batch) if n_bins is None else n_bins)
    values = [
        kl_divergence(pa[ia][..., column][ma[ia]], pb[ib][..., column][mb[ib]], edges) for ia, ib in batches
    ]
    return _summary(np.array(values))


def fpd_kpd(
    features_a: np.ndarray, features_b: np.ndarray, seed: int = 0, published: bool = False
) -> dict[str, tuple[float, float]]:
    """``fpd`` and ``kpd`` of two feature sets (jetnet's definitions via :func:`caloforge.metrics.fpd`
    and :func:`caloforge.metrics.kpd`: features divided by the reference's max |value|; FPD
    extrapolated to N → ∞ from 0.4·N_max … N_max with N_max = min(50k, smaller sample); KPD
    the median over 10 batches of min(5000, half the smaller sample)). With ``published``,
    jetnet's own estimators and defaults (:func:`caloforge.metrics.fpd_jetnet`: 20k–50k draws
    with replacement; :func:`caloforge.metrics.kpd_jetnet`: 10 batches of 5,000).

    FPD runs with one BLAS thread where ``threadpoolctl`` is installed: its hundreds of small
    (36 × 36) eigendecompositions run about 10× slower with several threads on a busy machine.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    with _one_blas_thread():
        fpd_value = fpd_jetnet(a, b, seed=seed) if published else fpd(a, b, seed=seed)
    return {"fpd": fpd_value, "kpd": kpd_jetnet(a, b, seed=seed) if published else kpd(a, b, seed=seed)}


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
