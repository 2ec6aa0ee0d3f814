"""The registered model: LightGBM booster + calibration, predicting the pipeline's risk_score.

An MLflow "model from code" (logged by :func:`pipeline.train.registry.log_to_mlflow`): MLflow
copies this file into the model and loads :class:`CalibratedRisk` from it, with the artifacts
``booster`` (``model.txt``) and ``calibration`` (``calibration.json``). It needs numpy, scipy and
lightgbm only, so a reviewer can load ``models:/phm-<target>@candidate`` without this project.

:func:`calibrate` mirrors :func:`pipeline.train.calibration.apply_calibration` (tests check
the two agree for every method, and that registry predictions equal ``data/scores``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import lightgbm as lgb
import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from scipy.special import expit, logit

PROBABILITY_FLOOR: Final = 1e-6
"""As :data:`pipeline.metrics.PROBABILITY_FLOOR`: scores are clipped before the log-odds."""


def calibrate(calibration: Mapping[str, Any], raw: np.ndarray) -> np.ndarray:
    """Map raw LightGBM probabilities through ``calibration.json`` (none / isotonic / sigmoid)."""
    method = calibration["method"]
    if method == "none":
        return raw.astype(np.float64, copy=True)
    if method == "isotonic":
        return np.interp(raw, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    if method == "sigmoid":
        clipped = np.clip(raw.astype(np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return expit(calibration["intercept"] + calibration["slope"] * logit(clipped))
    raise ValueError(f"calibration: unknown method {method!r}")


class CalibratedRisk(PythonModel):
    """Calibrated risk of the outcome: one float per input row (columns in manifest order)."""

    booster: lgb.Booster
    calibration: dict[str, Any]

    def load_context(self, context: Any) -> None:
        """Read the booster and the calibration from the model's artifacts."""
        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        with open(context.artifacts["calibration"], encoding="utf-8") as handle:
            self.calibration = json.load(handle)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """The calibrated risk of each row of ``model_input`` (a DataFrame of the features)."""
        names = self.booster.feature_name()
        x = np.asarray(model_input[names], dtype=np.float64)
        return calibrate(self.calibration, np.asarray(self.booster.predict(x)))


mlflow.models.set_model(CalibratedRisk())
