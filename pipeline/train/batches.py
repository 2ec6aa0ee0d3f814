"""The risk model's inputs of chosen people, and its scores in batches (:mod:`pipeline.batches`).

Only the people a fit needs (the train sample, the validation split, the SHAP sample) have their
model inputs in memory at once; everyone is scored batch by batch, per ICB, on the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import polars as pl

from pipeline import batches
from pipeline.batches import BATCH_ROWS, ICB, batch_keys
from pipeline.train.cohort import FeatureSpec, feature_matrix

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "BATCH_ROWS",
    "ICB",
    "batch_keys",
    "model_inputs",
    "model_inputs_in_batches",
    "predict_batch",
    "score_in_batches",
]


def model_inputs(
    features: pl.LazyFrame, person_ids: pl.Series, spec: FeatureSpec, *, icb: str | None = None
) -> np.ndarray:
    """The input matrix (:func:`~pipeline.train.cohort.feature_matrix`) of ``person_ids``, in
    their order (a person without a feature row gets a row of NaN).

    Parameters
    ----------
    features
        ``features/features.parquet``, lazily.
    person_ids
        The people wanted.
    spec
        The model's inputs.
    icb
        Read only the rows of this ICB (a filter the parquet reader can push down).
    """
    return feature_matrix(batches.input_rows(features, person_ids, spec.names, icb=icb), spec)


def model_inputs_in_batches(
    features: pl.LazyFrame,
    cohort: pl.DataFrame,
    spec: FeatureSpec,
    *,
    batch_rows: int = BATCH_ROWS,
) -> np.ndarray:
    """The input matrix of every ``cohort`` row (person_id, optionally icb_code), in its order,
    read batch by batch (:func:`pipeline.batches.batches`: per ICB, its row groups alone).

    The same rows as one :func:`model_inputs` call, but the reader's transient copies (every
    column of the rows read, before the cast to float32) are one batch's, not the whole sample's.
    """
    out = np.empty((cohort.height, len(spec.names)), dtype=np.float32)
    ids = cohort.get_column("person_id")
    icb = cohort.get_column(ICB) if ICB in cohort.columns else None
    for rows in batches.batches(cohort, batch_rows=batch_rows):
        code = None if icb is None else icb[int(rows[0])]
        out[rows] = model_inputs(features, ids.gather(rows), spec, icb=code)
    return out


def predict_batch(
    batch: batches.Batch, *, features_path: str, model: str, spec: FeatureSpec
) -> np.ndarray:
    """Uncalibrated probabilities of one batch's people, in their order (a task)."""
    booster = lgb.Booster(model_str=model)
    x = model_inputs(pl.scan_parquet(features_path), batch.person_ids, spec, icb=batch.icb)
    return np.asarray(booster.predict(x), dtype=np.float64)


def score_in_batches(
    cohort: pl.DataFrame,
    *,
    features_path: Path,
    spec: FeatureSpec,
    booster: lgb.Booster,
    client: Client | None,
    batch_rows: int = BATCH_ROWS,
) -> np.ndarray:
    """Uncalibrated probabilities of every ``cohort`` row (person_id, optionally icb_code), in
    its order, predicted batch by batch on the engine of ``client``."""
    return batches.predict_in_batches(
        cohort,
        predict_batch,
        features_path=features_path,
        model=booster.model_to_string(),
        client=client,
        batch_rows=batch_rows,
        spec=spec,
    )
