"""The CaloChallenge 2022's own evaluation conventions (``code/evaluate.py`` of its public
repository), for figures that stand next to its published tables.

* :func:`high_level_inputs` — the ``cls-high`` (and FPD/KPD) inputs: log10 E_inc, log10 of the
  layer energies, centres and widths in x/y divided by 100, log10 E_tot, the sparsities, the
  radial centres and widths divided by 100 (energies in MeV, lengths in mm, every log10 of
  E + 1e-8). Not standardised.
* :func:`low_level_inputs` — the ``cls-low`` inputs: log10 E_inc and every voxel / E_inc.
* :func:`classifier_auc` — the challenge's classifier: a float64 DNN (input layer and
  ``n_layer`` more hidden layers of ``hidden`` units, LeakyReLU), Adam (lr 2e-4), batches of
  1000, 50 epochs; the epoch with the best accuracy on the test split is kept, its scores are
  calibrated by isotonic regression on the test split, and the AUC of the calibrated scores on
  the validation split is the result. Splits 60/20/20 of each class (the challenge fixes
  60k/20k/20k showers for datasets 2 and 3, i.e. these fractions of its 100k test files).
* :func:`fpd` / :func:`kpd` — jetnet's estimators with the challenge's arguments
  (``min_samples=10_000``, ``batch_size=10_000``).

Our code, their facts: the definitions are read from their code, nothing of it is copied.

>>> from caloforge.io import VoxelShowers
>>> one = np.zeros((1, 6480), np.float32); one[0, 0] = 10.0   # 10 MeV in voxel 0 of layer 0
>>> x = high_level_inputs(VoxelShowers([1.0], one), "calochallenge-ds2")
>>> x.shape, round(float(x[0, 0]), 3), round(float(x[0, 1]), 3), round(float(x[0, 2]), 3)
((1, 362), 3.0, 1.0, -8.0)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from caloforge.detector import Detector, get_detector
from caloforge.io import VoxelShowers
from caloforge.metrics import (
    ClassifierResult,
    _mlp,
    auc_standard_error,
    calochallenge_features,
    classifier_inputs,
    fpd_jetnet,
    kpd_jetnet,
)

__all__ = [
    "FPD_MAX_SAMPLES",
    "FPD_MIN_SAMPLES",
    "KPD_BATCH_SIZE",
    "SPLIT",
    "classifier_auc",
    "fpd",
    "high_level_inputs",
    "kpd",
    "low_level_inputs",
]

#: Train / test (epoch choice and calibration) / validation (the AUC) fractions of each class.
SPLIT = (0.6, 0.2, 0.2)
#: The challenge's arguments to jetnet's FPD and KPD.
FPD_MIN_SAMPLES = 10_000
FPD_MAX_SAMPLES = 50_000  # jetnet's default, which the challenge keeps
KPD_BATCH_SIZE = 10_000
#: log10(E + LOG_OFFSET) of the energies in the high-level inputs.
LOG_OFFSET = 1e-8


def high_level_inputs(
    voxels: VoxelShowers, detector: str | Detector, features: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """``(n, 2 + 8 L)`` ``cls-high`` inputs, in the challenge's column order (see the module).

    ``features``: :func:`caloforge.metrics.calochallenge_features` of ``voxels`` if already
    computed (on the thresholded voxels, as the challenge's are).
    """
    f = calochallenge_features(voxels, detector) if features is None else features
    e_inc = voxels.energy.reshape(-1, 1) * 1000.0  # GeV -> MeV, the files' unit
    return np.concatenate(
        [
            np.log10(e_inc),
            np.log10(f["E_layer"] + LOG_OFFSET),
            f["EC_x"] / 1e2,
            f["EC_y"] / 1e2,
            f["width_x"] / 1e2,
            f["width_y"] / 1e2,
            np.log10(np.asarray(f["E_tot"]).reshape(-1, 1) + LOG_OFFSET),
            f["sparsity"],
            f["EC_r"] / 1e2,
            f["width_r"] / 1e2,
        ],
        axis=1,
    )


def low_level_inputs(voxels: VoxelShowers, detector: str | Detector) -> np.ndarray:
    """``(n, 1 + n_voxels)`` ``cls-low`` inputs: log10(E_inc / MeV), then every voxel below the
    detector's threshold set to 0 and divided by E_inc.

    >>> v = VoxelShowers([1.0], np.array([[0.01, 500.0] + [0.0] * 6478]))
    >>> low_level_inputs(v, "calochallenge-ds2")[0, :3].tolist()
    [3.0, 0.0, 0.5]
    """
    det = get_detector(detector)
    e_inc = voxels.energy.reshape(-1, 1) * 1000.0
    e = voxels.voxels.astype(np.float64)
    e = np.where(e < det.threshold_mev, 0.0, e)
    return np.concatenate([np.log10(e_inc), e / e_inc], axis=1)


def fpd(x: np.ndarray, y: np.ndarray, seed: int = 42) -> tuple[float, float]:
    """FPD of high-level inputs as the challenge computes it: :func:`caloforge.metrics.fpd_jetnet`
    with ``min_samples=10_000`` (bootstrapped from samples of any size)."""
    return fpd_jetnet(x, y, min_samples=FPD_MIN_SAMPLES, max_samples=FPD_MAX_SAMPLES, seed=seed)


def kpd(x: np.ndarray, y: np.ndarray, seed: int = 42) -> tuple[float, float]:
    """KPD of high-level inputs as the challenge computes it: :func:`caloforge.metrics.kpd_jetnet`
    with ``batch_size=10_000``."""
    return kpd_jetnet(x, y, batch_size=KPD_BATCH_SIZE, seed=seed)


def _dnn(n_in: int, hidden: int, n_layer: int) -> Any:
    """The challenge's DNN: an input layer and ``n_layer`` more of ``hidden`` units, LeakyReLU
    with torch's default slope 0.01, one logit; float64."""
    return _mlp(n_in, (hidden,) * (n_layer + 1), slope=0.01).double()


def _split(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Train, test and validation indices of one class: the challenge's fractions of a
    shuffle, the remainder to validation (``np.split`` at the cumulated counts)."""
    counts = (n * np.array(SPLIT)).astype(int)
    return np.split(rng.permutation(n), counts.cumsum()[:-1])


def _one_run(
    a: np.ndarray,
    b: np.ndarray,
    seed: int,
    epochs: int,
    hidden: int,
    n_layer: int,
    batch_size: int,
    lr: float,
    device: str,
) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and calibrated validation scores (of ``a``, of ``b``) of one training."""
    import torch
    from sklearn.isotonic import IsotonicRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    (tr_a, te_a, va_a), (tr_b, te_b, va_b) = _split(len(a), rng), _split(len(b), rng)

    def data(ia: np.ndarray, ib: np.ndarray) -> tuple[Any, Any]:
        x = np.concatenate([a[ia], b[ib]])
        y = np.concatenate([np.zeros(len(ia)), np.ones(len(ib))])
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    (x_tr, y_tr), (x_te, y_te), (x_va, y_va) = data(tr_a, tr_b), data(te_a, te_b), data(va_a, va_b)
    torch.manual_seed(seed)
    net = _dnn(a.shape[1], hidden, n_layer).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)

    def scores(x: Any) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            return torch.sigmoid(net(x)).cpu().numpy().ravel()

    best_acc, best_state = -1.0, copy.deepcopy(net.state_dict())
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            idx = idx.to(device)
            opt.zero_grad()
            loss_fn(net(x_tr[idx]), y_tr[idx, None]).backward()
            opt.step()
        acc = float(np.mean(np.round(scores(x_te)) == y_te.cpu().numpy()))
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(net.state_dict())
        if acc == 1.0:
            break
    net.load_state_dict(best_state)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1.0 - 1e-6)
    iso.fit(scores(x_te), y_te.cpu().numpy())
    calibrated = iso.predict(scores(x_va))
    truth = y_va.cpu().numpy()
    return float(roc_auc_score(truth, calibrated)), calibrated[truth == 0], calibrated[truth == 1]


