"""What an evaluation result looks like to a reader: ``report.md`` of a shower or a jet
evaluation, and the tables and lines ``caloforge evaluate`` prints.

Every function here takes the result that :func:`caloforge.evaluate.evaluate` returns (the
content of ``metrics.json``) and computes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "AUC_KINDS",
    "COLUMNS",
    "RESOLUTION_COLUMNS",
    "fmt",
    "fmt_error",
    "jet_ranking",
    "jet_report",
    "jet_summary",
    "print_summary",
    "protocol_line",
    "ranking",
    "shower_report",
    "shower_summary",
    "summary_lines",
    "summary_table",
    "table_rows",
    "w1_verdict",
]

#: Every classifier AUC of a report: key (in a candidate entry, or its ``calochallenge``
#: part) -> name in the report and the printed summary.
AUC_KINDS = {
    "classifier_auc": "SPEC 5 high-level",
    "cell_level_auc": "cell-level",
    "high_level_auc": "CaloChallenge high-level",
    "low_level_auc": "CaloChallenge low-level",
}


def fmt(value: Sequence[float] | None, digits: int = 2) -> str:
    """``mean ± std`` (or ``value ± error``) of a result entry; ``n/a`` if not finite, ``-`` if absent.

    >>> fmt([0.51234, 0.0213], 3), fmt([float("nan"), 0.0]), fmt(None)
    ('0.512 ± 0.021', 'n/a', '-')
    """
    if value is None:
        return "-"
    mean, std = value
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_error(value: Sequence[float] | None, scale: float = 1.0) -> str:
    """``value ± error`` times ``scale``, to two significant digits of the error (a value with a
    large error is not shown to digits it does not have); three significant digits of the value
    where the error is 0 or not finite.

    >>> nan = float("nan")
    >>> fmt_error([0.0, 19.14]), fmt_error([0.0007008, 0.0000312], 1e3), fmt_error([1.2e-5, nan], 1e3)
    ('0 ± 19', '0.701 ± 0.031', '0.0120 ± n/a')
    """
    if value is None:
        return "-"
    mean, err = value[0] * scale, value[1] * scale
    if not math.isfinite(mean):
        return "n/a"
    if math.isfinite(err) and err > 0:
        digits = max(0, 1 - math.floor(math.log10(err)))
        return f"{mean:.{digits}f} ± {err:.{digits}f}"
    digits = max(0, 2 - math.floor(math.log10(abs(mean)))) if mean else 0
    return f"{mean:.{digits}f} ± " + (f"{err:.0f}" if math.isfinite(err) else "n/a")


def protocol_line(result: dict[str, Any]) -> str:
    """The sentence of a report that says whose definitions its figures follow."""
    from caloforge.evaluate.protocols import PROTOCOLS

    name = result.get("protocol", "caloforge")
    own = sorted(k for k, v in result.get("metric_protocols", {}).items() if v == name)
    if name == "caloforge":
        return "Protocol: **caloforge** (the default) for every figure (docs/evaluation.md)."
    p = PROTOCOLS[name]
    return (
        f"Protocol: **{name}** — {', '.join(own)} follow the {p.title} definitions ({p.source}); "
        "every other figure is caloforge's (docs/evaluation.md)."
    )


def _heldout_text(heldout: dict[str, Any] | None, key: str) -> str | None:
    """``held-out figure (docs/results.md, N showers): AUC x ± y`` for AUC ``key``, if known."""
    if heldout is None or key not in heldout["auc"]:
        return None
    mean, std = heldout["auc"][key]
    source = f"{heldout['source']}, {heldout['n_showers']:,} showers"
    return f"held-out figure ({source}): AUC {mean:.3f} ± {std:.3f}"


#: The columns of :func:`_resolution_cells` in a report table.
RESOLUTION_COLUMNS = "AUC | minimum detectable AUC | known distortion (resolving power) | held-out figure |"


def _resolution_cells(candidate: dict[str, Any], key: str) -> list[str]:
    """AUC, minimum detectable AUC, known-distortion AUC and held-out figure of AUC ``key``."""
    res = candidate["auc_resolution"][key]
    distortion = (
        f"{res['distortion']}: {fmt(res['distortion_auc'], 3)}"
        if res["distortion_auc"] is not None
        else "not run"
    )
    held = _heldout_text(candidate["heldout"], key) or "-"
    return [fmt(res["auc"], 3), f"{res['minimum_detectable_auc']:.3f}", distortion, held]


def _resolution_table(result: dict[str, Any], key: str, missing: list[str] | None = None) -> list[str]:
    """The table of AUC ``key`` of every candidate with its resolving power (:func:`_resolution_cells`);
    a candidate without that AUC gets the ``missing`` cells, or no row."""
    lines = ["| sample | showers per class | " + RESOLUTION_COLUMNS, "|---|---|---|---|---|---|"]
    for c in result["candidates"]:
        cells = _resolution_cells(c, key) if key in c["auc_resolution"] else missing
        if cells is not None:
            lines.append(f"| {c['label']} | {c['classifier_n_per_class']:,} | " + " | ".join(cells) + " |")
    return lines


def _resolving_power_text(check: dict[str, Any] | None) -> list[str]:
    """How the minimum detectable AUC and the known-distortion check are made, and the check's AUCs."""
    lines = [
        "**Resolving power.** The *minimum detectable AUC* is 0.5 + 2·SE, with SE the Hanley–McNeil "
        "standard error of an AUC of 0.5 for the n_a, n_b test showers per class the classifier used "
        "(every test fold of the splits run): SE = √((n_a + n_b + 1) / (12 n_a n_b)). An AUC below it "
        "cannot be told from 0.5 at that test size.",
    ]
    if check is None:
        return [*lines, "", "The known-distortion check did not run (see the notes)."]
    lines += [
        "",
        "The *known distortion* is what a small, known error scores at this sample size: the same "
        "classifier (same splits, epochs and seed) trained on one half of the reference against another "
        f"half with that error, at {check['n_per_class']:,} showers per class ({check['size_from']}, "
        "whichever is smaller of the smallest candidate and half the reference). The sample detects such "
        "an error where that AUC, less its spread over the splits, reaches its own minimum detectable AUC:",
        "",
    ]
    for key, d in check["auc"].items():
        found = "detected" if d["detects"] else "**not detected: too small a sample**"
        if not d["detects"] and d["auc"][0] >= d["minimum_detectable_auc"]:
            found += " (above the minimum detectable AUC by less than its spread over the splits)"
        lines.append(
            f"- {AUC_KINDS[key]}, {d['distortion']} ({d['how']}): AUC {fmt(d['auc'], 3)} on "
            f"{d['n_test_per_class'][0]:,} test showers per class, minimum detectable "
            f"{d['minimum_detectable_auc']:.3f}: {found}."
        )
    return lines


