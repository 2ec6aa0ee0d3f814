"""Model inputs of chosen people, and scoring in batches on the engine (memory flat in N).

Only the people a fit needs (the train sample, the validation split, the SHAP sample) have their
model inputs in memory at once; every other person is scored in a *batch*: the cohort members of
one ICB (``icb_code`` of ``features/features.parquet``), cut into slices of at most
``batch_rows`` people, or plain slices of ``batch_rows`` cohort rows when the features have no
``icb_code``. A batch task reads its people's inputs from the features file (an ICB filter reads
contiguous row groups of a file sorted by ``person_id`` in ICB order), predicts, and returns one
number per person, so the largest matrix held is one batch's.

The same module-level task runs here or as a Dask task (:func:`pipeline.engine.map_partitions`),
and LightGBM predicts each row on its own, so the scores do not depend on the engine nor on how
the people are cut into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np
import polars as pl

from pipeline import engine
from pipeline.train.cohort import FeatureSpec, feature_matrix

if TYPE_CHECKING:
    from distributed import Client

BATCH_ROWS: Final = 500_000
"""Most people scored in one batch (one batch's feature matrix is the largest held)."""
ICB: Final = "icb_code"


@dataclass(frozen=True)
class Batch:
    """People scored together: their ICB (None: no ICB filter) and ids, sorted by person_id."""

    icb: str | None
    person_ids: pl.Series


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
    rows = features.filter(pl.col("person_id").is_in(person_ids.implode()))
    if icb is not None:
        rows = rows.filter(pl.col(ICB) == icb)
    wanted = person_ids.rename("person_id").to_frame().lazy()
    frame = wanted.join(
        rows.select("person_id", *spec.names), on="person_id", how="left", maintain_order="left"
    ).collect()
    return feature_matrix(frame, spec)


def batches(cohort: pl.DataFrame, *, batch_rows: int = BATCH_ROWS) -> list[np.ndarray]:
    """Row indices of ``cohort`` per batch: per ICB (in code order, people without one last)
    when it has ``icb_code``, each cut into slices of at most ``batch_rows``; otherwise slices.

    Examples
    --------
    >>> frame = pl.DataFrame({"icb_code": ["B", "A", "B", "B"]})
    >>> [rows.tolist() for rows in batches(frame, batch_rows=2)]
    [[1], [0, 2], [3]]
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    if ICB in cohort.columns:
        by_icb = pl.int_range(pl.len()).sort_by(ICB, nulls_last=True, maintain_order=True)
        order = cohort.select(by_icb).to_series().to_numpy()
        sizes = cohort.group_by(ICB).len().sort(ICB, nulls_last=True).get_column("len")
        groups = np.split(order, np.cumsum(sizes.to_numpy())[:-1])
    else:
        groups = [np.arange(cohort.height)]
    return [
        rows[start : start + batch_rows]
        for rows in groups
        for start in range(0, rows.size, batch_rows)
    ]


def predict_batch(batch: Batch, *, features_path: str, spec: FeatureSpec, model: str) -> np.ndarray:
    """Uncalibrated probabilities of one batch's people, in their order (a task: module-level,
    reads its inputs from ``features_path``)."""
    booster = lgb.Booster(model_str=model)
    x = model_inputs(pl.scan_parquet(features_path), batch.person_ids, spec, icb=batch.icb)
    return np.asarray(booster.predict(x), dtype=np.float64)


def _shared_model(model: str, client: Client | None) -> Any:
    """The model text, sent once to every worker on a cluster (a future the tasks resolve)."""
    return model if client is None else client.scatter(model, broadcast=True, hash=False)


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
    its order, predicted batch by batch (:func:`batches`) on the engine of ``client``."""
    rows = batches(cohort, batch_rows=batch_rows)
    ids = cohort.get_column("person_id")
    icb = cohort.get_column(ICB) if ICB in cohort.columns else None
    work = [Batch(None if icb is None else icb[int(index[0])], ids.gather(index)) for index in rows]
    results: Sequence[np.ndarray] = engine.map_partitions(
        predict_batch,
        work,
        client=client,
        features_path=str(features_path),
        spec=spec,
        model=_shared_model(booster.model_to_string(), client),
    )
    raw = np.empty(cohort.height, dtype=np.float64)
    for index, result in zip(rows, results, strict=True):
        raw[index] = result
    return raw
