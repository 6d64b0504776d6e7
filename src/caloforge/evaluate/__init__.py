"""``caloforge evaluate``: compare candidate files with a reference, write a report.

:func:`evaluate` is the one entry point: shower files (points, polar voxels, cell images) are
evaluated by :mod:`.showers`, jet files by :mod:`.jets` (:func:`evaluate` dispatches on the
reference). What both share — :class:`EvaluationError`, the progress callback, legend names,
the checks of the paths — is in :mod:`.common`; the published protocols
(``--protocol``) are named in :mod:`.protocols`; the text of ``report.md`` and of the printed
summary is rendered by :mod:`.report`, from the result alone.
"""

from __future__ import annotations

from caloforge.evaluate.common import REPORT_FILES, EvaluationError, Progress
from caloforge.evaluate.protocols import DEFAULT_PROTOCOL, PROTOCOLS, Protocol
from caloforge.evaluate.report import AUC_KINDS, RESOLUTION_COLUMNS, summary_lines

# The underscored names: private helpers that tests import from here (as from the old evaluate.py).
from caloforge.evaluate.showers import (  # noqa: F401
    DISTORTIONS,
    HELDOUT_FIGURES,
    MIN_CLASSIFIER_SHOWERS,
    Distortion,
    EvaluationConfig,
    _distorted,
    _distorted_observables,
    _heldout,
    _heldout_figures,
    _resolution,
    evaluate,
)

__all__ = [
    "AUC_KINDS",
    "DEFAULT_PROTOCOL",
    "DISTORTIONS",
    "HELDOUT_FIGURES",
    "MIN_CLASSIFIER_SHOWERS",
    "PROTOCOLS",
    "REPORT_FILES",
    "RESOLUTION_COLUMNS",
    "Distortion",
    "EvaluationConfig",
    "EvaluationError",
    "Progress",
    "Protocol",
    "evaluate",
    "summary_lines",
]
