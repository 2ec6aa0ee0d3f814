"""Small plot tables of the test split (a few hundred points each) for ``dvc plots``."""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl

from pipeline import contract, metrics

PLOT_POINTS: Final = 200
CALIBRATION_BINS: Final = 20


def curve_frames(
    y: np.ndarray, p: np.ndarray, *, n_points: int = PLOT_POINTS
) -> dict[str, pl.DataFrame]:
    """ROC, precision-recall, calibration (equal-frequency bins) and cumulative gain tables."""
    y = y.astype(np.float64)
    n_events = max(y.sum(), 1.0)
    n_non_events = max(y.size - y.sum(), 1.0)
    thresholds = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_points + 1)))[::-1]
    order = np.argsort(-p, kind="stable")
    p_desc, y_desc = p[order], y[order]
    # people at or above each threshold (p_desc is descending, so search its negation)
    above = np.searchsorted(-p_desc, -thresholds, side="right")
    tp = np.r_[0.0, np.cumsum(y_desc)][above]
    fp = above - tp
    roc = pl.DataFrame({"fpr": np.r_[0.0, fp / n_non_events], "tpr": np.r_[0.0, tp / n_events]})
    pr = pl.DataFrame(
        {"recall": tp / n_events, "precision": np.where(above > 0, tp / np.maximum(above, 1), 1.0)}
    )
    bins = metrics.score_bin(p, metrics.ece_bin_edges(p, n_bins=CALIBRATION_BINS))
    calibration = (
        pl.DataFrame({"bin": bins, "p": p, "y": y})
        .group_by("bin")
        .agg(pl.col("p").mean().alias("mean_predicted"), pl.col("y").mean().alias("observed_rate"))
        .sort("bin")
        .drop("bin")
    )
    shares = np.linspace(0.0, 1.0, 101)
    cut = np.round(shares * y.size).astype(np.int64)
    gain = pl.DataFrame(
        {"share_selected": shares, "share_of_events": np.r_[0.0, np.cumsum(y_desc)][cut] / n_events}
    )
    curves = {
        "roc": roc,
        "precision_recall": pr,
        "calibration": calibration,
        "cumulative_gain": gain,
    }
    return {
        name: curves[name].select(pl.col(column).cast(dtype) for column, dtype in schema.items())
        for name, schema in contract.MODEL_CURVES.items()
    }
