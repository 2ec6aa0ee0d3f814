"""Scoring a cohort in batches on the engine, so memory stays flat in the number of people.

A *batch* is the cohort members of one ICB (``icb_code``, as ``features/features.parquet`` has
it), cut into slices of at most ``batch_rows`` people, or a plain slice of ``batch_rows`` cohort
rows when the cohort has no ``icb_code``. A batch's task reads only its people's model inputs
from the features file (an ICB filter reads contiguous row groups of a file sorted by
``person_id`` in ICB order: the synthetic world's, and the features stage's), predicts, and
returns one number per person, so the largest matrix held is one batch's.

The tasks are module-level functions run here or as Dask tasks
(:func:`pipeline.engine.map_partitions`), and a LightGBM prediction is a function of its row
alone, so scores depend neither on the engine nor on where the batches are cut. Used by the
train (:mod:`pipeline.train.batches`) and need (:mod:`pipeline.need`) stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from pipeline import engine

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "BATCH_ROWS",
    "ICB",
    "Batch",
    "batch_keys",
    "batches",
    "broadcast",
    "input_rows",
    "predict_in_batches",
    "slice_bounds",
]

BATCH_ROWS: Final = 500_000
"""Most people scored in one batch (one batch's feature matrix is the largest held)."""
ICB: Final = "icb_code"


@dataclass(frozen=True)
class Batch:
    """People scored together: their ICB (None: no ICB filter) and ids, in cohort order."""

    icb: str | None
    person_ids: pl.Series


def input_rows(
    features: pl.LazyFrame, person_ids: pl.Series, columns: Sequence[str], *, icb: str | None
) -> pl.DataFrame:
    """``person_id`` and ``columns`` of ``person_ids``, in their order (nulls for a person with
    no feature row); ``icb``: read only that ICB's rows (a filter pushed down to the reader)."""
    rows = features.filter(pl.col("person_id").is_in(person_ids.implode()))
    if icb is not None:
        rows = rows.filter(pl.col(ICB) == icb)
    found = rows.select("person_id", *columns).collect()
    if found["person_id"].equals(person_ids.rename("person_id")):
        # the usual case: ids in the file's (person_id) order, each found once; the join
        # below would only put them in the order they already have (2/3 of the read's time)
        return found
    wanted = person_ids.rename("person_id").to_frame()
    return wanted.join(found, on="person_id", how="left", maintain_order="left")


def batch_keys(cohort: pl.DataFrame) -> pl.DataFrame:
    """``person_id`` and, when ``cohort`` has it, ``icb_code``: the columns batches are cut on."""
    return cohort.select("person_id", *[c for c in (ICB,) if c in cohort.columns])


def slice_bounds(n_rows: int, *, rows: int = BATCH_ROWS) -> list[tuple[int, int]]:
    """``(start, stop)`` of each slice of ``n_rows`` rows, at most ``rows`` each, in order (one
    empty slice when there are no rows).

    >>> slice_bounds(5, rows=2)
    [(0, 2), (2, 4), (4, 5)]
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    return [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)] or [(0, 0)]


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


def broadcast(value: Any, client: Client | None) -> Any:
    """``value`` sent once to every worker on a cluster (a future the tasks resolve)."""
    return value if client is None else client.scatter(value, broadcast=True, hash=False)


def predict_in_batches(
    cohort: pl.DataFrame,
    task: Callable[..., np.ndarray],
    *,
    features_path: Path,
    model: str,
    client: Client | None,
    batch_rows: int = BATCH_ROWS,
    **shared: Any,
) -> np.ndarray:
    """One number per ``cohort`` row (person_id, optionally icb_code), in its order:
    ``task(batch, features_path=..., model=..., **shared)`` per batch (:func:`batches`).

    Parameters
    ----------
    cohort
        ``person_id`` (and ``icb_code``) of everyone to score.
    task
        A module-level function of one :class:`Batch` returning one float per person, in order.
    features_path
        ``features/features.parquet``; the tasks read it (pass paths, not tables).
    model
        The model's text, sent once to each worker.
    client
        :func:`pipeline.engine.connect`'s (None: every batch here, one after another).
    batch_rows
        Most people per batch.
    **shared
        Further (small) keyword arguments of every task.
    """
    rows = batches(cohort, batch_rows=batch_rows)
    ids = cohort.get_column("person_id")
    icb = cohort.get_column(ICB) if ICB in cohort.columns else None
    work = [Batch(None if icb is None else icb[int(index[0])], ids.gather(index)) for index in rows]
    results = engine.map_partitions(
        task,
        work,
        client=client,
        features_path=str(features_path),
        model=broadcast(model, client),
        **shared,
    )
    out = np.empty(cohort.height, dtype=np.float64)
    for index, result in zip(rows, results, strict=True):
        out[index] = result
    return out
