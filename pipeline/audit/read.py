"""Reading the audit's people in slices of the scores file, so the joins' memory is a slice's.

The audit joins each eligible person's score to their groups (``features/features.parquet``),
truth, oracle risk and need score, matching ``person_id`` strings across five files. Done on the
whole cohort at once, those joins dominate the stage's memory (hash tables of every id). Here
each task (:func:`slice_rows`, a module-level function run here or on Dask through
:func:`pipeline.engine.map_partitions`) reads one slice of at most ``rows`` people of the
scores file and the rows of the other files for exactly those people (a ``person_id`` range
filter lets the reader skip the row groups of sorted files), joins them, and returns:

- the slice's narrow whole-cohort columns (the equal-opportunity fit, the policies, impact);
- the raw group columns of the slice's people in the audited split.

Slices are concatenated in order, so the whole cohort is in the scores' row order, as one join
would give. The quantities of the whole cohort (``selected`` at the operating point,
``true_case``) are computed after, on the concatenated narrow columns
(:func:`pipeline.audit.cohort.with_whole_cohort_columns`), so the frames are the ones a single
whole-cohort join gives (``tests/test_audit_cohort.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import polars as pl

from pipeline.errors import ContractError
from pipeline.io import person_range

__all__ = ["READ_ROWS", "SourcePaths", "slice_bounds", "slice_rows"]

READ_ROWS: Final = 100_000
"""Most people of the scores file joined at once."""
SCORE_COLUMNS: Final = ("person_id", "split", "outcome", "risk_score", "risk_rank")


@dataclass(frozen=True)
class SourcePaths:
    """The audit's row-level inputs, as paths (a task reads them itself).

    ``truth``, ``oracle``: ``data/truth`` files, None when absent (real data) or, for the
    oracle, when it has no row of the target.
    """

    scores: Path
    features: Path
    need: Path
    truth: Path | None
    oracle: Path | None
    target: str


def slice_bounds(n_rows: int, *, rows: int = READ_ROWS) -> list[tuple[int, int]]:
    """``(start, stop)`` of each slice of ``n_rows`` rows, at most ``rows`` each, in order.

    >>> slice_bounds(5, rows=2)
    [(0, 2), (2, 4), (4, 5)]
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    return [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)] or [(0, 0)]


def _of_people(frame: pl.LazyFrame, ids: pl.Series) -> pl.LazyFrame:
    """The rows of ``frame`` for ``ids`` (their range first, so sorted files skip row groups)."""
    return frame.filter(person_range(ids)).filter(pl.col("person_id").is_in(ids.implode()))


def _truth(sources: SourcePaths, ids: pl.Series) -> tuple[pl.LazyFrame | None, pl.LazyFrame | None]:
    """The slice's true need (the target's own from the oracle when there is one) and oracle
    risk, as :func:`pipeline.audit._read_truth` defines them."""
    truth = oracle = None
    if sources.truth is not None:
        truth = _of_people(pl.scan_parquet(sources.truth), ids).select("person_id", "true_need")
    if sources.oracle is not None:
        oracle = _of_people(
            pl.scan_parquet(sources.oracle).filter(pl.col("target") == sources.target), ids
        ).select("person_id", "true_need", "oracle_risk")
    if truth is not None and oracle is not None:
        truth = truth.drop("true_need").join(
            oracle.select("person_id", "true_need"), on="person_id", how="left"
        )
    return truth, oracle


def slice_rows(
    bounds: tuple[int, int],
    *,
    sources: SourcePaths,
    whole_columns: tuple[str, ...],
    split_columns: tuple[str, ...],
    split: Literal["all", "test", "validation"],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One slice's people joined to their groups, truth, oracle risk and need score.

    Parameters
    ----------
    bounds
        ``(start, stop)`` rows of the scores file.
    sources
        Where the inputs are.
    whole_columns, split_columns
        Sensitive columns of the features kept for everyone, and for the people of ``split``
        only (every person when ``split`` is ``all``).

    Returns
    -------
    tuple of polars.DataFrame
        The slice's people in the scores' order (no ``person_id``): the scores' columns,
        ``whole_columns``, ``true_need``, ``oracle_risk`` and ``need_score`` (the last three
        when present); and ``split_columns`` of its people in ``split``, in the same order.
    """
    start, stop = bounds
    scores = (
        pl.scan_parquet(sources.scores).select(SCORE_COLUMNS).slice(start, stop - start).collect()
    )
    ids = scores["person_id"]
    columns = tuple(dict.fromkeys((*whole_columns, *split_columns)))
    features = _of_people(pl.scan_parquet(sources.features), ids).select("person_id", *columns)
    joined = scores.lazy().join(features, on="person_id", how="left", maintain_order="left")
    truth, oracle = _truth(sources, ids)
    for extra in (truth, None if oracle is None else oracle.select("person_id", "oracle_risk")):
        if extra is not None:
            joined = joined.join(extra, on="person_id", how="left", maintain_order="left")
    need = _of_people(pl.scan_parquet(sources.need), ids).select("person_id", "need_score")
    joined = joined.join(need, on="person_id", how="left", maintain_order="left")
    people = joined.drop("person_id").collect()
    if people.height != scores.height:  # a person twice in a joined file
        raise ContractError(
            f"{sources.scores} rows {start}-{stop}: {people.height - scores.height} extra "
            f"row(s) joining {sources.features}, the truth and {sources.need}: person_id is "
            "not unique in one of them"
        )
    chosen = people if split == "all" else people.filter(pl.col("split") == split)
    narrow = [c for c in people.columns if c not in columns or c in whole_columns]
    return people.select(narrow), chosen.select(split_columns)
