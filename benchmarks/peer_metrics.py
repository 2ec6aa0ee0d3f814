"""The audit's group metrics computed the standard way: fairlearn's and sklearn's own functions
on a row-level (one row per person) fairlearn ``MetricFrame``.

Test and benchmark code only: ``tests/test_audit_cells.py`` proves the package's cell metrics
(:mod:`pipeline.audit.cells`) equal these, and ``benchmarks/bench_audit.py`` times them.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import brier_score_loss, precision_score, roc_auc_score

from pipeline.audit import cells


def _peer(function, *, on_selection: bool):
    """Adapt a standard ``(y_true, y_pred)`` metric to the score + ``selected`` convention."""

    def metric(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
        prediction = np.asarray(selected, dtype=np.int64) if on_selection else y_pred
        return float(function(np.asarray(y_true, dtype=np.int64), prediction))

    return metric


def _sk_auroc(y_true, y_pred) -> float:
    return roc_auc_score(y_true, y_pred) if len(np.unique(y_true)) == 2 else float("nan")


PEER_METRICS: Final = {
    "n": cells.CELL_METRICS["n"],
    "base_rate": cells.CELL_METRICS["base_rate"],
    "selection_rate": _peer(lambda y, p: selection_rate(y, p, pos_label=1), on_selection=True),
    "tpr": _peer(true_positive_rate, on_selection=True),
    "fpr": _peer(false_positive_rate, on_selection=True),
    "fnr": _peer(false_negative_rate, on_selection=True),
    "ppv": _peer(lambda y, p: precision_score(y, p, zero_division=np.nan), on_selection=True),
    "auroc": _peer(_sk_auroc, on_selection=False),
    "brier": _peer(brier_score_loss, on_selection=False),
    "oe_ratio": cells.oe_ratio,
    "calibration_slope": cells.calibration_slope,
}
"""fairlearn's and sklearn's own metric functions (the calibration measures have no library
version; a test checks the slope against statsmodels instead)."""


def metric_frame(
    y_true: np.ndarray,
    selected: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray,
    *,
    metrics: tuple[str, ...] = cells.METRICS,
) -> pd.DataFrame:
    """Group metrics by one row-level fairlearn MetricFrame: a row per group, a column per metric.

    Parameters
    ----------
    y_true, selected, score, groups
        Outcome (0/1), selection flag, risk score and group label per person.
    metrics
        Which metrics (``n`` is always included).
    """
    functions = {name: PEER_METRICS[name] for name in ("n", *metrics)}
    per_row = {"selected": np.asarray(selected, dtype=np.int64)}
    frame = MetricFrame(
        metrics=functions,
        y_true=np.asarray(y_true, dtype=np.int64),
        y_pred=np.asarray(score, dtype=np.float64),
        sensitive_features=pd.Series(np.asarray(groups), name="group"),
        sample_params={name: per_row for name in functions},
    )
    return frame.by_group.astype(float)
