"""``caloforge evaluate``: compare candidate shower files with a reference, write a report.

One reference (normally Geant4) and any number of candidates (models, or other Geant4
samples). Per candidate: the eight W1 scores of SPEC 5 next to the reference-vs-reference
floor, the high-level classifier AUC, and for polar-readout (CaloChallenge) detectors the
separation powers, FPD/KPD and optionally the low-level classifier; every SPEC 4 figure;
``report.md`` and ``metrics.json`` in the output directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from caloforge import __version__
from caloforge.detector import Detector, PolarGrid
from caloforge.io import VoxelShowers, atomic_write_text, open_showers
from caloforge.observables import ShowerObservables, observables_from_file, radial_profile_edges

__all__ = ["EvaluationConfig", "EvaluationError", "evaluate"]

#: Fewer showers than this per sample and the 10-fold classifier is skipped (with a note).
MIN_CLASSIFIER_SHOWERS = 50
#: The CaloChallenge's high-level classifier and FPD/KPD inputs (besides log10 E_inc).
HIGH_LEVEL_KEYS = ("E_layer", "EC_x", "EC_y", "width_x", "width_y")


class EvaluationError(ValueError):
    """The inputs cannot be compared as asked."""


@dataclass(frozen=True)
class EvaluationConfig:
    """Knobs of :func:`evaluate` (defaults: the published protocols)."""

    n_draws: int = 10
    draw_size: int | None = None
    classifier_splits: int = 10
    classifier_epochs: int = 10
    low_level: bool = False
    plots: bool = True
    max_showers: int | None = None
    chunk_size: int = 2000
    seed: int = 0
    energy_tolerance: float = 0.05


@dataclass
class _Sample:
    path: Path
    label: str
    generator: str
    energy: np.ndarray
    observables: ShowerObservables | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str, int, int], None]


def _labels(paths: Sequence[Path], generators: Sequence[str]) -> list[str]:
    """Readable, unique legend names: the generator, plus the file name where needed."""
    labels = [
        g if generators.count(g) == 1 else f"{g} ({p.name})" for p, g in zip(paths, generators, strict=True)
    ]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i}" for i, lab in enumerate(labels)]


def _open_samples(
    reference: Path, candidates: Sequence[Path], config: EvaluationConfig
) -> tuple[Detector, list[_Sample]]:
    paths = [Path(reference), *map(Path, candidates)]
    if not candidates:
        raise EvaluationError("give at least one candidate file to compare with the reference")
    samples, detectors = [], []
    for path in paths:
        with open_showers(path) as f:
            if len(f) == 0:
                raise EvaluationError(f"'{path}' holds no showers")
            energy = f.read_energy()[: config.max_showers]
            detectors.append(f.detector)
            samples.append(_Sample(path, "", f.generator, energy, attrs=dict(f.attrs)))
    ref_det = detectors[0]
    for path, det in zip(paths[1:], detectors[1:], strict=True):
        if det.to_dict() != ref_det.to_dict():
            raise EvaluationError(
                f"'{path}' is for detector '{det.name}' but the reference '{paths[0]}' is for "
                f"'{ref_det.name}': compare showers of the same detector"
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
    for s, label in zip(samples, _labels(paths, [s.generator for s in samples]), strict=True):
        s.label = label
    return ref_det, samples


def _voxels(path: Path, det: Detector, max_showers: int | None) -> VoxelShowers:
    """All showers of a file as voxels (points are voxelised on the detector's polar readout)."""
    from caloforge.projection import voxelise

    with open_showers(path, det) as f:
        batches = [
            chunk if isinstance(chunk, VoxelShowers) else voxelise(chunk, det)
            for chunk in f.iter_chunks(2000, stop=max_showers)
        ]
    return VoxelShowers.concatenate(batches)


def _calochallenge(
    reference: _Sample, candidate: _Sample, det: Detector, config: EvaluationConfig, cache: dict[Path, Any]
) -> dict[str, Any]:
    from caloforge import metrics

    def features(sample: _Sample) -> tuple[VoxelShowers, dict[str, np.ndarray]]:
        if sample.path not in cache:
            vox = _voxels(sample.path, det, config.max_showers)
            cache[sample.path] = (vox, metrics.calochallenge_features(vox, det))
        return cache[sample.path]

    ref_vox, ref_feat = features(reference)
    cand_vox, cand_feat = features(candidate)
    powers = metrics.separation_powers(ref_feat, cand_feat)
    groups: dict[str, list[float]] = {}
    for name, value in powers.items():
        groups.setdefault(name.rsplit("_", 1)[0] if name[-1].isdigit() else name, []).append(value)

    def matrix(vox: VoxelShowers, feat: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
        return np.column_stack([np.log10(vox.energy), metrics.feature_matrix({k: feat[k] for k in keys})])

    # The CaloChallenge's high-level set (classifier, FPD and KPD): log10 E_inc, layer energies,
    # centres and widths; the stricter set adds the sparsities and E_dep/E_inc.
    x, y = (matrix(ref_vox, ref_feat, HIGH_LEVEL_KEYS), matrix(cand_vox, cand_feat, HIGH_LEVEL_KEYS))
    out: dict[str, Any] = {
        "separation_power": {k: float(np.mean(v)) for k, v in groups.items()},
        "separation_power_per_feature": powers,
        "fpd": metrics.fpd(x, y, seed=config.seed),
        "kpd": metrics.kpd(x, y, seed=config.seed),
    }
    if min(len(ref_vox), len(cand_vox)) >= MIN_CLASSIFIER_SHOWERS:
        every = list(ref_feat)
        for key, a, b in (
            ("high_level_auc", x, y),
            ("high_level_auc_sparsity", matrix(ref_vox, ref_feat, every), matrix(cand_vox, cand_feat, every)),
        ):
            result = metrics.classifier_auc(
                a, b, n_splits=config.classifier_splits, epochs=config.classifier_epochs, seed=config.seed
            )
            out[key] = result.as_tuple()
    if config.low_level:
        result = metrics.classifier_auc(
            metrics.low_level_features(ref_vox, det),
            metrics.low_level_features(cand_vox, det),
            n_splits=config.classifier_splits,
            epochs=config.classifier_epochs,
            seed=config.seed,
            hidden=metrics.LOW_LEVEL_HIDDEN,
        )
        out["low_level_auc"] = result.as_tuple()
    return out


def evaluate(
    reference: str | Path,
    candidates: Sequence[str | Path],
    out_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate ``candidates`` against ``reference``; writes the report into ``out_dir``.

    Returns the content of ``metrics.json``. ``progress(stage, done, total)`` is called as
    the slow parts advance.
    """
    from caloforge import metrics

    out = Path(out_dir)
    det, samples = _open_samples(Path(reference), [Path(c) for c in candidates], config)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    total = sum(len(s.energy) for s in samples)
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress("observables", done, total)

    for s in samples:
        s.observables = observables_from_file(
            s.path, det, chunk_size=config.chunk_size, max_showers=config.max_showers, progress=step
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
    result: dict[str, Any] = {
        "caloforge_version": __version__,
        "detector": det.name,
        "reference": {"path": str(ref.path), "label": ref.label, "n_showers": n_ref},
        "w1_unit": metrics.W1_UNIT,
        "w1_observables": list(metrics.W1_OBSERVABLES),
        "w1_floor": {k: list(v) for k, v in floor.items()} | {"meta": floor.metadata()},
        "config": asdict(config),
        "candidates": [],
        "notes": notes,
    }
    classifier_results = {}
    cc_cache: dict[Path, Any] = {}
    for i, cand in enumerate(cands):
        if progress is not None:
            progress("metrics", i, len(cands))
        w1 = metrics.w1_scores(
            ref.observables, cand.observables, n_draws=config.n_draws, draw_size=size, seed=config.seed
        )
        n_min = min(n_ref, len(cand.energy))
        clf = None
        if n_min >= MIN_CLASSIFIER_SHOWERS:
            clf = metrics.classifier_auc(
                ref.observables.high_level(),
                cand.observables.high_level(),
                n_splits=config.classifier_splits,
                epochs=config.classifier_epochs,
                seed=config.seed,
            )
            classifier_results[cand.label] = clf
        else:
            notes.append(
                f"classifier not run for {cand.label}: it needs {MIN_CLASSIFIER_SHOWERS} showers per sample "
                f"(10 folds), the smaller sample has {n_min}."
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
            entry["calochallenge"] = _calochallenge(ref, cand, det, config, cc_cache)
        result["candidates"].append(entry)
    if progress is not None:
        progress("metrics", len(cands), len(cands))

    figures: dict[str, str] = {}
    if config.plots:
        figures = _write_plots(out, det, ref, cands, classifier_results, progress)
    result["figures"] = figures
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=_json_default))
    atomic_write_text(out / "report.md", _report(result))
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _write_plots(
    out: Path,
    det: Detector,
    ref: _Sample,
    cands: Sequence[_Sample],
    classifier_results: dict[str, Any],
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
    )
    if classifier_results:
        figs["classifier_scores"] = plots.plot_classifier_scores(
            classifier_results, reference_label=ref.label
        )
    written = {}
    for i, (name, fig) in enumerate(figs.items()):
        png, _ = plots.save_figure(fig, directory / name)
        written[name] = str(png.relative_to(out))
        if progress is not None:
            progress("plots", i + 1, len(figs))
    return written


def _fmt(value: Sequence[float], digits: int = 2) -> str:
    mean, std = value
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _report(result: dict[str, Any]) -> str:
    """``report.md``: tables first, then the figures."""
    names = result["w1_observables"]
    floor_meta = result["w1_floor"]["meta"]
    lines = [
        f"# Evaluation against {result['reference']['label']} ({result['reference']['path']})",
        "",
        f"Detector `{result['detector']}`; reference {result['reference']['n_showers']:,} showers; "
        f"caloforge {result['caloforge_version']}.",
        "",
        "## W1 scores",
        "",
        f"1-d Wasserstein distances of standardised observables, **in units of "
        f"{result['w1_unit']:g}** (the unit of the public CaloClouds II code and, by statistics, of "
        f"the published table), mean ± std over {floor_meta['n_draws']} draws of "
        f"{floor_meta['draw_size']:,} vs {floor_meta['draw_size']:,} showers. Lower is better; the first "
        "row is the floor, two disjoint halves of the reference.",
        "",
        "| sample | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| "
        + f"{result['reference']['label']} vs itself (floor) | "
        + " | ".join(_fmt(result["w1_floor"][k]) for k in names)
        + " |",
    ]
    for c in result["candidates"]:
        lines.append(f"| {c['label']} | " + " | ".join(_fmt(c["w1"][k]) for k in names) + " |")
    lines += [
        "",
        "## Classifier AUC",
        "",
        "High-level classifier (SPEC 5: 25 observables, MLP 32-16-8) trained to separate reference "
        "and candidate; mean ± std over the splits. 0.5 means indistinguishable, 1.0 perfectly separable.",
        "",
        "| sample | showers per class | AUC |",
        "|---|---|---|",
    ]
    for c in result["candidates"]:
        auc = _fmt(c["classifier_auc"], 3) if c["classifier_auc"] else "not run (too few showers)"
        lines.append(f"| {c['label']} | {c['classifier_n_per_class']:,} | {auc} |")
    if any("calochallenge" in c for c in result["candidates"]):
        lines += [
            "",
            "## CaloChallenge metrics",
            "",
            "Separation power (0 identical, 1 disjoint; mean over layers per feature), FPD and KPD "
            "(lower is better; value ± error). The high-level AUC and FPD/KPD use the CaloChallenge's "
            "features (log E_inc, layer energies, centres and widths); the AUC + sparsity column adds "
            "the per-layer sparsities and E_dep/E_inc.",
            "",
        ]
        groups = list(result["candidates"][0]["calochallenge"]["separation_power"])
        lines.append(
            "| sample | "
            + " | ".join(f"SP {g}" for g in groups)
            + " | FPD | KPD | high-level AUC | high-level AUC + sparsity | low-level AUC |"
        )
        lines.append("|---|" + "---|" * (len(groups) + 5))
        for c in result["candidates"]:
            cc = c["calochallenge"]
            aucs = [
                _fmt(cc[k], 3) if k in cc else "-"
                for k in ("high_level_auc", "high_level_auc_sparsity", "low_level_auc")
            ]
            lines.append(
                f"| {c['label']} | "
                + " | ".join(f"{cc['separation_power'][g]:.4f}" for g in groups)
                + f" | {_fmt(cc['fpd'], 4)} | {_fmt(cc['kpd'], 5)} | "
                + " | ".join(aucs)
                + " |"
            )
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result["figures"]:
        lines += ["", "## Figures", ""]
        for name, path in result["figures"].items():
            lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({path})", ""]
    return "\n".join(lines) + "\n"