def _verdicts(result: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """One line per candidate AUC of ``keys``: what the AUC means at this sample size."""
    lines = []
    for c in result["candidates"]:
        for key in keys:
            res = c["auc_resolution"].get(key)
            if res is not None:
                lines.append(f"- {c['label']}, {AUC_KINDS[key]} AUC {res['auc'][0]:.3f}: {res['sentence']}.")
    return lines


def _auc_sigma(res: dict[str, Any]) -> float:
    """The uncertainty of one measured AUC: the larger of its Hanley–McNeil standard error at its
    value and test size and its spread over the splits."""
    from caloforge.metrics import auc_standard_error

    mean, spread = res["auc"]
    return max(auc_standard_error(min(max(mean, 0.0), 1.0), *res["n_test_per_class"]), spread)


def ranking(result: dict[str, Any], key: str = "classifier_auc") -> list[str]:
    """Sentences that rank the candidates of a shower result by the AUC ``key`` (closest to the
    reference first): which is closest, which the classifier cannot tell apart at this sample
    size (AUCs within 2σ of each other, σ from :func:`_auc_sigma`) and why; where the sample is
    too small to tell the known distortion, the shipped models' held-out figures rank them
    instead, labelled as such."""
    rows = [
        (c["label"], c["auc_resolution"][key], c["heldout"])
        for c in result["candidates"]
        if key in c["auc_resolution"]
    ]
    if not rows:
        return []
    rows.sort(key=lambda r: r[1]["auc"][0])
    ref = result["reference"]["label"]
    lines = []
    best_label, best, _ = rows[0]
    if len(rows) == 1:
        return [f"- {best_label}: {best['sentence']}."]
    ties = [
        label
        for label, res, _ in rows[1:]
        if res["auc"][0] - best["auc"][0] < 2 * (_auc_sigma(res) ** 2 + _auc_sigma(best) ** 2) ** 0.5
    ]
    order = ", then ".join(f"{label} ({res['auc'][0]:.3f})" for label, res, _ in rows)
    lines.append(f"- Ranked by {AUC_KINDS[key]} AUC, closest to {ref} first: {order}.")
    if best["verdict"] == "too_small":
        apart = [label for label, res, _ in rows if res["auc"][0] >= res["minimum_detectable_auc"]]
        near = [label for label, _, _ in rows if label not in apart]
        if not apart:
            lines.append(
                f"- This sample cannot rank them: the classifier does not detect {best['distortion']} at "
                "this size, so every AUC here is near 0.5 whatever the model."
            )
        else:
            lines.append(
                f"- The classifier does not detect {best['distortion']} at this size, so the AUCs near 0.5 "
                f"({', '.join(near) or 'none'}) do not mean indistinguishable and cannot be ranked among "
                f"themselves; {', '.join(apart)} differ from {ref} all the same (AUC above the minimum "
                "detectable)."
            )
    elif ties:
        lines.append(
            f"- At this sample size the classifier cannot tell {best_label} from {', '.join(ties)}: their "
            "AUCs differ by less than twice their combined uncertainty (standard error at the test size, "
            "or the spread over the splits where larger)."
        )
    else:
        lines.append(f"- {best_label} is closest to {ref}, ahead of every other candidate by more than 2σ.")
    held = [(label, h["auc"][key], h) for label, _, h in rows if h is not None and key in h.get("auc", {})]
    if (best["verdict"] == "too_small" or ties) and len(held) > 1:
        held.sort(key=lambda r: r[1][0])
        n = min(h["n_showers"] for _, _, h in held)
        order = ", then ".join(f"{label} ({auc[0]:.3f} ± {auc[1]:.3f})" for label, auc, _ in held)
        lines.append(
            f"- Their held-out figures (docs/results.md, measured on at least {n:,} showers each; not this "
            f"run) rank them: {order}."
        )
    return lines


def w1_verdict(result: dict[str, Any]) -> list[str]:
    """One sentence on the W1 table of a shower result: the observables on which each candidate
    lies above the floor by more than twice their combined spread over the draws, or that none
    does at this draw size."""
    names = result["w1_observables"]
    floor = result["w1_floor"]
    size = floor["meta"]["draw_size"]
    above = {}
    for c in result["candidates"]:
        worse = [
            k
            for k in names
            if math.isfinite(c["w1"][k][0])
            and c["w1"][k][0] - floor[k][0] > 2 * math.hypot(c["w1"][k][1], floor[k][1])
        ]
        if worse:
            above[c["label"]] = worse
    if not above:
        return [
            f"- W1: every candidate lies within 2σ of the floor on every observable at {size:,} showers "
            "per draw, so the W1 table cannot tell them apart either."
        ]
    parts = "; ".join(f"{label} on {', '.join(worse)}" for label, worse in above.items())
    within = [c["label"] for c in result["candidates"] if c["label"] not in above]
    rest = f"; within 2σ of it everywhere: {', '.join(within)}" if within else ""
    return [f"- W1 above the floor by more than 2σ (at {size:,} showers per draw): {parts}{rest}."]


def jet_ranking(result: dict[str, Any]) -> list[str]:
    """Sentences that rank the candidates of a jet result by their classifier AUC against the
    reference (closest first), with the floor (reference half against half) and the minimum
    detectable AUC, and which candidates the classifier cannot tell apart (AUCs within 2σ; σ
    the larger of the spread over the splits and the standard error behind the minimum
    detectable AUC)."""
    floor = result["floor"]
    rows = sorted(
        (c for c in result["candidates"] if c["classifier_auc"] is not None),
        key=lambda c: c["classifier_auc"][0],
    )
    if not rows:
        return []

    def sigma(entry: dict[str, Any]) -> float:
        mda = entry.get("classifier_minimum_detectable_auc") or 0.5
        return max(entry["classifier_auc"][1], (mda - 0.5) / 2)

    best = rows[0]
    order = ", then ".join(f"{c['label']} ({c['classifier_auc'][0]:.3f})" for c in rows)
    lines = [
        f"- Ranked by classifier AUC, closest to {result['reference']['label']} first: {order}; the floor "
        f"({floor['label']}) scores {fmt(floor['classifier_auc'], 3)}."
    ]
    mda = best.get("classifier_minimum_detectable_auc")
    if mda is not None and best["classifier_auc"][0] < mda:
        lines.append(
            f"- {best['label']} cannot be told from the reference at this sample size (AUC under the "
            f"minimum detectable {mda:.3f})."
        )
    ties = [
        c["label"]
        for c in rows[1:]
        if c["classifier_auc"][0] - best["classifier_auc"][0] < 2 * (sigma(c) ** 2 + sigma(best) ** 2) ** 0.5
    ]
    if ties:
        lines.append(
            f"- At this sample size the classifier cannot tell {best['label']} from {', '.join(ties)}: "
            "their AUCs differ by less than twice their combined uncertainty."
        )
    elif len(rows) > 1:
        lines.append(f"- {best['label']} is closest, ahead of every other candidate by more than 2σ.")
    return lines


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The printed summary of the AUCs of a :func:`~caloforge.evaluate.evaluate` result.

    One ``classifier AUC LABEL: x ± y (...)`` line per AUC (``LABEL (kind)`` for the
    CaloChallenge ones) with the minimum detectable AUC, the AUC of the known-distortion
    check and, for a shipped model, its held-out figure; then a ``warning:`` line per
    classifier whose check shows the sample too small.
    """
    lines = []
    for c in result["candidates"]:
        for key, res in c["auc_resolution"].items():
            kind = "" if key == "classifier_auc" else f" ({AUC_KINDS[key]})"
            extra = [f"minimum detectable {res['minimum_detectable_auc']:.3f}"]
            if res["distortion_auc"] is not None:
                extra.append(f"{res['distortion']}: {fmt(res['distortion_auc'], 3)}")
            held = _heldout_text(c["heldout"], key)
            if held is not None:
                extra.append(held)
            lines.append(f"classifier AUC {c['label']}{kind}: {fmt(res['auc'], 3)} ({'; '.join(extra)})")
    check = result["distortion_check"]
    for key, d in (check["auc"] if check is not None else {}).items():
        if not d["detects"]:
            lines.append(
                f"warning: too small a sample for the {AUC_KINDS[key]} classifier at "
                f"{check['n_per_class']:,} showers per class: with {d['distortion']} the reference "
                f"scores AUC {d['auc'][0]:.3f}, under its minimum detectable "
                f"{d['minimum_detectable_auc']:.3f}, so an AUC near 0.5 does not mean indistinguishable"
            )
    if len(result["candidates"]) > 1:
        lines += [line.removeprefix("- ") for line in ranking(result)]
    return lines


def _pair_lines(pairs: dict[str, Any]) -> list[str]:
    from caloforge.pairs import PAIR_OBSERVABLES

    floor = pairs["floor"]
    lines = [
        "",
        f"## Pairs ({pairs['separation_mm']:g} mm apart)",
        "",
        f"Events split half-way between the two entry points; W1 × 100 of the standardised per-event "
        f"observables, {floor['draw_size']} events per side and draw (floor: reference vs reference).",
        "",
        "| sample | " + " | ".join(PAIR_OBSERVABLES) + " |",
        "|---|" + "---|" * len(PAIR_OBSERVABLES),
        "| floor | " + " | ".join(fmt(floor[k]) for k in PAIR_OBSERVABLES) + " |",
    ]
    for label, w1 in pairs["candidates"].items():
        lines.append(f"| {label} | " + " | ".join(fmt(w1[k]) for k in PAIR_OBSERVABLES) + " |")
    lines += [
        "",
        "Means: | sample | separation [mm] | energy share | E_A [MeV] | E_B [MeV] |",
        "|---|---|---|---|---|",
    ]
    for label, m in pairs["means"].items():
        lines.append(
            f"| {label} | {m['separation']:.2f} | {m['energy share']:.3f} | {m['E_A']:.0f} | {m['E_B']:.0f} |"
        )
    return lines


def shower_report(result: dict[str, Any]) -> str:
    """``report.md`` of a shower evaluation: tables first, then the figures."""
    names = result["w1_observables"]
    floor_meta = result["w1_floor"]["meta"]
    lines = [
        f"# Evaluation against {result['reference']['label']}",
        "",
        f"Reference `{result['reference']['path']}`; detector `{result['detector']}`; "
        f"{result['reference']['n_showers']:,} reference showers; "
        f"caloforge {result['caloforge_version']}.",
        "",
        protocol_line(result),
        "",
        "## Verdict",
        "",
        *(ranking(result) if len(result["candidates"]) > 1 else _verdicts(result, ["classifier_auc"])),
        *w1_verdict(result),
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
        + " | ".join(fmt(result["w1_floor"][k]) for k in names)
        + " |",
    ]
    for c in result["candidates"]:
        lines.append(f"| {c['label']} | " + " | ".join(fmt(c["w1"][k]) for k in names) + " |")
    lines += [
        "",
        "## Classifier AUC",
        "",
        "High-level classifier (SPEC 5: 25 observables, MLP 32-16-8) trained to separate reference "
        "and candidate; mean ± std over the splits. 0.5 means indistinguishable, 1.0 perfectly separable "
        "— if the sample is large enough to tell: read each AUC with its minimum detectable AUC and "
        "the AUC of a known distortion (resolving power, below).",
        "",
        *_resolution_table(result, "classifier_auc", missing=["not run (too few showers)", "-", "-", "-"]),
    ]
    lines += ["", *_resolving_power_text(result["distortion_check"]), ""]
    lines += _verdicts(result, ["classifier_auc"])
    if any("cell_level_auc" in c["auc_resolution"] for c in result["candidates"]):
        from caloforge.metrics import CELL_WINDOW

        lines += [
            "",
            "## Cell-level classifier AUC",
            "",
            f"The same kind of classifier (MLP 512-512-256) on the cells themselves (`--low-level`): "
            f"log10 E_inc, then ln(1 + E / threshold) of the {CELL_WINDOW} × {CELL_WINDOW} cells around "
            "the shower axis in every layer and of each layer's energy outside them "
            "(`caloforge.metrics.cell_level_features`). It sees what the 25 summary features cannot: the "
            "energy and occupancy of single cells, layer by layer.",
            "",
            *_resolution_table(result, "cell_level_auc"),
            "",
            *_verdicts(result, ["cell_level_auc"]),
        ]
    if any("calochallenge" in c for c in result["candidates"]):
        published = result.get("protocol") == "calochallenge"
        how = (
            "the challenge's own definitions (its DNN, 60/20/20 splits, isotonic calibration; jetnet's "
            "FPD with min_samples 10,000 and KPD with batches of 10,000, drawn with replacement)"
            if published
            else "caloforge's definitions (standardised inputs, the splits above; FPD/KPD drawn without "
            "replacement up to the sample size; KPD kernel of degree 4)"
        )
        lines += [
            "",
            "## CaloChallenge metrics",
            "",
            "Separation power (0 identical, 1 disjoint; mean over layers per feature), FPD and KPD "
            "(× 10³, as the challenge prints them; lower is better; value ± error). The high-level AUC "
            "and FPD/KPD use the challenge's current high-level features (log E_inc, log layer "
            "energies, x/y centres and widths, log E_tot, sparsities, radial centres and widths), with "
            f"{how}. The first row is the floor: two disjoint random halves of the reference compared "
            "the same way (the candidates are compared with the whole reference, so their FPD and "
            "separation powers carry a little less sampling noise than the floor's).",
            "",
        ]
        groups = list(result["candidates"][0]["calochallenge"]["separation_power"])
        lines.append(
            "| sample | "
            + " | ".join(f"SP {g}" for g in groups)
            + " | FPD ×10³ | KPD ×10³ | high-level AUC | low-level AUC |"
        )
        lines.append("|---|" + "---|" * (len(groups) + 4))
        floor = result.get("calochallenge_floor")
        if floor is not None:
            lines.append(
                f"| {result['reference']['label']} vs itself (floor, halves of {floor['n_per_half']:,}) | "
                + " | ".join(f"{floor['separation_power'][g]:.4f}" for g in groups)
                + f" | {fmt_error(floor['fpd'], 1e3)} | {fmt_error(floor['kpd'], 1e3)} | - | - |"
            )
        for c in result["candidates"]:
            cc = c["calochallenge"]
            aucs = [fmt(cc[k], 3) if k in cc else "-" for k in ("high_level_auc", "low_level_auc")]
            lines.append(
                f"| {c['label']} | "
                + " | ".join(f"{cc['separation_power'][g]:.4f}" for g in groups)
                + f" | {fmt_error(cc['fpd'], 1e3)} | {fmt_error(cc['kpd'], 1e3)} | "
                + " | ".join(aucs)
                + " |"
            )
        cc_keys = [k for k in AUC_KINDS if k != "classifier_auc"]
        lines += [
            "",
            "Resolving power of the CaloChallenge classifiers (as for the SPEC 5 classifier above):",
            "",
            "| sample | classifier | " + RESOLUTION_COLUMNS,
            "|---|---|---|---|---|---|",
        ]
        for c in result["candidates"]:
            for key in cc_keys:
                if key in c["auc_resolution"]:
                    cells = _resolution_cells(c, key)
                    lines.append(f"| {c['label']} | {AUC_KINDS[key]} | " + " | ".join(cells) + " |")
        lines += ["", *_verdicts(result, cc_keys)]
    lines += _weight_lines(result)
    if "pairs" in result:
        lines += _pair_lines(result["pairs"])
    return "\n".join(lines + _notes_and_figures(result)) + "\n"


def _weight_lines(result: dict[str, Any]) -> list[str]:
    """The classifier-weights section of a shower report: per classifier and candidate, the
    share of showers with a weight outside the range (reference's beside it), and the
    candidate showers the classifier finds least like the reference."""
    rows, least = [], []
    for c in result["candidates"]:
        for key, w in c.get("classifier_weights", {}).items():
            q = w["candidate"]["quantiles"]
            rows.append(
                f"| {c['label']} | {AUC_KINDS[key]} | {w['candidate']['outside']:.1%} | "
                f"{w['reference']['outside']:.1%} | {q.get('1', float('nan')):.3g} | "
                f"{q.get('50', float('nan')):.3g} | {q.get('99', float('nan')):.3g} |"
            )
            if w["least_like"]:
                showers = "; ".join(
                    f"row {s['row']}: {s['energy_gev']:.1f} GeV (w {s['weight']:.2g}, "
                    f"E_vis/E_inc {s['e_ratio']:.4f}, "
                    f"N_hits {s['n_hits']}, m1 Z {s['cog_z']:.1f})"
                    for s in w["least_like"]
                )
                least.append(f"- {c['label']}, {AUC_KINDS[key]}: {showers}.")
    if not rows:
        return []
    from caloforge.metrics import WEIGHT_RANGE

    lo, hi = WEIGHT_RANGE
    return [
        "",
        "## Classifier weights",
        "",
        "The weight w = (1 − C) / C of a test shower, C the classifier's output for the candidate "
        "class, is the ratio p_reference / p_candidate the classifier has learned there: 1 where it "
        "cannot tell, small where a shower is far more candidate-like than any reference shower, large "
        f"the other way. The share of showers outside [{lo:g}, {hi:g}] says how much of a sample the "
        "classifier places with confidence (a second reference sample among the candidates shows the "
        "floor of that share at this size). Then the candidate showers with the smallest weights, by "
        "their row in the candidate file.",
        "",
        f"| sample | classifier | candidate showers outside [{lo:g}, {hi:g}] | reference showers outside | "
        "w 1 % | w median | w 99 % |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Least reference-like candidate showers:",
        "",
        *least,
    ]


#: Report columns: result key, table header, unit key of :data:`caloforge.jets.metrics.UNITS`.
COLUMNS = (
    ("w1m", "W1m [10⁻³]", "w1m"),
    ("w1p", "W1p [10⁻³]", "w1p"),
    ("w1efp", "W1efp [10⁻⁵]", "w1efp"),
    ("fpd", "FPD [10⁻⁴]", "fpd"),
    ("kpd", "KPD [10⁻⁴]", "kpd"),
    ("kl_mass", "KL m [10⁻³]", "kl"),
    ("kl_ptrel", "KL pT const [10⁻³]", "kl"),
    ("kl_tau21", "KL τ21 [10⁻³]", "kl"),
    ("kl_tau32", "KL τ32 [10⁻³]", "kl"),
)


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (floor first, then every candidate) of the jet metrics table of a result."""
    header = ["sample", *(h for _, h, _ in COLUMNS), "classifier AUC"]
    rows = []
    for entry in (result["floor"], *result["candidates"]):
        cells = [fmt_error(entry[k]) if k in ("fpd", "kpd") else fmt(entry[k]) for k, _, _ in COLUMNS]
        rows.append([entry["label"], *cells, fmt(entry["classifier_auc"], 3)])
    return header, rows


def jet_report(result: dict[str, Any]) -> str:
    """``report.md`` of a jet evaluation: the metrics table and how it is made, then the figures."""
    from caloforge.jets.metrics import KL_MIN_PER_BIN

    ref = result["reference"]
    n, size = result["n_per_sample"], result["batch_size"]
    published = result.get("protocol") == "jetnet"
    header, rows = table_rows(result)
    lines = [
        f"# Jet evaluation against {ref['label']}",
        "",
        f"Reference `{ref['path']}`: {ref['n_jets']:,} jets of type `{ref['jet_type']}` "
        f"({ref['generator']}), {result['n_particles']} particles per jet; caloforge "
        f"{result['caloforge_version']}.",
        "",
        protocol_line(result),
        "",
        "## Verdict",
        "",
        *jet_ranking(result),
        "",
        "## Metrics",
        "",
        f"The reference is split at random into two disjoint halves A and B; every candidate is compared "
        f"with half A, and the first row (the floor) is half A against half B. Every sample holds {n:,} "
        f"jets. Lower is better everywhere; read every value against the floor."
        + (
            " Under the jetnet protocol W1m, W1p, W1efp, FPD and KPD of a candidate compare all its jets "
            "with the whole reference instead, as jetnet is called on two files (the floor stays A vs B)."
            if published
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "**Units.** Every value is shown divided by the unit in its header, i.e. W1m and W1p × 10³, "
        "W1efp × 10⁵, FPD and KPD × 10⁴, KL × 10³ (the units of the JetNet and EPiC papers' tables).",
        "",
        f"- **W1m, W1p, W1efp** (jetnet 0.2.5's `w1m`, `w1p`, `w1efp`): 1-d Wasserstein distances of "
        f"the relative jet mass m/pT_jet (from the constituents), of the real particles' η_rel, φ_rel, "
        f"pT_rel (W1p: their mean) and of the five EFPs with n = 4, d = 4 (W1efp: their mean); mean ± "
        f"std over {result['jetnet_batches'] if published else result['n_batches']} batches of "
        + (
            f"{result['jetnet_batch_size']:,} jets per side drawn with replacement from the whole samples, "
            "as jetnet."
            if published
            else f"{size:,} jets per side, drawn without replacement."
        ),
        "- **FPD, KPD** (jetnet's definitions) on the 36 EFPs with d ≤ 4 (jetnet's recommended set), "
        "every feature divided by the reference's max |value|: FPD extrapolated to N → ∞ (value ± "
        "fit error), KPD (polynomial kernel of degree 4) the median ± half the 16–84 % spread over "
        "batches; "
        + (
            "jetnet's estimators: FPD from 20 draws with replacement at each of 10 sizes from 20,000 "
            "to 50,000 (evenly in 1/N), KPD from 10 batches of 5,000 drawn with replacement."
            if published
            else "drawn without replacement, FPD at sizes up to the compared sample, KPD in batches of "
            "up to half of it."
        ),
        f"- **KL**: KL(reference ‖ sample) of histograms with bins of equal share of half A (plus "
        f"under- and overflow; {result['kl']['bins_per_jet_observable']} bins for m, τ21, τ32 at this "
        f"batch size: 50, fewer where a bin would expect under {KL_MIN_PER_BIN} jets), "
        f"{result['kl']['epsilon']:g} added to every bin; {result['n_batches']} batches of {size:,} jets "
        "per side. KL pT const uses every "
        "real constituent of the batch's jets.",
        "- **Classifier AUC**: an MLP (32-16-8) trained to separate half A from the sample on 14 jet "
        "features (relative mass, multiplicity, τ21, τ32, log10 of the five EFPs, the five largest "
        "pT_rel); mean ± std over the splits. 0.5 means indistinguishable.",
        "",
        "Per-feature W1p (×10³):",
        "",
        "| sample | η_rel | φ_rel | pT_rel | classifier minimum detectable AUC |",
        "|---|---|---|---|---|",
    ]
    for entry in (result["floor"], *result["candidates"]):
        mda = entry["classifier_minimum_detectable_auc"]
        lines.append(
            f"| {entry['label']} | {fmt(entry['w1p_etarel'])} | {fmt(entry['w1p_phirel'])} | "
            f"{fmt(entry['w1p_ptrel'])} | {'-' if mda is None else f'{mda:.3f}'} |"
        )
    lines += ["", "Candidates:", ""]
    for c in result["candidates"]:
        lines.append(
            f"- {c['label']}: `{c['path']}`, {c['n_jets']:,} jets of type `{c['jet_type']}` "
            f"({c['n_used']:,} used), generator {c['generator']}."
        )
    return "\n".join(lines + _notes_and_figures(result)) + "\n"


def _notes_and_figures(result: dict[str, Any]) -> list[str]:
    """The report's closing sections, shower and jet reports alike: its notes and its figures."""
    lines: list[str] = []
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    if result["figures"]:
        captions = result.get("figure_captions") or {}
        lines += ["", "## Figures", ""]
        for name, path in result["figures"].items():
            lines += [f"### {name.replace('_', ' ')}", "", f"![{name}]({path})", ""]
            if name in captions:
                lines += [captions[name], ""]
    return lines


#: What :func:`print_summary` prints after the table: ``(line, markup)``, ``markup`` as
#: :meth:`rich.console.Console.print` takes it (``None``: the console's own setting).
SummaryLines = list[tuple[str, "bool | None"]]


def summary_table(result: dict[str, Any]) -> Table:
    """The table ``caloforge evaluate`` prints (the ``summary`` of the result's kind,
    :mod:`caloforge.kinds`): for jets every metric (rows) of the floor and each candidate
    (columns), for showers the W1 of every observable with the floor."""
    from caloforge.kinds import kind_of_result

    return kind_of_result(result).part("summary")(result)[0]


def jet_summary(result: dict[str, Any]) -> tuple[Table, SummaryLines]:
    """The jets kind's summary: the metrics table (rows: metrics; columns: the floor and each
    candidate), then every note."""
    from rich.table import Table

    header, rows = table_rows(result)
    jet_table = Table(title="Jet metrics (units in brackets; lower is better)", title_justify="left")
    jet_table.add_column("metric")
    for row in rows:
        jet_table.add_column(row[0], justify="right")
    for k, name in enumerate(header[1:], start=1):
        jet_table.add_row(name, *(row[k] for row in rows))
    return jet_table, [(f"note: {note}", False) for note in result["notes"]]


def shower_summary(result: dict[str, Any]) -> tuple[Table, SummaryLines]:
    """The shower kinds' summary: the W1 table, the :func:`summary_lines`, then every note."""
    lines: SummaryLines = [(line, False) for line in summary_lines(result)]
    return _w1_table(result), lines + [(f"note: {note}", None) for note in result["notes"]]


def _w1_table(result: dict[str, Any]) -> Table:
    """The W1 of every observable with the floor, for every candidate."""
    from rich.table import Table

    names = result["w1_observables"]
    table = Table(title=f"W1 in units of {result['w1_unit']:g} (lower is better)", title_justify="left")
    table.add_column("observable")
    table.add_column("floor", justify="right")
    for c in result["candidates"]:
        table.add_column(c["label"], justify="right")

    def pm(pair: list[float]) -> str:
        return f"{pair[0]:.2f} ± {pair[1]:.2f}"

    for k in names:
        table.add_row(k, pm(result["w1_floor"][k]), *(pm(c["w1"][k]) for c in result["candidates"]))
    return table


def print_summary(result: dict[str, Any], out: Path, console: Console) -> None:
    """What ``caloforge evaluate`` prints after a run into ``out``: :func:`summary_table`, for
    showers the :func:`summary_lines`, every note, and where the report is."""
    from caloforge.kinds import kind_of_result

    table, lines = kind_of_result(result).part("summary")(result)
    console.print(table)
    for line, markup in lines:
        console.print(line, markup=markup)
    console.print(f"report: {out / 'report.md'} (one self-contained page: {out / 'report.html'})")
