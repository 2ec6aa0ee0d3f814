"""The LightGBM risk model: parameters, class weighting, early-stopped fit, batched prediction."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, Literal

import lightgbm as lgb
import numpy as np

from pipeline import console
from pipeline.train.cohort import FeatureSpec

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import TrainParams

SCORE_BATCH_ROWS: Final = 500_000


def lightgbm_params(
    train: TrainParams, *, seed: int, scale_pos_weight: float = 1.0
) -> dict[str, Any]:
    """LightGBM booster parameters from ``params.train`` (deterministic, seeded)."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": train.learning_rate,
        "num_leaves": train.num_leaves,
        "max_depth": train.max_depth,
        "min_data_in_leaf": train.min_child_samples,
        "feature_fraction": train.feature_fraction,
        "bagging_fraction": train.bagging_fraction,
        # bagging is only active with a positive frequency
        "bagging_freq": 1 if train.bagging_fraction < 1.0 else 0,
        "lambda_l2": train.lambda_l2,
        "scale_pos_weight": scale_pos_weight,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,  # fixed histogram layout: same model text on every run
        "num_threads": train.num_threads,
        "verbosity": -1,
    }


def class_weight(y: np.ndarray, *, mode: Literal["none", "balanced"]) -> float:
    """``scale_pos_weight``: 1 (calibrated probabilities) or negatives/positives (balanced)."""
    if mode == "none":
        return 1.0
    positives = float(y.sum())
    return (y.size - positives) / positives


def fit_booster(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    spec: FeatureSpec,
    params: Mapping[str, Any],
    n_estimators: int,
    early_stopping_rounds: int,
) -> lgb.Booster:
    """Train with early stopping on the validation split; return a booster of the best trees only.

    The returned booster is rebuilt from its own text, so it is exactly what ``model.txt`` holds.
    """
    train_set = lgb.Dataset(
        x_train,
        label=y_train,
        feature_name=list(spec.names),
        categorical_feature=list(spec.categorical),
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set)
    with console.progress("boosting (early stopping)", total=n_estimators) as advance:
        booster = lgb.train(
            dict(params),
            train_set,
            num_boost_round=n_estimators,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[
                lgb.early_stopping(early_stopping_rounds, verbose=False),
                lambda _: advance(1),
            ],
        )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def predict_raw(
    booster: lgb.Booster, x: np.ndarray, *, batch_rows: int = SCORE_BATCH_ROWS
) -> np.ndarray:
    """Uncalibrated probabilities, predicted in batches (memory stays flat with cohort size)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    starts = range(0, x.shape[0], batch_rows)
    with console.progress("scoring", total=len(starts)) as advance:
        for start in starts:
            stop = min(start + batch_rows, x.shape[0])
            out[start:stop] = booster.predict(x[start:stop])
            advance(1)
    return out


def distributed_booster(
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: FeatureSpec,
    params: Mapping[str, Any],
    n_rounds: int,
    time_out: int,
    client: Client,
) -> lgb.Booster:
    """Fit ``n_rounds`` trees on every row through ``lightgbm.dask`` (data-parallel learner).

    No early stopping: it can hang a distributed fit, so the number of rounds comes from a local
    early-stopped fit (:func:`fit_booster` on the seeded sample). The rows are split into one
    block per worker and scattered; ``time_out`` (minutes) stops a fit whose workers lose each
    other instead of waiting for ever.

    Returns
    -------
    lgb.Booster
        Rebuilt from its own text, as :func:`fit_booster`'s.
    """
    import dask.array as da
    from dask import delayed
    from lightgbm.dask import DaskLGBMClassifier

    n_parts = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    bounds = np.linspace(0, x.shape[0], n_parts + 1).astype(int)
    blocks = [(x[a:b], y[a:b]) for a, b in pairwise(bounds) if b > a]
    scattered = client.scatter(blocks)
    parts_x = [
        da.from_delayed(delayed(itemgetter(0))(f), shape=b[0].shape, dtype=np.float64)
        for f, b in zip(scattered, blocks, strict=True)
    ]
    parts_y = [
        da.from_delayed(delayed(itemgetter(1))(f), shape=b[1].shape, dtype=np.float64)
        for f, b in zip(scattered, blocks, strict=True)
    ]
    settings = {k: v for k, v in params.items() if k not in ("seed", "verbosity", "num_threads")}
    model = DaskLGBMClassifier(
        client=client,
        n_estimators=n_rounds,
        random_state=int(params["seed"]),
        verbose=-1,
        time_out=time_out,
        **settings,
    )
    with warnings.catch_warnings():
        # The sklearn wrapper always passes n_jobs; lightgbm.dask drops it (threads = the
        # worker's) and says so on every fit.
        warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)
        model.fit(
            da.concatenate(parts_x),
            da.concatenate(parts_y),
            feature_name=list(spec.names),
            categorical_feature=list(spec.categorical),
        )
    return lgb.Booster(model_str=model.booster_.model_to_string())
