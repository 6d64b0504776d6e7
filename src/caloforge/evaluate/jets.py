"""Evaluation of generated jets against a reference jet file (normally Pythia 8): report.md + metrics.json.

``caloforge evaluate`` calls :func:`evaluate_jets` when its reference is a jet file. The
reference is split at random into two disjoint halves A and B. Every candidate is compared
with half A, and the *floor* is half A against half B, at the same sample size: ``n`` jets
per sample, half the reference or the smallest candidate, whichever is smaller (larger
samples are subsampled at random). Per comparison: W1m, W1p, W1efp (:mod:`caloforge.jets.metrics`,
jetnet's batches), FPD and KPD on the 36 EFPs with d <= 4, KL divergences of the jet mass,
the constituents' pT, τ21 and τ32, and a classifier AUC (:func:`caloforge.metrics.classifier_auc`)
on jet-level features (:func:`classifier_features`). The text of the report (and the
table ``caloforge evaluate`` prints) is rendered by :mod:`caloforge.evaluate.report`.

With ``protocol="jetnet"`` (:mod:`caloforge.evaluate.protocols`) W1m, W1p, W1efp, FPD and KPD
follow jetnet 0.2.5 as a user would call it on the two files: every candidate against the
whole reference, batches of 50,000 jets (or ``batch_size``) drawn with replacement, jetnet's
FPD/KPD estimators; the floor is still half A against half B. KL and the classifier are
caloforge's in either protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caloforge import __version__
from caloforge.evaluate.common import EvaluationError, Progress, check_paths, labels, write_reports
from caloforge.evaluate.protocols import check_protocol, protocol_seed
from caloforge.evaluate.report import jet_report
from caloforge.jets import metrics as jm
from caloforge.jets.io import UNKNOWN_TYPE, JetFileError, Jets, jet_file_info, read_jets
from caloforge.jets.observables import jet_observables
from caloforge.safety import output_lock

__all__ = ["JetEvaluationConfig", "classifier_features", "evaluate_jet_files", "evaluate_jets"]

#: Fewer jets than this per sample and the classifier is skipped (with a note).
MIN_CLASSIFIER_JETS = 50
#: W1/KL batches of a jet evaluation when the configuration names none (``--draws``).
DEFAULT_BATCHES = 10
#: Protocols of the jet evaluator (:mod:`caloforge.evaluate.protocols`).
JET_PROTOCOLS = ("caloforge", "jetnet")
#: The metrics the jetnet protocol defines (the others are caloforge's in every protocol).
JETNET_METRICS = ("w1m", "w1p", "w1efp", "fpd", "kpd")
#: Jets per sample below which nothing is computed.
MIN_JETS = 10
#: EFP floor of the classifier's log features (a jet of one particle has EFPs 0).
LOG_EFP_FLOOR = 1e-12
REFERENCE_LABEL = "Pythia 8"


@dataclass(frozen=True)
class JetEvaluationConfig:
    """Knobs of :func:`evaluate_jets`: W1/KL batches (``n_batches`` of ``batch_size`` jets,
    default 50k or half the compared sample), classifier ``splits`` and ``epochs``, figures,
    the first ``max_jets`` of each file, and the seed of every random choice."""

    n_batches: int = 5
    batch_size: int | None = None
    splits: int = 5
    epochs: int = 10
    plots: bool = True
    max_jets: int | None = None
    seed: int = 0
    device: str = "cpu"  # of the classifier
    protocol: str = "caloforge"  # of W1m/W1p/W1efp/FPD/KPD (evaluate.protocols)
    jetnet_batches: int = 5  # of the jetnet protocol's W1 (jetnet's num_batches)
    jet_type: str | None = None  # of files that do not say theirs (no attribute, no type in the name)


def classifier_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 14)`` jet-level classifier inputs: relative mass, multiplicity, τ21, τ32,
    log10 of the five W1efp EFPs (floored at 1e-12), and the five largest pt_rel."""
    log_efps = np.log10(np.maximum(obs["efps"], LOG_EFP_FLOOR))
    return np.column_stack(
        [obs["mass"], obs["multiplicity"], obs["tau21"], obs["tau32"], log_efps, obs["leading_ptrel"]]
    ).astype(np.float64)


def _in_units(value: tuple[float, float], unit: float) -> list[float]:
    return [value[0] / unit, value[1] / unit]


