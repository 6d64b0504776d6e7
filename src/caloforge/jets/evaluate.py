"""Compatibility: the jet evaluation is :mod:`caloforge.evaluate.jets`, its report and tables
:mod:`caloforge.evaluate.report`; the names this module had are re-exported from there."""

from caloforge.evaluate.jets import (  # noqa: F401
    FIGURES,
    LOG_EFP_FLOOR,
    MIN_CLASSIFIER_JETS,
    MIN_JETS,
    REFERENCE_LABEL,
    JetEvaluationConfig,
    _open,
    classifier_features,
    evaluate_jets,
)
from caloforge.evaluate.report import COLUMNS, table_rows

__all__ = ["COLUMNS", "JetEvaluationConfig", "evaluate_jets", "table_rows"]
