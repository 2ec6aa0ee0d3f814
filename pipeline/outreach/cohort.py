"""One target's eligible cohort, read and reduced in chunks, so memory does not grow with it.

A *chunk* is a slice of at most ``chunk_people`` rows of ``data/scores/<target>.parquet``
(sorted by ``person_id``) with the people's sensitive attributes from
``features/features.parquet``, their need scores (``need_adjusted``) and their true need
(synthetic data); only the row groups of the chunk's ``person_id`` range are read. The outreach
stage passes over the chunks twice per target:

1. **candidates** (:func:`chunk_candidates`, folded by :func:`merge_candidates`): each capacity
   unit's first ``list_size`` people of the chunk in the policy's order (and, for the
   summary's comparison, in true need). Both orders are total (ties by ``risk_rank``, by
   ``person_id``), so a unit's first ``list_size`` people of the cohort are the first
   ``list_size`` of the union of every chunk's, whichever order the chunks are folded in: the
   same selection as ranking the whole cohort at once, holding one chunk and the running lists.
2. **aggregates** (:func:`chunk_aggregates`): the summary's counts and sums of each chunk with
   the final selection flagged, added in chunk order
   (:func:`pipeline.outreach.summary.add_aggregates`).

The chunk functions are module-level and take paths, so they run here or as Dask tasks
(:mod:`pipeline.engine`); the chunks are the same on both engines, so are the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from pipeline import contract, selection
from pipeline.config import OutreachParams
from pipeline.errors import ContractError
from pipeline.io import person_range
from pipeline.outreach import lists, policies, summary

__all__ = [
    "CHUNK_PEOPLE",
    "COHORT_COLUMNS",
    "Candidates",
    "CohortFiles",
    "check_columns",
    "chunk_aggregates",
    "chunk_bounds",
    "chunk_candidates",
    "merge_candidates",
    "read_chunk",
    "scan_cohort",
    "scan_units",
    "threshold_rows",
]

CHUNK_PEOPLE: Final = 1_000_000
"""Most eligible people read at once: a chunk's columns (~100 bytes a person) and the
running lists are what the stage holds of the cohort, whatever its size."""

COHORT_COLUMNS: Final = (
    "practice_id",
    "icb_code",
    "imd_quintile",
    "ethnicity_group",
    "region",
    *lists.CONTEXT_COLUMNS,
)
"""Sensitive attributes read from ``features/features.parquet`` (for units, policies, summary,
and the lists' context columns age and sex)."""

NEED_COLUMNS: Final = ("person_id", "true_need", "icb_code", "practice_id")
"""What a need-list candidate carries: enough to rank it again within its unit."""


@dataclass(frozen=True)
class CohortFiles:
    """Where one target's cohort is read from (absolute paths: tasks may run elsewhere)."""

    target: str
    scores: Path
    features: Path
    need: Path | None = None
    """``data/scores/need/<target>.parquet`` (``need_adjusted`` only)."""
    oracle: Path | None = None
    """``data/truth/oracle.parquet`` (synthetic data only)."""


@dataclass(frozen=True)
class Candidates:
    """The running lists of a fold: the selected rows (:func:`pipeline.outreach.lists.
    select_people`) and the need list's people (:data:`NEED_COLUMNS`; None without truth)."""

    selected: pl.DataFrame
    need: pl.DataFrame | None


def check_columns(frame: pl.LazyFrame, columns: Sequence[str], source: Path) -> None:
    """Raise ContractError naming the file and every column of ``columns`` it lacks."""
    present = frame.collect_schema().names()
    missing = [column for column in columns if column not in present]
    if missing:
        raise ContractError(f"{source}: missing column(s) {', '.join(missing)}")


def scan_cohort(scores_path: Path, features_path: Path) -> pl.LazyFrame:
    """The eligible cohort, lazily: scores with the sensitive attributes (``_in_features`` marks
    the scored people found in the features table)."""
    scores = pl.scan_parquet(scores_path)
    check_columns(scores, list(contract.SCORES_SCHEMA), scores_path)
    sensitive = pl.scan_parquet(features_path)
    check_columns(sensitive, ["person_id", *COHORT_COLUMNS], features_path)
    return (
        scores.select(list(contract.SCORES_SCHEMA))
        .join(
            sensitive.select("person_id", *COHORT_COLUMNS).with_columns(_in_features=True),
            on="person_id",
            how="left",
        )
        .with_columns(pl.col("icb_code").fill_null(lists.NO_ICB))
    )


def scan_units(
    scores_path: Path, features_path: Path, *, capacity_mode: selection.CapacityMode
) -> pl.LazyFrame:
    """What the capacity check counts: the scored people, joined to their ICB and practice only
    when the capacity is per unit (a share of the whole cohort needs no join: 10M people, ~4 s
    per target)."""
    if selection.unit_column(capacity_mode) is not None:
        return scan_cohort(scores_path, features_path)
    scores = pl.scan_parquet(scores_path)
    check_columns(scores, list(contract.SCORES_SCHEMA), scores_path)
    return scores.select("person_id")


def threshold_rows(files: CohortFiles, *, capacity_mode: selection.CapacityMode) -> pl.DataFrame:
    """The columns of the whole cohort the equal-opportunity fit reads
    (:func:`pipeline.outreach.policies.fit_thresholds`): five numbers a person and the unit,
    not the whole rows."""
    unit = selection.unit_column(capacity_mode)
    columns = ["split", "risk_score", "risk_rank", "outcome", "imd_quintile", unit]
    return (
        scan_cohort(files.scores, files.features)
        .select([column for column in columns if column is not None])
        .collect()
    )


def chunk_bounds(scores_path: Path, *, chunk_people: int = CHUNK_PEOPLE) -> list[tuple[int, int]]:
    """``(offset, length)`` of each chunk of the scores file (one empty chunk when it is empty).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> pl.DataFrame({"person_id": range(5)}).write_parquet(folder / "s.parquet")
    >>> chunk_bounds(folder / "s.parquet", chunk_people=2)
    [(0, 2), (2, 2), (4, 1)]
    """
    if chunk_people < 1:
        raise ValueError(f"chunk_people must be positive, got {chunk_people}")
    n_people = int(pl.scan_parquet(scores_path).select(pl.len()).collect().item())
    starts = range(0, n_people, chunk_people)
    return [(start, min(chunk_people, n_people - start)) for start in starts] or [(0, 0)]


def read_chunk(bounds: tuple[int, int], *, files: CohortFiles) -> pl.DataFrame:
    """One chunk of the cohort: scores (``contract.SCORES_SCHEMA``) with the sensitive
    attributes, in the scores file's order; people without a home area get
    :data:`pipeline.outreach.lists.NO_ICB`.

    Raises
    ------
    ContractError
        When scored people of the chunk have no row in the features table.
    """
    offset, length = bounds
    scores = (
        pl.scan_parquet(files.scores)
        .select(list(contract.SCORES_SCHEMA))
        .slice(offset, length)
        .collect()
    )
    ids = scores["person_id"]
    sensitive = (
        pl.scan_parquet(files.features)
        .filter(person_range(ids))
        .select("person_id", *COHORT_COLUMNS)
        .collect()
        .join(ids.to_frame(), on="person_id", how="semi", maintain_order="left")
    )
    if sensitive["person_id"].equals(ids):
        # the usual case: one feature row per scored person, both files sorted by person_id,
        # so the rows already line up (a left join that keeps the order takes twice as long)
        cohort = pl.concat([scores, sensitive.drop("person_id")], how="horizontal")
        return cohort.with_columns(pl.col("icb_code").fill_null(lists.NO_ICB))
    cohort = (
        scores.lazy()
        .join(
            sensitive.lazy().with_columns(_in_features=True),
            on="person_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(pl.col("icb_code").fill_null(lists.NO_ICB))
        .collect()
    )
    unmatched = cohort["_in_features"].null_count()
    if unmatched:
        missing = cohort.filter(pl.col("_in_features").is_null())["person_id"].head(3).to_list()
        raise ContractError(
            f"{files.features}: {unmatched} scored people of {files.target} have no row "
            f"in the features table (column person_id, rule: one row per scored person; "
            f"e.g. {missing})"
        )
    return cohort.drop("_in_features")


def _chunk_need(files: CohortFiles, cohort: pl.DataFrame) -> pl.LazyFrame | None:
    """The chunk's need scores (``need_adjusted`` only), every person's checked present."""
    if files.need is None:
        return None
    need = pl.scan_parquet(files.need).filter(person_range(cohort["person_id"]))
    lacking = cohort.lazy().join(need, on="person_id", how="anti").select(pl.len()).collect()
    if lacking.item():
        ids = cohort["person_id"]
        raise ContractError(
            f"{files.need}: no need_score for {lacking.item()} eligible people of "
            f"{files.target} with person_id {ids.min()!r} to {ids.max()!r} "
            "(column person_id, rule: one row per scored person)"
        )
    return need


def _chunk_truth(files: CohortFiles, cohort: pl.DataFrame) -> pl.DataFrame | None:
    """``person_id``, ``true_need`` of the chunk's people (synthetic data only)."""
    if files.oracle is None:
        return None
    rows = (
        pl.scan_parquet(files.oracle)
        .filter(person_range(cohort["person_id"]), pl.col("target") == files.target)
        .select("person_id", "target", "true_need")
        .collect()
    )
    return summary.target_true_need(rows, files.target)


def chunk_candidates(
    bounds: tuple[int, int],
    *,
    files: CohortFiles,
    outreach: OutreachParams,
    thresholds: dict[str, float] | None,
    capacity: pl.DataFrame,
) -> Candidates:
    """One chunk's candidates: each unit's first ``list_size`` people of the chunk by the
    policy's priority (:func:`pipeline.outreach.lists.select_people`) and, with truth, by true
    need (:func:`pipeline.outreach.summary.need_list`).

    ``thresholds`` are the equal-opportunity policy's, fitted on the whole cohort beforehand
    (:func:`pipeline.outreach.policies.fit_thresholds`); ``capacity`` the whole cohort's list
    sizes (:func:`pipeline.selection.list_sizes`).
    """
    cohort = read_chunk(bounds, files=files)
    prioritised = policies.policy_priority(
        cohort.lazy(),
        policy=outreach.policy,
        outreach=outreach,
        thresholds=thresholds,
        need=_chunk_need(files, cohort),
    )
    selected = lists.select_people(prioritised, capacity, capacity_mode=outreach.capacity_mode)
    truth = _chunk_truth(files, cohort)
    need = None
    if truth is not None:
        need = _need_top(
            summary.with_need_list(
                cohort.select(NEED_COLUMNS[0], *NEED_COLUMNS[2:]),
                truth,
                capacity=capacity,
                capacity_mode=outreach.capacity_mode,
            ),
        )
    return Candidates(selected=selected, need=need)


def _need_top(listed: pl.DataFrame) -> pl.DataFrame:
    return listed.filter("need_list").select(NEED_COLUMNS)


def merge_candidates(
    running: Candidates,
    chunk: Candidates,
    *,
    capacity: pl.DataFrame,
    capacity_mode: selection.CapacityMode,
) -> Candidates:
    """The first ``list_size`` people of each unit among two sets of candidates (the same
    result whichever is ``running``: both orders are total)."""
    both = pl.concat([running.selected, chunk.selected], how="vertical").drop("rank")
    selected = lists.select_people(both.lazy(), capacity, capacity_mode=capacity_mode)
    need = None
    if running.need is not None and chunk.need is not None:
        need = _need_top(
            summary.need_list(
                pl.concat([running.need, chunk.need], how="vertical"),
                capacity=capacity,
                capacity_mode=capacity_mode,
            )
        )
    return Candidates(selected=selected, need=need)


def chunk_aggregates(
    bounds: tuple[int, int],
    *,
    files: CohortFiles,
    selected_ids: pl.Series,
    need_ids: pl.Series | None,
) -> dict[str, pl.DataFrame]:
    """One chunk's :func:`pipeline.outreach.summary.summary_aggregates`, with ``selected`` (and,
    with truth, ``need_list``) flagged from the whole cohort's lists."""
    cohort = read_chunk(bounds, files=files).with_columns(
        pl.col("person_id").is_in(selected_ids.implode()).alias("selected")
    )
    truth = _chunk_truth(files, cohort)
    if truth is not None and need_ids is not None:
        cohort = summary.with_true_need(cohort, truth).with_columns(
            pl.col("person_id").is_in(need_ids.implode()).alias("need_list")
        )
    return summary.summary_aggregates(cohort, has_truth=truth is not None)
