"""Probability calibration of the risk model, fitted on the validation split, stored as JSON.

A candidate is kept only when it lowers the validation Brier score, judged by cross-fitting
within the validation split (an in-sample isotonic fit always "improves" its own Brier score).
Stored as JSON, never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from pipeline import metrics
from pipeline.errors import StageError

CalibrationMethod = Literal["none", "isotonic", "sigmoid"]
CALIBRATION_FOLDS: Final = 5
SIGNIFICANT_DIGITS: Final = 12
"""Stored parameters and Brier scores keep 12 significant digits, and the scores are computed
from the stored (rounded) parameters: the fits' last bits depend on the machine's BLAS, and
``calibration.json`` and the scores must hash the same on every machine."""


def _stored(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


ISOTONIC_BIN_PEOPLE: Final = 100
"""People per score bin behind each isotonic point (see :func:`score_bins`)."""


def score_bins(
    raw: np.ndarray, y: np.ndarray, *, people: int = ISOTONIC_BIN_PEOPLE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-size bins of the ranked scores: mean score, outcome rate and size of each bin.

    The calibration travels with the registered model, so none of its points may be one
    person's score and outcome: isotonic regression is fitted on bins of at least ``people``
    people (pool-adjacent-violators on binned data, as in Zadrozny and Elkan 2002).
    """
    n_bins = max(1, raw.size // people)
    rank = np.empty(raw.size, dtype=np.int64)
    rank[np.argsort(raw, kind="stable")] = np.arange(raw.size)
    bin_of = rank * n_bins // raw.size
    size = np.bincount(bin_of, minlength=n_bins).astype(np.float64)
    mean_score = np.bincount(bin_of, weights=raw, minlength=n_bins) / size
    rate = np.bincount(bin_of, weights=y.astype(np.float64), minlength=n_bins) / size
    return mean_score, rate, size


def _fit_calibrator(method: CalibrationMethod, raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "isotonic":
        mean_score, rate, size = score_bins(raw, y)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            mean_score, rate, sample_weight=size
        )
        return {
            "method": "isotonic",
            "x": [_stored(v) for v in iso.X_thresholds_],
            "y": [_stored(v) for v in iso.y_thresholds_],
        }
    fitted = LogisticRegression(C=np.inf).fit(metrics.logit(raw).reshape(-1, 1), y)
    return {
        "method": "sigmoid",
        "intercept": _stored(fitted.intercept_[0]),
        "slope": _stored(fitted.coef_[0, 0]),
    }


def apply_calibration(calibration: Mapping[str, Any], raw: np.ndarray) -> np.ndarray:
    """Map raw probabilities through a calibration stored as JSON (see :func:`fit_calibration`)."""
    method = calibration["method"]
    if method == "none":
        return raw.astype(np.float64, copy=True)
    if method == "isotonic":
        # np.interp clips outside the thresholds, as IsotonicRegression(out_of_bounds="clip")
        return np.interp(raw, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    if method == "sigmoid":
        return expit(calibration["intercept"] + calibration["slope"] * metrics.logit(raw))
    raise StageError(f"calibration.json: unknown method {method!r}")


def fit_calibration(
    raw: np.ndarray,
    y: np.ndarray,
    *,
    mode: Literal["auto", "isotonic", "sigmoid", "none"],
    seed: int,
    n_folds: int = CALIBRATION_FOLDS,
) -> dict[str, Any]:
    """Choose and fit a probability calibration on the validation split.

    A candidate (``auto``: isotonic and sigmoid; otherwise the named method) is kept only when its
    cross-fitted Brier score (fit on ``n_folds - 1`` folds of the validation split, scored on the
    held-out fold) is lower than the raw model's; it is then refitted on the whole split.

    Returns
    -------
    dict
        JSON-ready: ``method`` plus its parameters, the validation Brier scores behind the choice.
    """
    brier_raw = _stored(np.mean((raw - y) ** 2))
    decision: dict[str, Any] = {
        "mode": mode,
        "validation_brier_raw": brier_raw,
        "validation_brier_cross_fitted": {},
    }
    if mode == "none":
        return {"method": "none", **decision}
    candidates: tuple[CalibrationMethod, ...] = (
        ("isotonic", "sigmoid") if mode == "auto" else (mode,)
    )
    folds = np.random.default_rng(seed).permutation(raw.size) % n_folds
    scores: dict[CalibrationMethod, float] = {}
    for method in candidates:
        cross_fitted = np.empty_like(raw)
        for fold in range(n_folds):
            held_out = folds == fold
            fitted = _fit_calibrator(method, raw[~held_out], y[~held_out])
            cross_fitted[held_out] = apply_calibration(fitted, raw[held_out])
        scores[method] = _stored(np.mean((cross_fitted - y) ** 2))
    decision["validation_brier_cross_fitted"] = scores
    best = min(scores, key=lambda method: (scores[method], method))
    if scores[best] >= brier_raw:
        return {"method": "none", **decision}
    return {**_fit_calibrator(best, raw, y), **decision}
