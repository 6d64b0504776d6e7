"""Observables of jets as particle clouds, in JetNet's conventions.

Particles are rows ``(eta_rel, phi_rel, pt_rel, mask)`` (:mod:`caloforge.jets.io`); padding
(mask 0) is ignored everywhere, and every observable is invariant under a permutation of
the particles. Constituents are massless; momenta are in units of the jet pT (``pt_rel``),
so the jet mass here is the *relative* mass m / pT_jet, as jetnet's ``jet_features``
computes it from the particle features (the mass behind JetNet's W1m).

* :func:`jet_kinematics`: mass, pT, eta, phi of the summed four-vectors, multiplicity;
* :func:`nsubjettiness`: tau_1..tau_N with exclusive-kT axes (a vectorised implementation,
  checked against FastJet in the tests), :func:`tau_ratios`: tau21, tau32;
* :func:`efps`: energy-flow polynomials through ``energyflow`` (jetnet's ``utils.efps``
  set-up: the five prime n = 4, d = 4 graphs of W1efp, or the 36 graphs d <= 4 that jetnet
  recommends for FPD/KPD);
* :func:`jet_observables`: all of them for one sample, as the evaluation needs them.

>>> p = np.zeros((1, 3, 4)); p[0, :2] = [[0.1, 0.0, 0.5, 1], [-0.1, 0.0, 0.5, 1]]
>>> k = jet_kinematics(p)
>>> round(float(k["mass"][0]), 6), round(float(k["pt"][0]), 6), int(k["multiplicity"][0])
(0.100167, 1.0, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from caloforge.jets.io import Jets

__all__ = [
    "FPD_EFP_ARGS",
    "W1_EFP_ARGS",
    "constituent_four_vectors",
    "efps",
    "jet_kinematics",
    "jet_observables",
    "leading_ptrel",
    "nsubjettiness",
    "tau_ratios",
]

#: ``EFPSet`` selection of W1efp (jetnet ``w1efp``'s default): the five prime graphs with n = 4
#: vertices and d = 4 edges.
W1_EFP_ARGS: tuple[tuple[str, int], ...] = (("n==", 4), ("d==", 4), ("p==", 1))
#: ``EFPSet`` selection of FPD/KPD (jetnet ``get_fpd_kpd_jet_features``): all 36 graphs d <= 4.
FPD_EFP_ARGS: tuple[tuple[str, int], ...] = (("d<=", 4),)
#: Leading particles (by pt_rel) in the classifier features.
N_LEADING = 5


def _array(particles: Jets | np.ndarray) -> np.ndarray:
    p = particles.particles if isinstance(particles, Jets) else np.asarray(particles)
    if p.ndim != 3 or p.shape[2] < 3:
        raise ValueError(f"particles must have shape (n, P, 3 or 4), got {p.shape}")
    return p


def _mask(p: np.ndarray) -> np.ndarray:
    """Real particles: the mask column where there is one, else pt_rel > 0."""
    return p[..., 3] > 0.5 if p.shape[2] >= 4 else p[..., 2] > 0


def _columns(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``eta, phi, pt, mask`` in float64, zero in the padding."""
    mask = _mask(p)
    eta, phi, pt = (np.where(mask, p[..., k].astype(np.float64), 0.0) for k in range(3))
    return eta, phi, pt, mask


