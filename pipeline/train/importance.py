"""Which inputs the model uses: gain importance and mean |SHAP| on a sample of the test split."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

from pipeline import explain, io
from pipeline.train.cohort import FeatureSpec


def feature_importance(
    booster: lgb.Booster, x_sample: np.ndarray, spec: FeatureSpec
) -> list[dict[str, Any]]:
    """Gain importance and mean |SHAP| (LightGBM ``pred_contrib``, log-odds scale) per feature."""
    gain = booster.feature_importance(importance_type="gain")
    contrib = explain.contributions(x_sample, booster, explain.tree_paths(booster))
    mean_abs = np.abs(contrib).mean(axis=0) if x_sample.shape[0] else np.zeros(len(spec.names))
    rows = [
        {
            "feature": name,
            "categorical": name in spec.categorical,
            # published (MLflow, the model card): 10 significant digits, as every published float
            "gain": io.significant(float(gain[index])),
            "mean_abs_shap": io.significant(float(mean_abs[index])),
        }
        for index, name in enumerate(spec.names)
    ]
    return sorted(rows, key=lambda row: (-row["gain"], row["feature"]))
