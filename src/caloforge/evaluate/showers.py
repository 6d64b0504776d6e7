"""``caloforge evaluate``: compare candidate shower files with a reference, write a report.

One reference (normally Geant4) and any number of candidates (models, or other Geant4
samples). Per candidate: the eight W1 scores of SPEC 5 next to the reference-vs-reference
floor, the high-level classifier AUC, and for polar-readout (CaloChallenge) detectors the
separation powers, FPD/KPD and optionally the low-level classifier; every SPEC 4 figure;
``report.md`` and ``metrics.json`` in the output directory.

``config.protocol`` (:mod:`caloforge.evaluate.protocols`) picks the definitions of the
CaloChallenge metrics: caloforge's (the default) or the challenge's own (``calochallenge``:
its classifier, splits and calibration, jetnet's FPD/KPD estimators). Both use the
challenge's current high-level features (:func:`caloforge.calochallenge.high_level_inputs`).

Every classifier AUC comes with its resolving power (``auc_resolution`` in ``metrics.json``):
the noise of an AUC at the test size used (the minimum detectable AUC, see
:func:`caloforge.metrics.minimum_detectable_auc`), and the AUC that the same classifier gives,
at this sample size, for a known small error of the reference itself — showers 5 % wider
(:data:`DISTORTIONS`, ``distortion_check``). A small sample makes any candidate
look "indistinguishable"; these two numbers say whether it could have looked otherwise. A
candidate made by a shipped model also gets that model's held-out figure
(``assets/heldout_figures.json``) beside its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from caloforge import __version__, asset_path
from caloforge.detector import CellGrid, Detector, PolarGrid, common_detector
from caloforge.engines import make_engine
from caloforge.evaluate.common import EvaluationError, Progress, check_paths, labels, write_reports
from caloforge.evaluate.protocols import check_protocol, classifier_settings, protocol_seed
from caloforge.evaluate.report import shower_report
from caloforge.io import PointShowers, Showers, VoxelShowers, open_showers
from caloforge.kinds import Kind, fallback_kind, file_kind, get_kind, kind_of_file
from caloforge.observables import (
    ShowerObservables,
    compute_observables,
    layer_ring_edges,
    observables_from_file,
    radial_profile_edges,
)
from caloforge.safety import output_lock

if TYPE_CHECKING:
    from caloforge.metrics import ClassifierResult

__all__ = [
    "DISTORTIONS",
    "HELDOUT_FIGURES",
    "MIN_CLASSIFIER_SHOWERS",
    "Distortion",
    "EvaluationConfig",
    "evaluate",
    "evaluate_showers",
]

#: Fewer showers than this per sample and the 10-fold classifier is skipped (with a note).
MIN_CLASSIFIER_SHOWERS = 50
#: W1 draws when the configuration names none.
DEFAULT_DRAWS = 10
#: Protocols of the shower evaluator (:mod:`caloforge.evaluate.protocols`).
SHOWER_PROTOCOLS = ("caloforge", "calochallenge")


@dataclass(frozen=True)
class Distortion:
    """The known small error of the sensitivity check, applied to one half of the reference."""

    name: str  # in tables and sentences: "cannot tell {name} from Geant4"
    how: str  # how it is made, for the report
    factor: float = 1.05


#: The distortion used for each kind of shower file. Wider showers, because the SPEC 5
#: classifier hardly sees an energy-scale error (its features do not include the incident
#: energy): measured on 1,000 vs 1,000 Geant4 photons in ild-ecal, a 5 % energy-scale error
#: scores AUC 0.52, a 10 % one 0.55, 5 % wider showers 0.70 (docs/evaluation.md).
DISTORTIONS = {
    "points": Distortion(
        "showers 5 % wider",
        "every point's transverse coordinates (x, y, from the shower axis) scaled by 1.05 before the "
        "projection on cells and the threshold",
    ),
    "voxels": Distortion(
        "5 % of the energy one ring further out",
        "5 % of every voxel's energy moved to the next radial ring outwards (the outermost ring keeps "
        "its own)",
    ),
    "images": Distortion(
        "5 % of the energy one cell further out",
        "5 % of every cell's energy moved to its neighbour one cell further from the shower axis along "
        "the larger of its two offsets (the axis cell and the window's edge cells keep their own)",
    ),
}
#: Generator label -> that shipped model's held-out figures (docs/results.md).
HELDOUT_FIGURES = "heldout_figures.json"


@dataclass(frozen=True)
class EvaluationConfig:
    """Knobs of :func:`evaluate` (defaults: the published protocols)."""

    n_draws: int | None = None  # None: 10 (jets: 10 batches; the jetnet protocol's W1 5)
    draw_size: int | None = None
    classifier_splits: int | None = None  # None: the protocol's (caloforge 10 folds)
    classifier_epochs: int | None = None  # None: the protocol's (caloforge 10)
    low_level: bool = False
    plots: bool = True
    max_showers: int | None = None
    chunk_size: int = 2000
    seed: int = 0
    energy_tolerance: float = 0.05
    engine: str = "local"  # "dask": observables of each file chunk on a Dask cluster
    workers: int = 1  # of the local Dask cluster
    scheduler: str | None = None  # an existing Dask scheduler
    device: str = "cpu"  # of the classifiers (a torch device string, caloforge.devices)
    protocol: str = "caloforge"  # of the metrics a published protocol defines (evaluate.protocols)
    jet_type: str | None = None  # jet files only: the type of files that do not say theirs


@dataclass
class _Sample:
    path: Path
    label: str
    generator: str
    energy: np.ndarray
    observables: ShowerObservables | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    own_detector: str = ""


def _open_samples(
    reference: Path, candidates: Sequence[Path], config: EvaluationConfig
) -> tuple[Detector, list[_Sample]]:
    paths = [Path(reference), *map(Path, candidates)]
    if not candidates:
        raise EvaluationError("give at least one candidate file to compare with the reference")
    samples, detectors, kinds = [], [], []
    for path in paths:
        with open_showers(path) as f:
            if len(f) == 0:
                raise EvaluationError(f"'{path}' holds no showers")
            energy = f.read_energy()[: config.max_showers]
            detectors.append(f.detector)
            kinds.append(f.kind)
            samples.append(_Sample(path, "", f.generator, energy, attrs=dict(f.attrs)))
    ref_det = detectors[0]
    common = common_detector(detectors)
    for path, det in zip(paths[1:], detectors[1:], strict=True):
        if common is None and det.to_dict() != ref_det.to_dict():
            raise EvaluationError(
                f"'{path}' is for detector '{det.name}' but the reference '{paths[0]}' is for "
                f"'{ref_det.name}': compare showers of the same detector (or of one whose cells are a "
                "window of the other's, such as ild-ecal-30 of ild-ecal)"
            )
    for s, det, kind in zip(samples, detectors, kinds, strict=True):
        s.own_detector = det.name
        if common is not None and not get_kind(kind).positions and det.n_channels != common.n_channels:
            raise EvaluationError(
                f"'{s.path}' holds voxels on '{det.name}', a larger grid than the other files' "
                f"'{common.name}': only point files are projected onto a window; convert its point "
                f"file onto {common.name}"
            )
    lo, hi = samples[0].energy.min(), samples[0].energy.max()
    slack = config.energy_tolerance * (hi - lo if hi > lo else hi)
    for s in samples[1:]:
        if s.energy.min() < lo - slack or s.energy.max() > hi + slack:
            raise EvaluationError(
                f"'{s.path}' has incident energies {s.energy.min():.3g}-{s.energy.max():.3g} GeV, "
                f"outside the reference's {lo:.3g}-{hi:.3g} GeV: "
                "evaluate against a reference with the same spectrum"
            )
    for s, label in zip(samples, labels(paths, [s.generator for s in samples]), strict=True):
        s.label = label
    return common or ref_det, samples


def _voxels(path: Path, det: Detector, max_showers: int | None) -> VoxelShowers:
    """All showers of a file as voxels (points are voxelised on the detector's polar readout)."""
    from caloforge.projection import voxelise

    with open_showers(path, det) as f:
        batches = [
            chunk if isinstance(chunk, VoxelShowers) else voxelise(chunk, det)
            for chunk in f.iter_chunks(2000, stop=max_showers)
        ]
    return VoxelShowers.concatenate(batches)


def _distortion_kind(kind: str, det: Detector) -> str:
    """The :data:`DISTORTIONS` key of a file of ``kind`` on ``det``: its kind (points, polar
    voxels), or ``images`` for fixed-grid showers (not positions) on a cell grid."""
    return "images" if not get_kind(kind).positions and isinstance(det.readout, CellGrid) else kind


def _outward_cells(grid: CellGrid) -> np.ndarray:
    """Flat index, per cell of one layer, of its neighbour one cell further from the gun cell."""
    offset = np.arange(grid.n_cells) - grid.n_cells // 2
    dx, dy = np.meshgrid(offset, offset, indexing="ij")
    along_x = np.abs(dx) >= np.abs(dy)
    tx = np.clip(grid.n_cells // 2 + dx + np.where(along_x, np.sign(dx), 0), 0, grid.n_cells - 1)
    ty = np.clip(grid.n_cells // 2 + dy + np.where(along_x, 0, np.sign(dy)), 0, grid.n_cells - 1)
    return (tx * grid.n_cells + ty).reshape(-1)


def _distorted(showers: Showers, det: Detector) -> Showers:
    """``showers`` with the known distortion of their kind (:data:`DISTORTIONS`)."""
    factor = DISTORTIONS[_distortion_kind(showers.kind, det)].factor
    if isinstance(showers, VoxelShowers) and isinstance(det.readout, CellGrid):
        per_layer = det.n_cells_per_layer
        vox = showers.voxels.reshape(len(showers), det.n_layers, per_layer)
        share = np.float32(factor - 1)
        out = vox * (1 - share)
        np.add.at(out, (slice(None), slice(None), _outward_cells(det.readout)), share * vox)
        return VoxelShowers(showers.energy, out.reshape(len(showers), -1))
    if isinstance(showers, VoxelShowers):
        shape = (len(showers), det.n_layers, det.readout.n_alpha, det.readout.n_radial)
        vox = showers.voxels.reshape(shape)
        share = np.float32(factor - 1)
        out = vox * (1 - share)
        out[..., 1:] += share * vox[..., :-1]
        out[..., -1] += share * vox[..., -1]
        return VoxelShowers(showers.energy, out.reshape(len(showers), -1))
    points = showers.points.copy()
    points[..., :2] *= np.float32(factor)
    return PointShowers(showers.energy, points)


def _distorted_observables(
    path: Path, det: Detector, index: np.ndarray, config: EvaluationConfig
) -> ShowerObservables:
    """Observables of the showers ``index`` (sorted) of ``path`` with the known distortion
    (:data:`DISTORTIONS`), applied before the projection and threshold of
    :func:`~caloforge.observables.compute_observables` (as a mis-modelled simulation would be)."""
    parts = [compute_observables(_distorted(chunk, det), det) for chunk in _chunks(path, det, config, index)]
    return ShowerObservables.concatenate(parts)


def _chunks(path: Path, det: Detector, config: EvaluationConfig, index: np.ndarray | None = None) -> Any:
    """The showers of ``path`` chunk by chunk (only those of ``index``, sorted, if given)."""
    lo = 0
    with open_showers(path, det) as f:
        for chunk in f.iter_chunks(config.chunk_size, stop=config.max_showers):
            mine = (
                np.arange(len(chunk))
                if index is None
                else index[(index >= lo) & (index < lo + len(chunk))] - lo
            )
            if len(mine):
                yield chunk if index is None else chunk[mine]
            lo += len(chunk)


def _cell_level_inputs(
    path: Path,
    det: Detector,
    config: EvaluationConfig,
    index: np.ndarray | None = None,
    distort: bool = False,
) -> np.ndarray:
    """Cell-level classifier inputs (:func:`caloforge.metrics.cell_level_features`) of the
    showers of ``path`` (only ``index``, with the known distortion if ``distort``)."""
    from caloforge import metrics
    from caloforge.projection import apply_threshold, to_hits

    parts = []
    for chunk in _chunks(path, det, config, index):
        chunk = _distorted(chunk, det) if distort else chunk
        hits = apply_threshold(to_hits(chunk, det), det.threshold_mev)
        parts.append(metrics.cell_level_features(hits, chunk.energy, det))
    return np.concatenate(parts)


def _cell_level(
    sample: _Sample, det: Detector, config: EvaluationConfig, cache: dict[Path, Any]
) -> np.ndarray:
    """A sample's cell-level classifier inputs, computed once per file."""
    key = ("cells", sample.path)
    if key not in cache:
        cache[key] = _cell_level_inputs(sample.path, det, config)
    return cache[key]


def _cc_features(
    sample: _Sample, det: Detector, config: EvaluationConfig, cache: dict[Path, Any]
) -> tuple[VoxelShowers, dict[str, np.ndarray]]:
    """A sample's voxels and CaloChallenge features, computed once per file."""
    from caloforge import metrics

    if sample.path not in cache:
        vox = _voxels(sample.path, det, config.max_showers)
        cache[sample.path] = (vox, metrics.calochallenge_features(vox, det))
    return cache[sample.path]


def _cc_classifier_inputs(
    vox: VoxelShowers, feat: dict[str, np.ndarray], det: Detector, config: EvaluationConfig
) -> dict[str, np.ndarray]:
    """Inputs of the CaloChallenge classifiers, by result key.

    ``high_level_auc``: the challenge's high-level features (also FPD/KPD's,
    :func:`caloforge.calochallenge.high_level_inputs`); with ``config.low_level``,
    ``low_level_auc``: every voxel — ln(1 + E / threshold) (caloforge,
    :func:`caloforge.metrics.low_level_features`) or E / E_inc (calochallenge).
    """
    from caloforge import calochallenge, metrics

    out = {"high_level_auc": calochallenge.high_level_inputs(vox, det, feat)}
    if config.low_level:
        published = config.protocol == "calochallenge"
        out["low_level_auc"] = (
            calochallenge.low_level_inputs(vox, det) if published else metrics.low_level_features(vox, det)
        )
    return out


def _fit(a: np.ndarray, b: np.ndarray, config: EvaluationConfig, key: str) -> ClassifierResult:
    """The classifier of result ``key`` with the configured splits, epochs and seed: the SPEC 5
    classifier (``classifier_auc``) is caloforge's; the CaloChallenge ones follow the protocol."""
    from caloforge import calochallenge, metrics

    protocol = config.protocol if key in ("high_level_auc", "low_level_auc") else "caloforge"
    splits, epochs = classifier_settings(config.classifier_splits, config.classifier_epochs, protocol)
    if protocol == "calochallenge":
        return calochallenge.classifier_auc(
            a, b, n_runs=splits, epochs=epochs, seed=config.seed, device=config.device
        )
    return metrics.classifier_auc(
        a,
        b,
        n_splits=splits,
        epochs=epochs,
        seed=config.seed,
        hidden=metrics.LOW_LEVEL_HIDDEN
        if key in ("low_level_auc", "cell_level_auc")
        else metrics.HIGH_LEVEL_HIDDEN,
        device=config.device,
    )


def _distances(x: np.ndarray, y: np.ndarray, config: EvaluationConfig) -> dict[str, tuple[float, float]]:
    """FPD and KPD of high-level inputs by the protocol's estimators."""
    from caloforge import calochallenge, metrics

    if config.protocol == "calochallenge":
        seed = protocol_seed("calochallenge", config.seed)
        return {"fpd": calochallenge.fpd(x, y, seed=seed), "kpd": calochallenge.kpd(x, y, seed=seed)}
    return {"fpd": metrics.fpd(x, y, seed=config.seed), "kpd": metrics.kpd(x, y, seed=config.seed)}


def _calochallenge(
    reference: _Sample, candidate: _Sample, det: Detector, config: EvaluationConfig, cache: dict[Path, Any]
) -> tuple[dict[str, Any], dict[str, ClassifierResult]]:
    """The CaloChallenge metrics of one candidate, and the classifier fits behind its AUCs."""
    from caloforge import metrics

    ref_vox, ref_feat = _cc_features(reference, det, config, cache)
    cand_vox, cand_feat = _cc_features(candidate, det, config, cache)
    powers = metrics.separation_powers(ref_feat, cand_feat)
    ref_in = _cc_classifier_inputs(ref_vox, ref_feat, det, config)
    cand_in = _cc_classifier_inputs(cand_vox, cand_feat, det, config)
    out: dict[str, Any] = {
        "separation_power": _power_groups(powers),
        "separation_power_per_feature": powers,
        **_distances(ref_in["high_level_auc"], cand_in["high_level_auc"], config),
    }
    fits = {}
    for key in ref_in:
        # The high-level classifiers need MIN_CLASSIFIER_SHOWERS; the low-level one was asked for.
        if key == "low_level_auc" or min(len(ref_vox), len(cand_vox)) >= MIN_CLASSIFIER_SHOWERS:
            fits[key] = _fit(ref_in[key], cand_in[key], config, key)
            out[key] = fits[key].as_tuple()
    return out, fits


def _power_groups(powers: dict[str, float]) -> dict[str, float]:
    """Separation powers per feature (``E_layer_3``, …) as their mean per feature group."""
    groups: dict[str, list[float]] = {}
    for name, value in powers.items():
        groups.setdefault(name.rsplit("_", 1)[0] if name[-1].isdigit() else name, []).append(value)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _calochallenge_floor(
    reference: _Sample, det: Detector, config: EvaluationConfig, cache: dict[Path, Any]
) -> dict[str, Any]:
    """The CaloChallenge separation powers, FPD and KPD of two disjoint random halves of the
    reference (the floor of those figures, at half the reference's size per side)."""
    from caloforge import calochallenge, metrics

    vox, feat = _cc_features(reference, det, config, cache)
    n = len(vox) // 2
    perm = np.random.default_rng(config.seed + 1).permutation(len(vox))
    a, b = np.sort(perm[:n]), np.sort(perm[n : 2 * n])
    feat_a, feat_b = ({k: v[i] for k, v in feat.items()} for i in (a, b))
    x, y = (calochallenge.high_level_inputs(vox[i], det, f) for i, f in ((a, feat_a), (b, feat_b)))
    return {
        "n_per_half": n,
        "separation_power": _power_groups(metrics.separation_powers(feat_a, feat_b)),
        **_distances(x, y, config),
    }


def _distortion_check(
    ref: _Sample,
    cands: Sequence[_Sample],
    det: Detector,
    config: EvaluationConfig,
    cache: dict[Path, Any],
    notes: list[str],
    progress: Progress | None,
) -> dict[str, Any] | None:
    """What a known small error scores: every classifier on one reference half against the other
    half with the known distortion of its kind (:data:`DISTORTIONS`: showers 5 % wider).

    Run once per evaluation (not per candidate) at the candidates' per-class size: the smallest
    candidate or half the reference, whichever is smaller; the same classifiers, splits,
    epochs and seed as for the candidates. ``None`` (with a note) below
    :data:`MIN_CLASSIFIER_SHOWERS` per half.
    """
    from caloforge import metrics

    n_ref, smallest = len(ref.energy), min(len(c.energy) for c in cands)
    n = min(smallest, n_ref // 2)
    size_from = "half the reference" if n_ref // 2 < smallest else "the smallest candidate"
    if n < MIN_CLASSIFIER_SHOWERS:
        notes.append(
            f"known-distortion check not run: it needs {MIN_CLASSIFIER_SHOWERS} showers per class, "
            f"{size_from} gives {n}; the AUCs have no measured sensitivity."
        )
        return None
    perm = np.random.default_rng(config.seed).permutation(n_ref)
    a, b = np.sort(perm[:n]), np.sort(perm[n : 2 * n])
    pairs = {
        "classifier_auc": (
            ref.observables.subset(a).high_level(),
            _distorted_observables(ref.path, det, b, config).high_level(),
        )
    }
    with open_showers(ref.path, det) as f:
        kinds = {"classifier_auc": DISTORTIONS[_distortion_kind(f.kind, det)]}
    if config.low_level and isinstance(det.readout, CellGrid):
        cells = _cell_level(ref, det, config, cache)
        pairs["cell_level_auc"] = (cells[a], _cell_level_inputs(ref.path, det, config, b, distort=True))
        kinds["cell_level_auc"] = kinds["classifier_auc"]
    if isinstance(det.readout, PolarGrid):
        vox, feat = _cc_features(ref, det, config, cache)
        distorted = _distorted(vox[b], det)
        inputs_a = _cc_classifier_inputs(vox[a], {k: v[a] for k, v in feat.items()}, det, config)
        inputs_b = _cc_classifier_inputs(
            distorted, metrics.calochallenge_features(distorted, det), det, config
        )
        pairs |= {k: (inputs_a[k], inputs_b[k]) for k in inputs_a}
        kinds |= {k: DISTORTIONS["voxels"] for k in inputs_a}
    aucs = {}
    for i, (key, (x, y)) in enumerate(pairs.items()):
        if progress is not None:
            progress("known-distortion check", i, len(pairs))
        fit = _fit(x, y, config, key)
        aucs[key] = {
            "auc": list(fit.as_tuple()),
            "n_test_per_class": list(fit.n_test),
            "standard_error": metrics.auc_standard_error(0.5, *fit.n_test),
            "minimum_detectable_auc": fit.minimum_detectable_auc(),
            # detected: above the minimum detectable AUC by more than its spread over the splits
            "detects": bool(fit.auc - fit.as_tuple()[1] >= fit.minimum_detectable_auc()),
            "distortion": kinds[key].name,
            "how": kinds[key].how,
        }
    if progress is not None:
        progress("known-distortion check", len(pairs), len(pairs))
    return {"n_per_class": n, "size_from": size_from, "auc": aucs}


def _heldout_figures() -> dict[str, Any]:
    """Generator label -> held-out figures of that shipped model (``assets/heldout_figures.json``)."""
    return json.loads(asset_path(HELDOUT_FIGURES).read_text())["figures"]


def _heldout(sample: _Sample, figures: dict[str, Any], detector: str | None = None) -> dict[str, Any] | None:
    """The held-out figures of the shipped model that made ``sample``, if any.

    Matched on the generator label (a label several shipped models share holds a list of
    entries); where an entry names the shipped weights (``model``) and the file names other
    weights (a model trained by the user), that entry is not the file's figure; where it names
    the readout it was measured on (``detector``) and the evaluation runs on another one (a
    window of it, say), neither.
    """
    entries = figures.get(sample.generator)
    if entries is None:
        return None
    made_by = sample.attrs.get("model")
    for entry in entries if isinstance(entries, list) else [entries]:
        if detector is not None and entry.get("detector", detector) != detector:
            continue
        if "model" not in entry or made_by is None or Path(str(made_by)).name == entry["model"]:
            return entry
    return None


def _resolution(
    fit: ClassifierResult, check: dict[str, Any] | None, key: str, reference: str
) -> dict[str, Any]:
    """Resolving power of one candidate AUC and what it means, for the report.

    The noise: the Hanley–McNeil standard error at AUC = 0.5 for the test showers per class the
    classifier used, SE = √((n_a + n_b + 1) / (12 n_a n_b)), and the minimum detectable AUC
    0.5 + 2·SE (:func:`caloforge.metrics.minimum_detectable_auc`). The sensitivity: the AUC of
    the known-distortion check (:func:`_distortion_check`) for the same classifier. When that
    AUC is below the check's own minimum detectable AUC the sample is too small to mean
    anything by an AUC near 0.5; otherwise an AUC below the minimum detectable one is
    consistent with the reference.
    """
    from caloforge import metrics

    n_a, n_b = fit.n_test
    minimum = metrics.minimum_detectable_auc(n_a, n_b)
    above = fit.auc >= minimum
    distortion = check["auc"].get(key) if check is not None else None
    if distortion is None:
        verdict = "unchecked"
        sentence = (
            "above the minimum detectable AUC: distinguishable from the reference"
            if above
            else "below the minimum detectable AUC, but the known-distortion check did not run, "
            "so what this sample size can detect is not known"
        )
    elif not distortion["detects"]:
        verdict = "too_small"
        sentence = (
            f"too small a sample: this classifier cannot tell {distortion['distortion']} from {reference} "
            "at this size, so an AUC near 0.5 does not mean indistinguishable"
        )
        if above:
            sentence += " (this AUC is above the minimum detectable one all the same: the samples differ)"
    elif above:
        verdict = "distinguishable"
        sentence = (
            f"distinguishable from the reference at this sample size (above the minimum detectable AUC "
            f"{minimum:.3f}; with {distortion['distortion']} the reference scores {distortion['auc'][0]:.3f})"
        )
    else:
        verdict = "consistent"
        sentence = (
            f"consistent with the reference at this sample size (it would detect {distortion['distortion']}: "
            f"AUC {distortion['auc'][0]:.3f})"
        )
    return {
        "auc": list(fit.as_tuple()),
        "n_test_per_class": [n_a, n_b],
        "standard_error": metrics.auc_standard_error(0.5, n_a, n_b),
        "minimum_detectable_auc": minimum,
        "distortion_auc": distortion["auc"] if distortion is not None else None,
        "distortion": distortion["distortion"] if distortion is not None else None,
        "verdict": verdict,
        "sentence": sentence,
    }


def _weights(fit: ClassifierResult, observables: ShowerObservables) -> dict[str, Any]:
    """The classifier weights of a fit (:func:`caloforge.metrics.weight_summary`), its least
    reference-like candidate showers described by their incident energy and main observables."""
    from caloforge import metrics

    summary = metrics.weight_summary(fit)
    for shower in summary["least_like"]:
        k = shower["row"]
        shower |= {
            "energy_gev": float(observables.energy[k]),
            "e_ratio": float(observables.e_ratio[k]),
            "n_hits": int(observables.n_hits[k]),
            "cog_z": float(observables.cog[k, 2]),
        }
    return summary


def _evaluation_kind(reference: Path, candidates: Sequence[Path]) -> Kind:
    """The kind whose evaluator compares the inputs (:func:`~caloforge.kinds.file_kind` of the
    reference: files no kind recognises go to the shower evaluator, which says why); candidates
    of a kind another evaluator compares (jets and showers) are refused in one line."""
    ref = file_kind(reference)
    default = fallback_kind()
    for cand in candidates:
        kind = file_kind(cand)
        if kind.evaluator == ref.evaluator:
            continue
        if ref.evaluator != default.evaluator:  # e.g. a jet reference: the candidate is wrong
            if not cand.exists():
                raise EvaluationError(f"candidate '{cand}' does not exist")
            if cand.is_dir():
                raise EvaluationError(f"'{cand}' is a directory: give {ref.noun_one} files to compare")
            raise EvaluationError(
                f"'{cand}' is not a {ref.noun_one} file but the reference '{reference}' is: compare "
                f"{ref.noun} with {ref.noun}"
            )
        if not reference.exists():
            raise EvaluationError(f"reference '{reference}' does not exist")
        own = kind_of_file(reference) or default
        raise EvaluationError(
            f"'{cand}' is a {kind.noun_one} file but the reference '{reference}' is not: compare "
            f"{kind.noun} with a {kind.noun_one} reference and {own.noun} with a {own.noun_one} reference"
        )
    return ref


def evaluate(
    reference: str | Path,
    candidates: Sequence[str | Path],
    out_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate ``candidates`` against ``reference``; writes the report into ``out_dir``.

    Returns the content of ``metrics.json``. ``progress(stage, done, total)`` is called as
    the slow parts advance. A report already in ``out_dir`` (``report.md`` or
    ``metrics.json``) is refused with :class:`FileExistsError` before any work unless
    ``overwrite``; it is then replaced file by file, atomically.

    The reference's output kind (:mod:`caloforge.kinds`) says which evaluator runs: shower
    files (points, voxels, cell images) :func:`evaluate_showers`; jet files
    :func:`caloforge.evaluate.jets.evaluate_jet_files`, with ``n_draws``, ``draw_size``,
    ``classifier_splits``, ``classifier_epochs``, ``plots``, ``max_showers`` and ``seed`` as its
    batches, batch size, splits, epochs, plots, jets and seed.
    """
    kind = _evaluation_kind(Path(reference), [Path(c) for c in candidates])
    return kind.evaluate(reference, candidates, out_dir, config, progress, overwrite)


def evaluate_showers(
    reference: str | Path,
    candidates: Sequence[str | Path],
    out_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate` of shower files (points, polar voxels, cell images), the evaluator of
    the shower kinds."""
    from caloforge import metrics

    out = Path(out_dir)
    protocol = check_protocol(config.protocol, SHOWER_PROTOCOLS, "shower files")
    if config.n_draws is None:
        config = replace(config, n_draws=DEFAULT_DRAWS)
    check_paths([Path(reference), *map(Path, candidates)], out, overwrite)
    det, samples = _open_samples(Path(reference), [Path(c) for c in candidates], config)
    if protocol.name == "calochallenge" and not isinstance(det.readout, PolarGrid):
        raise EvaluationError(
            f"the calochallenge protocol needs voxel showers on a polar readout (calochallenge-ds2); "
            f"'{reference}' is for '{det.name}': use --protocol caloforge"
        )
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "report.md"):  # one evaluate per report directory
        notes: list[str] = []

        total = sum(len(s.energy) for s in samples)
        done = 0

        def step(k: int) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress("observables", done, total)

        with contextlib.ExitStack() as stack:
            cluster = None
            if config.engine != "local":
                cluster = stack.enter_context(make_engine(config.engine, config.workers, config.scheduler))
            for s in samples:
                s.observables = observables_from_file(
                    s.path,
                    det,
                    chunk_size=config.chunk_size,
                    max_showers=config.max_showers,
                    progress=step,
                    engine=cluster,
                )
        for s in samples:
            if s.own_detector != det.name:
                obs = s.observables
                share = float(np.mean(obs.lost_mev / np.maximum(obs.lost_mev + obs.e_vis, 1e-12)))
                notes.append(
                    f"{s.label} ({s.own_detector}) is compared on the cells of {det.name}: {share:.2%} of "
                    "its visible energy falls outside them on average and is left out."
                )
        ref, cands = samples[0], samples[1:]
        n_ref = len(ref.energy)
        if n_ref < 4:
            raise EvaluationError(f"the reference '{ref.path}' has {n_ref} showers: at least 4 are needed")
        size = config.draw_size
        if size is None:
            size = metrics.default_draw_size(n_ref, min(len(c.energy) for c in cands))
            wanted = metrics.DEFAULT_DRAW_SIZE
            if size < wanted:
                notes.append(
                    f"W1 draws use {size} showers per side (the protocol asks for {wanted:,}; limited by "
                    f"{'half the reference' if size == n_ref // 2 else 'the smallest candidate'}); "
                    f"the floor scales as 1/sqrt(n)."
                )
        elif 2 * size > n_ref:
            raise EvaluationError(
                f"--draw-size {size} needs a reference of at least {2 * size} showers for the floor; "
                f"it has {n_ref}"
            )
        floor = metrics.w1_floor(ref.observables, n_draws=config.n_draws, draw_size=size, seed=config.seed)
        if not floor.disjoint:
            notes.append(
                f"not enough reference showers for {config.n_draws} disjoint draws of {size}: each draw "
                "re-splits the reference at random, so the quoted spreads are too small."
            )
        cc_cache: dict[Path, Any] = {}
        check = _distortion_check(ref, cands, det, config, cc_cache, notes, progress)
        polar = isinstance(det.readout, PolarGrid)
        cc_floor = _calochallenge_floor(ref, det, config, cc_cache) if polar else None
        reference_name = "Geant4" if ref.generator == "geant4" else f"the reference ({ref.label})"
        heldout_figures = _heldout_figures()
        result: dict[str, Any] = {
            "caloforge_version": __version__,
            "detector": det.name,
            "reference": {"path": str(ref.path), "label": ref.label, "n_showers": n_ref},
            "w1_unit": metrics.W1_UNIT,
            "w1_observables": list(metrics.W1_OBSERVABLES),
            "w1_floor": {k: list(v) for k, v in floor.items()} | {"meta": floor.metadata()},
            "distortion_check": check,
            "calochallenge_floor": cc_floor,
            "protocol": protocol.name,
            "metric_protocols": _metric_protocols(
                protocol.name, isinstance(det.readout, PolarGrid), config.low_level
            ),
            "config": asdict(config),
            "candidates": [],
            "notes": notes,
        }
        classifier_results = {}
        weight_fits: dict[str, dict[str, ClassifierResult]] = {}
        for i, cand in enumerate(cands):
            if progress is not None:
                progress("metrics", i, len(cands))
            w1 = metrics.w1_scores(
                ref.observables, cand.observables, n_draws=config.n_draws, draw_size=size, seed=config.seed
            )
            n_min = min(n_ref, len(cand.energy))
            clf = None
            fits = {}
            if n_min >= MIN_CLASSIFIER_SHOWERS:
                clf = _fit(
                    ref.observables.high_level(), cand.observables.high_level(), config, "classifier_auc"
                )
                classifier_results[cand.label] = fits["classifier_auc"] = clf
            else:
                notes.append(
                    f"classifier not run for {cand.label}: it needs {MIN_CLASSIFIER_SHOWERS} showers per "
                    f"sample (10 folds), the smaller sample has {n_min}."
                )
            entry: dict[str, Any] = {
                "path": str(cand.path),
                "label": cand.label,
                "generator": cand.generator,
                "n_showers": len(cand.energy),
                "w1": {k: list(v) for k, v in w1.items()} | {"meta": w1.metadata()},
                "classifier_auc": list(clf.as_tuple()) if clf else None,
                "classifier_n_per_class": clf.n_per_class if clf else 0,
            }
            if isinstance(det.readout, PolarGrid):
                entry["calochallenge"], cc_fits = _calochallenge(ref, cand, det, config, cc_cache)
                fits |= cc_fits
            elif config.low_level and clf is not None:
                fits["cell_level_auc"] = _fit(
                    _cell_level(ref, det, config, cc_cache),
                    _cell_level(cand, det, config, cc_cache),
                    config,
                    "cell_level_auc",
                )
                entry["cell_level_auc"] = list(fits["cell_level_auc"].as_tuple())
            entry["auc_resolution"] = {
                key: _resolution(fit, check, key, reference_name) for key, fit in fits.items()
            }
            entry["classifier_weights"] = {
                key: _weights(fit, cand.observables) for key, fit in fits.items() if len(fit.index_b)
            }
            weight_fits[cand.label] = {k: f for k, f in fits.items() if len(f.scores_b)}
            held = _heldout(cand, heldout_figures, det.name)
            if held is not None:  # the held-out figures are caloforge's: not beside another protocol's
                mine = result["metric_protocols"]
                held = held | {"auc": {k: v for k, v in held["auc"].items() if mine.get(k) == "caloforge"}}
            entry["heldout"] = held
            result["candidates"].append(entry)
        if progress is not None:
            progress("metrics", len(cands), len(cands))
        if float(ref.attrs.get("pair_separation_mm", 0.0) or 0.0) > 0:
            result["pairs"] = _pairs(ref, cands, size, config)

        figures: dict[str, str] = {}
        if config.plots:
            figures = _write_plots(out, det, ref, cands, classifier_results, weight_fits, progress)
        result["figures"] = figures
        result["figure_captions"] = _figure_captions(figures, det)
        write_reports(out, result, shower_report(result))
        return result


def _metric_protocols(protocol: str, polar: bool, low_level: bool) -> dict[str, str]:
    """Which protocol made each figure of a shower report: the SPEC 5 scores and the separation
    powers are caloforge's; the CaloChallenge classifiers and FPD/KPD follow ``protocol``."""
    out = dict.fromkeys(("w1", "classifier_auc"), "caloforge")
    if low_level and not polar:
        out["cell_level_auc"] = "caloforge"
    if polar:
        published = ("high_level_auc", "fpd", "kpd") + (("low_level_auc",) if low_level else ())
        out |= {"separation_power": "caloforge"} | dict.fromkeys(published, protocol)
    return out


def _pairs(ref: _Sample, cands: Sequence[_Sample], size: int, config: EvaluationConfig) -> dict[str, Any]:
    """Two-shower events (:mod:`caloforge.pairs`): W1 of the clusters' separation and energy
    sharing for every candidate, with the reference's floor at the same draw size."""
    from caloforge.pairs import pair_floor, pair_observables_from_file, pair_w1

    separation, ref_obs = pair_observables_from_file(ref.path, config.max_showers)
    cand_obs = {}
    for cand in cands:
        try:
            theirs, cand_obs[cand.label] = pair_observables_from_file(cand.path, config.max_showers)
        except ValueError as exc:
            raise EvaluationError(f"the reference holds pairs {separation:g} mm apart, but {exc}") from None
        if not np.isclose(theirs, separation):
            raise EvaluationError(
                f"'{cand.path}' holds pairs {theirs:g} mm apart, the reference {separation:g} mm: "
                "compare like with like"
            )
    n = min(size, len(ref_obs["separation"]) // 2, *(len(o["separation"]) for o in cand_obs.values()))
    return {
        "separation_mm": separation,
        "floor": pair_floor(ref_obs, n, config.n_draws, config.seed),
        "means": {"reference": {k: float(np.mean(v)) for k, v in ref_obs.items()}}
        | {label: {k: float(np.mean(v)) for k, v in o.items()} for label, o in cand_obs.items()},
        "candidates": {
            label: pair_w1(ref_obs, o, n, config.n_draws, config.seed) for label, o in cand_obs.items()
        },
    }


def _cell_noun(det: Detector) -> str:
    """The readout channel in figure labels and captions: "voxel" on a polar (voxel) readout,
    "cell" on a cell grid (the cells of cell images included)."""
    return "voxel" if isinstance(det.readout, PolarGrid) else "cell"


def _figure_captions(figures: dict[str, str], det: Detector) -> dict[str, str]:
    """One sentence per written figure (:func:`caloforge.plots.figure_caption`), the same keys."""
    from caloforge.plots import figure_caption

    return {name: figure_caption(name, _cell_noun(det)) for name in figures}


def _write_plots(
    out: Path,
    det: Detector,
    ref: _Sample,
    cands: Sequence[_Sample],
    classifier_results: dict[str, Any],
    weight_fits: dict[str, dict[str, ClassifierResult]],
    progress: Progress | None,
) -> dict[str, str]:
    from caloforge import plots

    directory = out / "plots"
    directory.mkdir(exist_ok=True)
    candidates = {c.label: c.observables for c in cands}
    figs = plots.distribution_figures(
        ref.observables,
        candidates,
        ref.label,
        threshold_mev=det.threshold_mev,
        long_edges=det.long_edges,
        radial_edges_mm=det.radial_edges_mm,
        profile_edges_mm=radial_profile_edges(det),
        cell_noun=_cell_noun(det),
        layer_edges_mm=layer_ring_edges(det),
    )
    if classifier_results:
        figs["classifier_scores"] = plots.plot_classifier_scores(
            classifier_results, reference_label=ref.label
        )
    if any(weight_fits.values()):
        figs["classifier_weights"] = plots.plot_classifier_weights(
            {k: v for k, v in weight_fits.items() if v}, reference_label=ref.label
        )
    written = {}
    for i, (name, fig) in enumerate(figs.items()):
        png, _ = plots.save_figure(fig, directory / name)
        written[name] = str(png.relative_to(out))
        if progress is not None:
            progress("plots", i + 1, len(figs))
    return written
