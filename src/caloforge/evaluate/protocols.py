"""Evaluation protocols: whose definitions a figure follows.

``caloforge evaluate --protocol NAME``. The default, ``caloforge``, is this project's: several
classifier splits on standardised inputs, FPD/KPD from draws without replacement up to the
sample size, and every figure beside its reference-vs-reference floor. The published
protocols reproduce the definitions behind published tables, so that a figure can stand in
one of them:

* ``calochallenge`` — the CaloChallenge 2022's ``code/evaluate.py`` for voxel showers on a
  polar readout (:mod:`caloforge.calochallenge`): its high-level features and
  preprocessing, its DNN, splits, epoch choice and isotonic calibration, and jetnet's FPD/KPD
  with its arguments;
* ``jetnet`` — jetnet 0.2.5's ``jetnet.evaluation`` for jets: W1m/W1p/W1efp from batches of
  50,000 jets drawn with replacement, FPD and KPD with jetnet's estimators.

A protocol fixes only the metrics it defines; the others of a report (the SPEC 5 W1 scores and
classifier, separation powers, KL divergences, the jet classifier) are caloforge's whatever
the protocol. ``metrics.json`` says which protocol made every figure (``metric_protocols``).

>>> PROTOCOLS["calochallenge"].classifier_epochs, protocol_seed("jetnet", 0)
(50, 42)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from caloforge.evaluate.common import EvaluationError

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "Protocol",
    "check_protocol",
    "classifier_settings",
    "protocol_seed",
]


@dataclass(frozen=True)
class Protocol:
    """A named set of metric definitions and its classifier defaults."""

    name: str
    title: str  # in reports
    source: str  # where the definitions come from
    classifier_splits: int  # folds (caloforge) or independent runs (calochallenge) by default
    classifier_epochs: int
    seed_offset: int = 0  # added to --seed: the published tool's own default seed at --seed 0


PROTOCOLS = {
    "caloforge": Protocol(
        "caloforge",
        "caloforge",
        "this project's definitions (docs/evaluation.md)",
        classifier_splits=10,
        classifier_epochs=10,
    ),
    "calochallenge": Protocol(
        "calochallenge",
        "CaloChallenge 2022",
        "code/evaluate.py and HighLevelFeatures.py of the CaloChallenge's public repository (2024)",
        classifier_splits=3,
        classifier_epochs=50,
        seed_offset=42,
    ),
    "jetnet": Protocol(
        "jetnet",
        "JetNet",
        "jetnet 0.2.5, jetnet/evaluation/gen_metrics.py",
        classifier_splits=5,
        classifier_epochs=10,
        seed_offset=42,
    ),
}
DEFAULT_PROTOCOL = "caloforge"


def check_protocol(name: str, accepted: Sequence[str], what: str) -> Protocol:
    """The protocol ``name`` if the evaluator of ``what`` (e.g. "shower files") takes it; a
    one-line :class:`EvaluationError` otherwise."""
    if name not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol '{name}': choose one of {', '.join(PROTOCOLS)}")
    if name not in accepted:
        raise EvaluationError(f"the {name} protocol does not apply to {what}: use {' or '.join(accepted)}")
    return PROTOCOLS[name]


def classifier_settings(splits: int | None, epochs: int | None, protocol: str) -> tuple[int, int]:
    """``(splits, epochs)`` of a classifier that follows ``protocol``: the values asked for, else
    the protocol's defaults."""
    p = PROTOCOLS[protocol]
    return (
        p.classifier_splits if splits is None else splits,
        p.classifier_epochs if epochs is None else epochs,
    )


def protocol_seed(protocol: str, seed: int) -> int:
    """The seed a protocol's random draws use for ``--seed seed``: jetnet's default 42 at seed 0
    for the published protocols, so that their figures are the published tools' own."""
    return seed + PROTOCOLS[protocol].seed_offset