def _scores(
    a: Jets,
    a_obs: dict[str, np.ndarray],
    b: Jets,
    b_obs: dict[str, np.ndarray],
    size: int,
    config: JetEvaluationConfig,
    distances: bool = True,
) -> dict[str, Any]:
    """KL and classifier of sample ``b`` against ``a`` (half A of the reference), in the report's
    units, and with ``distances`` its W1s, FPD and KPD by caloforge's estimators
    (:func:`_distances`)."""
    batch = {"num_eval_samples": size, "num_batches": config.n_batches, "seed": config.seed}
    units = jm.UNITS
    out: dict[str, Any] = _distances(a, a_obs, b, b_obs, batch, published=False) if distances else {}
    out |= {
        "kl_mass": _in_units(jm.batched_kl(a_obs["mass"], b_obs["mass"], **batch), units["kl"]),
        "kl_ptrel": _in_units(jm.batched_kl(a, b, column=2, **batch), units["kl"]),
        "kl_tau21": _in_units(jm.batched_kl(a_obs["tau21"], b_obs["tau21"], **batch), units["kl"]),
        "kl_tau32": _in_units(jm.batched_kl(a_obs["tau32"], b_obs["tau32"], **batch), units["kl"]),
    }
    out["classifier_auc"] = None
    out["classifier_minimum_detectable_auc"] = None
    if min(len(a), len(b)) >= MIN_CLASSIFIER_JETS:
        from caloforge.metrics import classifier_auc

        fit = classifier_auc(
            classifier_features(a_obs),
            classifier_features(b_obs),
            n_splits=config.splits,
            epochs=config.epochs,
            seed=config.seed,
            device=config.device,
        )
        out["classifier_auc"] = list(fit.as_tuple())
        out["classifier_minimum_detectable_auc"] = fit.minimum_detectable_auc()
        out["classifier_n_per_class"] = fit.n_per_class
    return out


def _jetnet_batch(config: JetEvaluationConfig) -> dict[str, Any]:
    """The W1 batches of the jetnet protocol: ``batch_size`` (default 50,000) jets per side drawn
    with replacement, ``jetnet_batches`` of them, jetnet's seed."""
    return {
        "num_eval_samples": jm.DEFAULT_EVAL_SAMPLES if config.batch_size is None else config.batch_size,
        "num_batches": config.jetnet_batches,
        "seed": protocol_seed("jetnet", config.seed),
        "replace": True,
    }


def _distances(
    a: Jets,
    a_obs: dict[str, np.ndarray],
    b: Jets,
    b_obs: dict[str, np.ndarray],
    batch: dict[str, Any],
    published: bool,
) -> dict[str, Any]:
    """W1m, W1p (and per feature), W1efp (and per EFP), FPD and KPD of ``b`` against ``a`` in the
    report's units, in the W1 batches ``batch``; with ``published`` (and :func:`_jetnet_batch`)
    jetnet's FPD and KPD estimators."""
    units = jm.UNITS
    w1p = jm.w1p(a, b, **batch)
    w1efp = jm.w1efp(a_obs["efps"], b_obs["efps"], **batch)
    fk = jm.fpd_kpd(a_obs["fpd_efps"], b_obs["fpd_efps"], seed=batch["seed"], published=published)
    out: dict[str, Any] = {
        "w1m": _in_units(jm.w1m(a_obs["mass"], b_obs["mass"], **batch), units["w1m"]),
        "w1p": _in_units(w1p["w1p"], units["w1p"]),
        "w1efp": _in_units(w1efp["w1efp"], units["w1efp"]),
        "fpd": _in_units(fk["fpd"], units["fpd"]),
        "kpd": _in_units(fk["kpd"], units["kpd"]),
    }
    for name in ("etarel", "phirel", "ptrel"):
        out[f"w1p_{name}"] = _in_units(w1p[name], units["w1p"])
    for k in range(len(w1efp) - 1):
        out[f"w1efp_{k}"] = _in_units(w1efp[f"efp_{k}"], units["w1efp"])
    return out


def _generator(attrs: dict[str, Any], path: Path) -> str:
    return str(attrs.get("generator") or path.stem)


def _reference_label(generator: str, has_generator: bool) -> str:
    return REFERENCE_LABEL if (not has_generator or "pythia" in generator.lower()) else generator