def classifier_auc(
    features_a: np.ndarray,
    features_b: np.ndarray,
    n_runs: int = 1,
    epochs: int = 50,
    seed: int = 0,
    hidden: int = 2048,
    n_layer: int = 2,
    batch_size: int = 1000,
    lr: float = 2e-4,
    device: str = "cpu",
) -> ClassifierResult:
    """The challenge's classifier AUC of ``features_a`` (label 0) against ``features_b`` (label 1).

    Each of ``n_runs`` runs shuffles both samples afresh (seed ``seed + run``), splits each
    class 60/20/20 and trains, picks, calibrates and scores as the module describes; the
    larger sample is first cut to the size of the smaller (the challenge's script needs equal
    sizes). ``auc`` is the mean over the runs and ``auc_std`` their standard deviation — or,
    for one run, the Hanley–McNeil standard error of its AUC on the validation split
    (:func:`caloforge.metrics.auc_standard_error`). ``scores_a``/``scores_b`` are the
    calibrated validation scores of the first run (so :attr:`ClassifierResult.n_test` is one
    validation split). Inputs are used as given (not standardised).
    """
    import torch

    a, b = classifier_inputs(features_a, features_b)
    if n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {n_runs}")
    n = min(len(a), len(b))
    if int(n * SPLIT[1]) < 1 or n - int(n * SPLIT[0]) - int(n * SPLIT[1]) < 1:
        raise ValueError(f"need at least 5 samples per class for the 60/20/20 split, got {n}")
    rng = np.random.default_rng(seed)
    a, b = a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]
    runs = []
    with torch.random.fork_rng(devices=[]):
        for run in range(n_runs):
            runs.append(_one_run(a, b, seed + run, epochs, hidden, n_layer, batch_size, lr, device))
    aucs_arr = np.array([auc for auc, _, _ in runs])
    _, first_a, first_b = runs[0]
    spread = (
        float(aucs_arr.std()) if n_runs > 1 else auc_standard_error(runs[0][0], len(first_a), len(first_b))
    )
    return ClassifierResult(
        auc=float(aucs_arr.mean()),
        auc_std=spread,
        scores_a=first_a,
        scores_b=first_b,
        aucs=aucs_arr,
        n_per_class=n,
    )
