"""Reading the audit's people in slices of the scores file, so the joins' memory is a slice's.

The audit joins each eligible person's score to their groups (``features/features.parquet``),
truth, oracle risk and need score, matching ``person_id`` strings across five files. Done on the
whole cohort at once, those joins dominate the stage's memory (hash tables of every id). Here
each task (:func:`slice_rows`, a module-level function run here or on Dask through
:func:`pipeline.engine.map_partitions`) reads one slice of at most ``rows`` people of the
scores file and the rows of the other files for exactly those people (a ``person_id`` range
filter lets the reader skip the row groups of sorted files), joins them, and returns:

- the slice's narrow whole-cohort columns (the equal-opportunity fit, the policies, impact);
- the narrow and group columns of the slice's people in the audited split.

Two passes over the slices. The first (:func:`slice_summary`, folded in any order) counts the
people, the audited split and the recorded true need of each slice and keeps the candidates of
the operating point's cuts (:mod:`pipeline.audit.bounded`). The second (:func:`slice_rows`)
returns the people the stage holds: everyone below the caps (``audit.max_cohort_rows``,
``audit.max_audited_rows``), past them the positions of a seeded sample (:class:`SliceTask`).
Slices are concatenated in order, so the rows are in the scores' row order, as one join would
give. ``selected`` and ``true_case`` are then the whole cohort's, applied from its cuts
(:func:`pipeline.audit.bounded.with_cuts`), so below the caps the frames are the ones a single
whole-cohort join gives (``tests/test_audit_cohort.py``), and past them the sampled rows
carry the whole cohort's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import polars as pl

from pipeline.audit import bounded
from pipeline.batches import slice_bounds
from pipeline.errors import ContractError
from pipeline.io import person_range

__all__ = [
    "READ_ROWS",
    "SliceTask",
    "SourcePaths",
    "slice_bounds",
    "slice_digits",
    "slice_rows",
    "slice_summary",
]

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


@dataclass(frozen=True)
class SliceTask:
    """One slice of the scores file and the sampled people it returns: positions within the
    slice (``whole``) and within its audited-split people (``audited``); None: every one."""

    bounds: tuple[int, int]
    whole: np.ndarray | None = None
    audited: np.ndarray | None = None


def _scores(bounds: tuple[int, int], sources: SourcePaths) -> pl.DataFrame:
    start, stop = bounds
    return (
        pl.scan_parquet(sources.scores).select(SCORE_COLUMNS).slice(start, stop - start).collect()
    )


def _joined(
    bounds: tuple[int, int],
    *,
    sources: SourcePaths,
    columns: tuple[str, ...],
    need: bool,
    oracle_risk: bool = True,
    truth: bool = True,
) -> pl.DataFrame:
    """The slice's people (no ``person_id``) with the features' ``columns``, the truth and
    (with ``oracle_risk``) the oracle risk when present (none of either without ``truth``)
    and, with ``need``, the need score; checked for duplicates."""
    start, stop = bounds
    scores = _scores(bounds, sources)
    ids = scores["person_id"]
    joined = scores.lazy()
    if columns:
        features = _of_people(pl.scan_parquet(sources.features), ids).select("person_id", *columns)
        joined = joined.join(features, on="person_id", how="left", maintain_order="left")
    true_need, oracle = _truth(sources, ids) if truth else (None, None)
    risk = None if oracle is None or not oracle_risk else oracle.select("person_id", "oracle_risk")
    for extra in (true_need, risk):
        if extra is not None:
            joined = joined.join(extra, on="person_id", how="left", maintain_order="left")
    if need:
        need_rows = _of_people(pl.scan_parquet(sources.need), ids).select("person_id", "need_score")
        joined = joined.join(need_rows, on="person_id", how="left", maintain_order="left")
    people = joined.drop("person_id").collect()
    if people.height != scores.height:  # a person twice in a joined file
        raise ContractError(
            f"{sources.scores} rows {start}-{stop}: {people.height - scores.height} extra "
            f"row(s) joining {sources.features}, the truth and {sources.need}: person_id is "
            "not unique in one of them"
        )
    return people


def _split_count(split: Literal["all", "test", "validation"]) -> pl.Expr:
    """People of ``split`` (everyone for ``all``)."""
    return pl.len() if split == "all" else (pl.col("split") == split).sum()


def slice_summary(
    bounds: tuple[int, int],
    *,
    sources: SourcePaths,
    split: Literal["all", "test", "validation"],
    unit: str | None,
    capacity: float,
    share_rank: int,
    truth: bool,
) -> bounded.SliceSummary:
    """A slice's counts and candidates for the whole cohort's cuts
    (:class:`pipeline.audit.bounded.SliceSummary`): the first pass over the slices. With
    ``truth``, its count of recorded true need (the true-need cut's position, needed only when
    the cohort is sampled: the truth is not read otherwise)."""
    # the first pass reads only what the counts and cuts need: no need score, no oracle risk
    people = _joined(
        bounds,
        sources=sources,
        columns=(unit,) if unit else (),
        need=False,
        oracle_risk=False,
        truth=truth,
    )
    counts = people.select(
        _split_count(split).alias("n_split"),
        (pl.col("risk_score").is_null() | pl.col("outcome").is_null()).sum().alias("n_missing"),
        pl.col("risk_rank").min().alias("rank_min"),
        pl.col("risk_rank").max().alias("rank_max"),
        pl.col("risk_rank").cast(pl.Int64).sum().alias("rank_sum"),
        (pl.col("true_need").is_not_null().sum() if "true_need" in people.columns else pl.lit(0))
        .cast(pl.Int64)
        .alias("n_true_need"),
    ).row(0, named=True)
    return bounded.SliceSummary(
        n_rows=people.height,
        n_missing=int(counts["n_missing"]),
        n_true_need=int(counts["n_true_need"]),
        rank_min=counts["rank_min"],
        rank_max=counts["rank_max"],
        rank_sum=int(counts["rank_sum"] or 0),
        candidates=bounded.slice_candidates(
            people, unit=unit, capacity=capacity, share_rank=share_rank
        ),
        split_counts={bounds[0]: int(counts["n_split"])},
    )


def slice_digits(
    bounds: tuple[int, int], *, sources: SourcePaths, prefix: int, level: int
) -> np.ndarray:
    """One pass of the exact true-need cut over a slice
    (:func:`pipeline.audit.bounded.digit_histogram` of its people's recorded true need)."""
    ids = _scores(bounds, sources)["person_id"]
    truth, _ = _truth(sources, ids)
    if truth is None:  # no data/truth people: no true need, nothing to count
        return np.zeros(2**bounded.DIGIT_BITS, dtype=np.int64)
    values = truth.select("true_need").drop_nulls().collect()["true_need"].to_numpy()
    return bounded.digit_histogram(values, prefix=prefix, level=level)


def slice_rows(
    task: SliceTask,
    *,
    sources: SourcePaths,
    whole_columns: tuple[str, ...],
    split_columns: tuple[str, ...],
    split: Literal["all", "test", "validation"],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One slice's people joined to their groups, truth, oracle risk and need score.

    Parameters
    ----------
    task
        The slice of the scores file and its sampled positions.
    sources
        Where the inputs are.
    whole_columns, split_columns
        Sensitive columns of the features kept for everyone, and for the people of ``split``
        only (every person when ``split`` is ``all``).

    Returns
    -------
    tuple of polars.DataFrame
        The slice's (sampled) people in the scores' order (no ``person_id``): the scores'
        columns, ``whole_columns``, ``true_need``, ``oracle_risk`` and ``need_score`` (the last
        three when present); and its (sampled) people in ``split``, in the same order, with
        those columns and ``split_columns``.
    """
    columns = tuple(dict.fromkeys((*whole_columns, *split_columns)))
    people = _joined(task.bounds, sources=sources, columns=columns, need=True)
    narrow = [c for c in people.columns if c not in columns or c in whole_columns]
    chosen = people if split == "all" else people.filter(pl.col("split") == split)
    if task.audited is not None:
        chosen = chosen[task.audited]
    whole = people.select(narrow)
    if task.whole is not None:
        whole = whole[task.whole]
    extra = [c for c in split_columns if c not in narrow]
    return whole, chosen.select(*narrow, *extra)