def _open(
    reference: Path, candidates: Sequence[Path], notes: list[str], jet_type: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """File infos, checked (``jet_type``: of files that do not say theirs); the particle count
    every sample is compared at."""
    infos = [jet_file_info(p, jet_type) for p in (reference, *candidates)]
    for path, info in zip((reference, *candidates), infos, strict=True):
        if info["n_jets"] == 0:
            raise JetFileError(f"'{path}' holds no jets")
    counts = sorted({info["n_particles"] for info in infos[1:]})
    if len(counts) > 1:
        raise JetFileError(
            f"the candidates hold different numbers of particles per jet ({', '.join(map(str, counts))}): "
            "evaluate each particle count separately"
        )
    n_particles, n_ref = counts[0], infos[0]["n_particles"]
    if n_particles > n_ref:
        bad = next(p for p, i in zip(candidates, infos[1:], strict=True) if i["n_particles"] > n_ref)
        raise JetFileError(
            f"'{bad}' holds {n_particles} particles per jet, the reference '{reference}' only {n_ref}: "
            f"use a reference with at least {n_particles}"
        )
    if n_particles < n_ref:
        notes.append(f"the reference holds {n_ref} particles per jet; its leading {n_particles} are used.")
    ref_type = infos[0]["jet_type"]
    for path, info in zip((reference, *candidates), infos, strict=True):
        if info["jet_type"] == UNKNOWN_TYPE:
            notes.append(
                f"'{path}' does not say its jet type (no jet_type attribute, no type in its name); "
                "pass --jet-type to name it."
            )
    for path, info in zip(candidates, infos[1:], strict=True):
        if UNKNOWN_TYPE not in (info["jet_type"], ref_type) and info["jet_type"] != ref_type:
            notes.append(
                f"'{path}' holds jets of type '{info['jet_type']}', the reference of type '{ref_type}': "
                "the metrics compare different kinds of jets."
            )
    return infos, n_particles


def evaluate_jet_files(
    reference: str | Path,
    candidates: Sequence[str | Path],
    out_dir: str | Path,
    config: Any,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The jets kind's evaluator (:mod:`caloforge.kinds`): :func:`evaluate_jets` with the
    settings of an :class:`~caloforge.evaluate.EvaluationConfig` ``config`` (``n_draws``,
    ``draw_size``, ``classifier_splits``, ``classifier_epochs``, ``plots``, ``max_showers``,
    ``seed`` as its batches, batch size, splits, epochs, plots, jets and seed)."""
    jet_config = JetEvaluationConfig(
        n_batches=DEFAULT_BATCHES if config.n_draws is None else config.n_draws,
        jetnet_batches=JetEvaluationConfig.jetnet_batches if config.n_draws is None else config.n_draws,
        batch_size=config.draw_size,
        splits=JetEvaluationConfig.splits if config.classifier_splits is None else config.classifier_splits,
        epochs=JetEvaluationConfig.epochs if config.classifier_epochs is None else config.classifier_epochs,
        plots=config.plots,
        max_jets=config.max_showers,
        seed=config.seed,
        device=config.device,
        protocol=config.protocol,
        jet_type=config.jet_type,
    )
    return evaluate_jets(reference, candidates, out_dir, jet_config, progress, overwrite)


def evaluate_jets(
    reference: str | Path,
    candidates: Sequence[str | Path],
    out_dir: str | Path,
    config: JetEvaluationConfig = JetEvaluationConfig(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate candidate jet files against a reference jet file; writes ``report.md``,
    ``metrics.json`` and (with ``config.plots``) ``plots/`` into ``out_dir``.

    Returns the content of ``metrics.json`` (``kind`` ``"jets"``; metric values in the units of
    :data:`caloforge.jets.metrics.UNITS`, as ``[mean, std]`` or ``[value, error]``). A report
    already in ``out_dir`` is refused with :class:`FileExistsError` before any work unless
    ``overwrite``. Errors in the inputs are one-line :class:`~caloforge.jets.io.JetFileError` or
    :class:`~caloforge.evaluate.EvaluationError`.
    """
    ref_path, cand_paths, out = Path(reference), [Path(c) for c in candidates], Path(out_dir)
    if not cand_paths:
        raise EvaluationError("give at least one candidate file to compare with the reference")
    for path in (ref_path, *cand_paths):
        if path.is_dir():
            raise EvaluationError(f"'{path}' is a directory: give jet files to compare")
    protocol = check_protocol(config.protocol, JET_PROTOCOLS, "jet files")
    check_paths([ref_path, *cand_paths], out, overwrite)
    notes: list[str] = []
    infos, n_particles = _open(ref_path, cand_paths, notes, config.jet_type)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / "report.md"):
        ref = read_jets(ref_path, n_particles=n_particles, stop=config.max_jets)
        cands = [read_jets(p, stop=config.max_jets) for p in cand_paths]
        half = len(ref) // 2
        n = min(half, *(len(c) for c in cands))
        if n < MIN_JETS:
            raise EvaluationError(
                f"too few jets to compare: {n} per sample (half the reference has {half}, the smallest "
                f"candidate {min(len(c) for c in cands)}); at least {MIN_JETS} are needed"
            )
        rng = np.random.default_rng(config.seed)
        perm = rng.permutation(len(ref))
        half_a, half_b = ref[np.sort(perm[:n])], ref[np.sort(perm[n : 2 * n])]
        if n < half:
            notes.append(
                f"every sample is cut to {n:,} jets, the smallest candidate, so that the floor (reference "
                "vs reference) and every candidate are measured at the same size."
            )
        subsets = []
        for path, c in zip(cand_paths, cands, strict=True):
            if len(c) > n:
                notes.append(f"'{path}': {n:,} of its {len(c):,} jets are used (a random subset).")
                subsets.append(c[np.sort(rng.choice(len(c), n, replace=False))])
            else:
                subsets.append(c)
        published = protocol.name == "jetnet"  # then --draw-size is the jetnet batches' (_distances)
        size = (
            config.batch_size if config.batch_size is not None and not published else jm.default_batch_size(n)
        )
        if not 1 <= size <= n:
            raise EvaluationError(f"--draw-size {size} is larger than the {n:,} jets per compared sample")
        if size < jm.DEFAULT_EVAL_SAMPLES and not published:
            notes.append(
                f"W1 and KL batches of {size:,} jets per side (JetNet's protocol uses "
                f"{jm.DEFAULT_EVAL_SAMPLES:,}); W1 and KL values grow as the batches shrink: compare with "
                "the floor."
            )
        if n < MIN_CLASSIFIER_JETS:
            notes.append(
                f"classifier not run: it needs {MIN_CLASSIFIER_JETS} jets per sample, there are {n}."
            )

        jetnet_batch = _jetnet_batch(config)
        if published:
            notes.append(
                "jetnet protocol: W1m, W1p, W1efp, FPD and KPD compare every candidate (all its jets) with "
                f"the whole reference ({len(ref):,} jets), in batches of "
                f"{jetnet_batch['num_eval_samples']:,} jets drawn with replacement, as jetnet "
                "0.2.5 does; the floor is half A against half B."
            )
        samples = [half_a, half_b, *subsets]
        observables = []
        for i, sample in enumerate(samples):
            if progress is not None:
                progress("jet observables", i, len(samples))
            observables.append(jet_observables(sample))
        if progress is not None:
            progress("jet observables", len(samples), len(samples))
        a_obs, b_obs = observables[:2]
        if published:  # the whole reference and candidates, as jetnet is called on two files
            ref_obs = jet_observables(ref)
            full_obs = [
                o if len(s) == len(c) else jet_observables(c)
                for o, s, c in zip(observables[2:], subsets, cands, strict=True)
            ]

        ref_generator = _generator(infos[0]["attrs"], ref_path)
        ref_label = _reference_label(ref_generator, "generator" in infos[0]["attrs"])
        cand_labels = labels(
            cand_paths, [_generator(i["attrs"], p) for p, i in zip(cand_paths, infos[1:], strict=True)]
        )
        total = len(cands) + 1
        if progress is not None:
            progress("jet metrics", 0, total)
        floor = _scores(half_a, a_obs, half_b, b_obs, size, config, distances=not published)
        if published:
            floor |= _distances(half_a, a_obs, half_b, b_obs, jetnet_batch, published=True)
        if progress is not None:
            progress("jet metrics", 1, total)
        result: dict[str, Any] = {
            "kind": "jets",
            "caloforge_version": __version__,
            "reference": {
                "path": str(ref_path),
                "label": ref_label,
                "generator": ref_generator,
                "jet_type": infos[0]["jet_type"],
                "n_jets": len(ref),
                "n_particles_file": infos[0]["n_particles"],
            },
            "n_particles": n_particles,
            "n_per_sample": n,
            "batch_size": size,
            "n_batches": config.n_batches,
            "jetnet_batches": jetnet_batch["num_batches"] if published else None,
            "jetnet_batch_size": jetnet_batch["num_eval_samples"] if published else None,
            "units": dict(jm.UNITS),
            "protocol": protocol.name,
            "metric_protocols": dict.fromkeys(JETNET_METRICS, protocol.name)
            | dict.fromkeys(("kl", "classifier_auc"), "caloforge"),
            "kl": {
                "bins_per_jet_observable": jm.kl_bins(size),
                "epsilon": jm.KL_EPSILON,
                "direction": "KL(reference || candidate)",
            },
            "floor": {"label": _floor_label(ref_label), **floor},
            "config": asdict(config),
            "candidates": [],
            "notes": notes,
        }
        for i, (path, info, label, cand, sample) in enumerate(
            zip(cand_paths, infos[1:], cand_labels, cands, subsets, strict=True)
        ):
            scores = _scores(half_a, a_obs, sample, observables[2 + i], size, config, distances=not published)
            if published:
                scores |= _distances(ref, ref_obs, cand, full_obs[i], jetnet_batch, published=True)
            result["candidates"].append(
                {
                    "path": str(path),
                    "label": label,
                    "generator": _generator(info["attrs"], path),
                    "jet_type": info["jet_type"],
                    "n_jets": len(cand),
                    "n_used": len(sample),
                    **scores,
                }
            )
            if progress is not None:
                progress("jet metrics", i + 2, total)
        figures: dict[str, str] = {}
        if config.plots:
            reference_obs = {k: np.concatenate([a_obs[k], b_obs[k]]) for k in a_obs}
            figures = _write_plots(
                out, reference_obs, dict(zip(cand_labels, observables[2:], strict=True)), progress
            )
        result["figures"] = figures
        result["figure_captions"] = _figure_captions(figures)
        write_reports(out, result, jet_report(result))
        return result


def _floor_label(ref_label: str) -> str:
    name = "Pythia" if ref_label == REFERENCE_LABEL else ref_label
    return f"{name} vs {name} (floor)"


#: Figures: name -> (observable key, x label, y label, log x, log y).
FIGURES = {
    "jet_mass": ("mass", "relative jet mass m / pT_jet", "fraction of jets", False, False),
    "constituent_ptrel": ("ptrel", "constituent pT_rel", "fraction of particles", False, True),
    "constituent_etarel": ("etarel", "constituent η_rel", "fraction of particles", False, False),
    "constituent_phirel": ("phirel", "constituent φ_rel", "fraction of particles", False, False),
    "tau21": ("tau21", "τ21", "fraction of jets", False, False),
    "tau32": ("tau32", "τ32", "fraction of jets", False, False),
    "multiplicity": ("multiplicity", "particles per jet", "fraction of jets", False, False),
    "efp": ("efp_0", "EFP (n = 4, d = 4, first graph)", "fraction of jets", True, False),
}


def _plot_values(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
    return obs["efps"][:, 0] if key == "efp_0" else obs[key]


def _write_plots(
    out: Path,
    reference: dict[str, np.ndarray],
    candidates: dict[str, dict[str, np.ndarray]],
    progress: Progress | None,
) -> dict[str, str]:
    from caloforge import plots

    directory = out / "plots"
    directory.mkdir(exist_ok=True)
    # More candidates than a panel shows: one figure per group (jet_mass_1, jet_mass_2, …), each
    # candidate in the same colour throughout, all groups binned alike.
    groups = plots.split_candidates(candidates)
    colours = plots.candidate_colours(list(candidates))
    written = {}
    for i, (name, (key, xlabel, ylabel, logx, logy)) in enumerate(FIGURES.items()):
        ref_values = _plot_values(reference, key)
        edges = plots.shared_edges(
            [ref_values, *(_plot_values(obs, key) for obs in candidates.values())], logx
        )
        for k, group in enumerate(groups, 1):
            fig = plots.histogram_with_ratio(
                ref_values,
                {label: _plot_values(obs, key) for label, obs in group.items()},
                xlabel,
                reference_label=REFERENCE_LABEL,
                edges=edges,
                logx=logx,
                logy=logy,
                ylabel=ylabel,
                colours=colours,
            )
            stem = name if len(groups) == 1 else f"{name}_{k}"
            png, _ = plots.save_figure(fig, directory / stem)
            written[stem] = str(png.relative_to(out))
        if progress is not None:
            progress("plots", i + 1, len(FIGURES))
    return written


def _figure_captions(figures: dict[str, str]) -> dict[str, str]:
    """One sentence per written figure (:func:`caloforge.plots.figure_caption`), the same keys."""
    from caloforge.plots import figure_caption

    return {name: figure_caption(name) for name in figures}