def _abs_dphi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| wrapped into [0, pi] (for angles in (-pi, pi])."""
    return np.pi - np.abs(np.abs(a - b) - np.pi)


def constituent_four_vectors(particles: Jets | np.ndarray) -> np.ndarray:
    """``(n, P, 4)`` float64 ``E, px, py, pz`` of massless constituents (units of pT_jet); zero padding.

    >>> constituent_four_vectors(np.array([[[0.0, 0.0, 2.0, 1.0], [5.0, 1.0, 3.0, 0.0]]])).tolist()
    [[[2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    """
    eta, phi, pt, _ = _columns(_array(particles))
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)


def jet_kinematics(particles: Jets | np.ndarray) -> dict[str, np.ndarray]:
    """Per jet, from the sum of the constituents' four-vectors: ``mass`` (relative, m / pT_jet),
    ``pt`` (relative, about 1 when all constituents are kept), ``eta``, ``phi``; and ``multiplicity``."""
    p = _array(particles)
    e, px, py, pz = np.moveaxis(constituent_four_vectors(p).sum(axis=1), -1, 0)
    pt = np.hypot(px, py)
    m2 = np.clip(e * e - px * px - py * py - pz * pz, 0.0, None)
    eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
    return {
        "mass": np.sqrt(m2),
        "pt": pt,
        "eta": eta,
        "phi": np.arctan2(py, px),
        "multiplicity": _mask(p).sum(axis=1),
    }


# --------------------------------------------------------------------------------------
# N-subjettiness with exclusive-kT axes
# --------------------------------------------------------------------------------------


def _kinematics(four: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pt², rapidity, phi`` of four-vectors ``(..., 4)`` (FastJet's rapidity formula; 0 if null)."""
    e, px, py, pz = np.moveaxis(four, -1, 0)
    pt2 = px * px + py * py
    mt2 = (e + pz) * (e - pz)
    big = (e + np.abs(pz)) ** 2
    ok = (mt2 > 0) & (big > 0)
    rap = 0.5 * np.log(np.divide(mt2, big, out=np.ones_like(mt2), where=ok))
    return pt2, np.where(pz > 0, -rap, rap), np.arctan2(py, px)


def _kt_distance(
    pt2_a: np.ndarray,
    rap_a: np.ndarray,
    phi_a: np.ndarray,
    pt2_b: np.ndarray,
    rap_b: np.ndarray,
    phi_b: np.ndarray,
) -> np.ndarray:
    """d_ab = min(pt_a², pt_b²) ΔR_ab² (broadcasting)."""
    return np.minimum(pt2_a, pt2_b) * ((rap_a - rap_b) ** 2 + _abs_dphi(phi_a, phi_b) ** 2)


def _nsub_chunk(p: np.ndarray, n_max: int, beta: float, r0: float) -> np.ndarray:
    """τ_1..τ_n_max of the jets of ``p`` (one chunk), by exclusive kT clustering of all jets at once.

    Every step merges, in every jet with more than one object left, the pair with the smallest
    d_ij (E-scheme); nearest neighbours are kept per object and only recomputed for the objects
    whose neighbour was merged (FastJet's N² strategy), so a step costs O(n P). The jets are
    sorted by multiplicity, most first, so the jets still merging are always a leading block.
    """
    n, size = p.shape[:2]
    order = np.argsort(-_mask(p).sum(axis=1), kind="stable")
    eta, phi, pt, alive = _columns(p[order])
    count = alive.sum(axis=1)
    multiplicity = count.copy()
    norm = pt.sum(axis=1) * r0**beta
    tau = np.zeros((n, n_max))
    four = constituent_four_vectors(p[order])
    pt2, rap, phi_obj = _kinematics(four)

    def record(jets: np.ndarray, n_axes: int) -> None:
        """τ_{n_axes} of ``jets``, which have exactly ``n_axes`` objects left."""
        if len(jets) == 0:
            return
        cols = np.nonzero(alive[jets])[1].reshape(len(jets), n_axes)
        axis_rap = rap[jets[:, None], cols]
        axis_phi = phi_obj[jets[:, None], cols]
        dr2 = (eta[jets, :, None] - axis_rap[:, None, :]) ** 2
        dr2 += _abs_dphi(phi[jets, :, None], axis_phi[:, None, :]) ** 2
        total = np.sum(pt[jets] * np.min(dr2, axis=2) ** (beta / 2), axis=1)
        tau[jets, n_axes - 1] = np.divide(total, norm[jets], out=np.zeros_like(total), where=norm[jets] > 0)

    rows = np.arange(n)
    # Nearest neighbour of every object (row by row: memory O(n P)).
    nn = np.zeros((n, size), np.intp)
    nn_dist = np.full((n, size), np.inf)
    for r in range(size):
        d = _kt_distance(pt2[:, r : r + 1], rap[:, r : r + 1], phi_obj[:, r : r + 1], pt2, rap, phi_obj)
        d[~alive] = np.inf
        d[:, r] = np.inf
        nn[:, r] = np.argmin(d, axis=1)
        nn_dist[:, r] = np.where(alive[:, r], d[rows, nn[:, r]], np.inf)
    for n_axes in range(1, n_max + 1):
        record(np.nonzero(count == n_axes)[0], n_axes)

    while True:
        a = int(np.count_nonzero(count > 1))  # the jets still merging: rows 0 .. a-1
        if a == 0:
            break
        k = rows[:a]
        nn_a, dist_a, live = nn[:a], nn_dist[:a], alive[:a]  # views
        i = np.argmin(dist_a, axis=1)
        j = nn_a[k, i]
        four[k, i] += four[k, j]  # E-scheme: j merged into i
        live[k, j] = False
        dist_a[k, j] = np.inf
        pt2[k, i], rap[k, i], phi_obj[k, i] = _kinematics(four[k, i])
        d_new = _kt_distance(
            pt2[k, i][:, None], rap[k, i][:, None], phi_obj[k, i][:, None], pt2[:a], rap[:a], phi_obj[:a]
        )
        d_new[~live] = np.inf
        d_new[k, i] = np.inf
        # objects whose neighbour was i or j are recomputed; the others may now be closest to i
        redo = live & ((nn_a == i[:, None]) | (nn_a == j[:, None]))
        redo[k, i] = False
        closer = live & ~redo & (d_new < dist_a)
        nn_a[closer] = np.broadcast_to(i[:, None], closer.shape)[closer]
        dist_a[closer] = d_new[closer]
        best = np.argmin(d_new, axis=1)
        nn_a[k, i] = best
        dist_a[k, i] = d_new[k, best]
        rk, rc = np.nonzero(redo)
        if len(rk):
            d = _kt_distance(
                pt2[rk, rc][:, None],
                rap[rk, rc][:, None],
                phi_obj[rk, rc][:, None],
                pt2[rk],
                rap[rk],
                phi_obj[rk],
            )
            d[~live[rk]] = np.inf
            d[np.arange(len(rk)), rc] = np.inf
            best = np.argmin(d, axis=1)
            nn_a[rk, rc] = best
            dist_a[rk, rc] = d[np.arange(len(rk)), best]
        count[:a] -= 1
        for n_axes in range(1, n_max + 1):
            record(np.nonzero(count[:a] == n_axes)[0], n_axes)
    tau[multiplicity[:, None] <= np.arange(1, n_max + 1)] = 0.0  # each particle its own axis
    out = np.empty_like(tau)
    out[order] = tau
    return out


def nsubjettiness(
    particles: Jets | np.ndarray, n_max: int = 3, beta: float = 1.0, r0: float = 0.8
) -> np.ndarray:
    """``(n, n_max)``: τ_1 … τ_n_max of every jet, with exclusive-kT axes.

    τ_N = Σ_i pT_i min_k ΔR(i, axis_k)^β / (Σ_i pT_i R0^β) (the normalised measure of
    FastJet-contrib's Nsubjettiness; R0^β = R0 for β = 1). The N axes are the objects left
    when exclusive kT clustering (d_ij = min(pT_i², pT_j²) ΔR_ij², no beam distance, i.e.
    R = FastJet's ``max_allowable_R``; E-scheme recombination; ΔR in rapidity and phi) has
    merged the constituents down to N. A jet with at most N particles has τ_N = 0.

    >>> p = np.array([[[0.0, 0.0, 0.6, 1], [0.4, 0.0, 0.3, 1], [0.0, 0.5, 0.1, 1]]])
    >>> np.round(nsubjettiness(p, 3), 4).tolist()  # tau3 = 0: three particles
    [[0.2624, 0.106, 0.0]]
    """
    p = _array(particles)
    if n_max < 1:
        raise ValueError(f"n_max must be at least 1, got {n_max}")
    chunk = max(1, 2**19 // max(p.shape[1], 1))
    parts = [_nsub_chunk(p[lo : lo + chunk], n_max, beta, r0) for lo in range(0, len(p), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, n_max))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def tau_ratios(
    particles: Jets | np.ndarray, beta: float = 1.0, r0: float = 0.8
) -> tuple[np.ndarray, np.ndarray]:
    """``(tau21, tau32)`` = (τ2/τ1, τ3/τ2), 0 where the denominator is 0."""
    tau = nsubjettiness(particles, 3, beta, r0)
    return _ratio(tau[:, 1], tau[:, 0]), _ratio(tau[:, 2], tau[:, 1])


# --------------------------------------------------------------------------------------
# Energy-flow polynomials
# --------------------------------------------------------------------------------------


def _efpset(efpset_args: Sequence[tuple[str, int]]) -> Any:
    try:
        import energyflow
    except ImportError as exc:
        raise ImportError(
            f"energy-flow polynomials need the energyflow package ({exc}): pip install 'caloforge[jets]'"
        ) from None
    # jetnet 0.2.5 utils.efps: hadronic measure, beta = 1, normed=None (falsy: z_i = pt_rel as
    # given, not renormalised to sum 1), (pt, y, phi) coordinates with y = eta_rel.
    return energyflow.EFPSet(*efpset_args, measure="hadr", beta=1, normed=None, coords="ptyphim")


def efps(
    particles: Jets | np.ndarray, efpset_args: Sequence[tuple[str, int]] = W1_EFP_ARGS, n_jobs: int = 1
) -> np.ndarray:
    """``(n, k)`` energy-flow polynomials of every jet, jetnet's set-up (``jetnet.utils.efps``).

    ``energyflow.EFPSet(*efpset_args, measure="hadr", beta=1, normed=None, coords="ptyphim")``
    on ``(pt_rel, eta_rel, phi_rel)`` of the real particles: EFP_G = Σ z_i1 … z_iN Π_(k,l)∈G
    θ_ik,il with z = pt_rel (not renormalised, as jetnet: ``normed=None``) and θ = ΔR in
    (eta, phi). Default: the five prime graphs n = 4, d = 4 of W1efp (k = 5); pass
    :data:`FPD_EFP_ARGS` for the 36 of FPD/KPD. A jet without particles gets zeros.
    """
    p = _array(particles)
    efpset = _efpset(efpset_args)
    mask = _mask(p)
    events = []
    for jet, m in zip(p, mask, strict=True):
        event = jet[m][:, [2, 0, 1]].astype(np.float64)
        events.append(event if len(event) else np.zeros((1, 3)))
    if not events:
        return np.zeros((0, len(efpset.graphs())))
    return np.asarray(efpset.batch_compute(events, n_jobs=n_jobs), np.float64).reshape(len(events), -1)


def _w1_columns_of_fpd_set() -> np.ndarray:
    """Columns of :data:`FPD_EFP_ARGS`'s set holding :data:`W1_EFP_ARGS`'s graphs, in their order."""
    full, w1 = _efpset(FPD_EFP_ARGS), _efpset(W1_EFP_ARGS)
    keys = [sorted(map(tuple, g)) for g in full.graphs()]
    return np.array([keys.index(sorted(map(tuple, g))) for g in w1.graphs()])


# --------------------------------------------------------------------------------------
# Everything for the evaluation
# --------------------------------------------------------------------------------------


def leading_ptrel(particles: Jets | np.ndarray, k: int = N_LEADING) -> np.ndarray:
    """``(n, k)``: the ``k`` largest pt_rel of every jet, in decreasing order (0 past the last particle).

    >>> leading_ptrel(np.array([[[0, 0, 0.2, 1], [0, 0, 0.5, 1], [0, 0, 0.9, 0]]]), 3).tolist()
    [[0.5, 0.2, 0.0]]
    """
    _, _, pt, _ = _columns(_array(particles))
    top = -np.sort(-pt, axis=1)[:, :k]
    return np.pad(top, ((0, 0), (0, max(0, k - top.shape[1]))))


def jet_observables(jets: Jets | np.ndarray, fpd_features: bool = True) -> dict[str, np.ndarray]:
    """Every observable the jet evaluation needs, for one sample.

    Per jet: ``mass`` (relative), ``multiplicity``, ``tau21``, ``tau32``, ``efps`` ``(n, 5)``
    (:data:`W1_EFP_ARGS`), ``leading_ptrel`` ``(n, 5)``, and with ``fpd_features``
    ``fpd_efps`` ``(n, 36)`` (:data:`FPD_EFP_ARGS`; the five W1efp graphs are taken from
    this set, so energyflow runs once). Per particle, the real particles of all jets in jet
    order: ``etarel``, ``phirel``, ``ptrel``.
    """
    p = _array(jets)
    kin = jet_kinematics(p)
    tau = nsubjettiness(p, 3)
    mask = _mask(p)
    out = {
        "mass": kin["mass"],
        "multiplicity": kin["multiplicity"],
        "tau21": _ratio(tau[:, 1], tau[:, 0]),
        "tau32": _ratio(tau[:, 2], tau[:, 1]),
        "leading_ptrel": leading_ptrel(p),
    }
    if fpd_features:
        out["fpd_efps"] = efps(p, FPD_EFP_ARGS)
        out["efps"] = out["fpd_efps"][:, _w1_columns_of_fpd_set()]
    else:
        out["efps"] = efps(p, W1_EFP_ARGS)
    for k, name in enumerate(("etarel", "phirel", "ptrel")):
        out[name] = p[..., k][mask].astype(np.float64)
    return out
