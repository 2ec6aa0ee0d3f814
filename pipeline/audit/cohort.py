"""The audit cohort: one row per eligible person with score, outcome, selection and groups.

Row-level, so it only ever lives in memory (or under ``data/``); everything published is built
from it by aggregation.
"""

from __future__ import annotations

from typing import Final, Literal

import polars as pl

from pipeline import contract, selection
from pipeline.errors import ContractError
from pipeline.selection import CapacityMode

INTERSECTION: Final = "ethnicity_group_x_imd_quintile"
UNKNOWN: Final = "Unknown"
ALWAYS_LABELLED: Final = ("imd_quintile", "imd_decile", "ethnicity_group", "age_band", "sex")
"""Labelled even when not audited: IMD and ethnicity for the gradients and the Core20PLUS5
policy, age band and sex for the funnel plots' standardisation."""


def dimension_expr(dimension: str) -> pl.Expr:
    """The group label of ``dimension`` as a String column named ``dimension`` (null -> Unknown).

    IMD groups are labelled by their number (``"1"`` = most deprived); the intersection reads
    ``"Asian, IMD 1"``.
    """
    if dimension == INTERSECTION:
        label = pl.concat_str(
            pl.col("ethnicity_group").fill_null(UNKNOWN),
            pl.lit(", IMD "),
            pl.col("imd_quintile").cast(pl.String).fill_null("?"),
        )
    else:
        label = pl.col(dimension).cast(pl.String).fill_null(UNKNOWN)
    return label.alias(dimension)


def build_cohort(
    scores: pl.LazyFrame,
    sensitive: pl.LazyFrame,
    *,
    dimensions: tuple[str, ...],
    capacity_mode: CapacityMode,
    capacity: float,
    split: Literal["all", "test", "validation"],
    truth: pl.LazyFrame | None = None,
    oracle: pl.LazyFrame | None = None,
    need_case_share: float = 0.2,
) -> pl.DataFrame:
    """Join scores to groups (and truth), apply the outreach capacity, keep the audited split.

    Parameters
    ----------
    scores
        ``contract.SCORES_SCHEMA`` rows, the whole eligible cohort.
    sensitive
        ``person_id`` + ``contract.SENSITIVE_SCHEMA`` columns + ``n_recorded_conditions``.
    dimensions
        Audit dimensions; each becomes a String column of group labels.
    capacity_mode, capacity
        The operating point (see :func:`pipeline.selection.select_top`); applied to the whole cohort
        before the split filter, as the outreach team would.
    split
        ``all`` or one split: metrics use only these people.
    truth, oracle
        ``data/truth`` tables (synthetic data only): adds ``true_need``, ``n_true_conditions``,
        ``true_case`` (in the top ``need_case_share`` of the whole cohort by true need) and
        ``oracle_risk``.

    Returns
    -------
    polars.DataFrame
        One row per audited person, in the order of ``scores``.
    """
    joined = cohort_plan(
        scores,
        sensitive,
        capacity_mode=capacity_mode,
        capacity=capacity,
        truth=truth,
        oracle=oracle,
        need_case_share=need_case_share,
    )
    if split != "all":
        joined = joined.filter(pl.col("split") == split)
    cohort = with_group_labels(joined, dimensions).collect()
    check_cohort(cohort, split=split, has_truth=truth is not None)
    return cohort


def cohort_plan(
    scores: pl.LazyFrame,
    sensitive: pl.LazyFrame,
    *,
    capacity_mode: CapacityMode,
    capacity: float,
    truth: pl.LazyFrame | None = None,
    oracle: pl.LazyFrame | None = None,
    need_case_share: float = 0.2,
    need: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """The whole eligible cohort, lazily: scores joined to the ``sensitive`` columns (raw, not
    yet labelled), truth, oracle and ``need`` (``person_id``, ``need_score``), with
    ``selected`` at the operating point (parameters as :func:`build_cohort`).

    Every whole-cohort quantity (``selected``, ``true_case``) is computed before any filter
    of the plan, so a split filtered from it is the split of the whole cohort's columns.
    """
    # joins keep the scores' row order (no sort of the wide frame needed for determinism)
    joined = scores.join(sensitive, on="person_id", how="left", maintain_order="left")
    if truth is not None:
        joined = join_truth(joined, truth, need_case_share=need_case_share)
    if oracle is not None:
        joined = joined.join(
            oracle.select("person_id", "oracle_risk"),
            on="person_id",
            how="left",
            maintain_order="left",
        )
    joined = joined.with_columns(
        selection.select_top(pl.col("risk_rank"), capacity_mode=capacity_mode, capacity=capacity)
    )
    if need is not None:
        joined = joined.join(
            need.select("person_id", "need_score"),
            on="person_id",
            how="left",
            maintain_order="left",
        )
    return joined


def join_truth(
    joined: pl.LazyFrame, truth: pl.LazyFrame, *, need_case_share: float
) -> pl.LazyFrame:
    """Add ``true_need``, ``n_true_conditions`` and ``true_case`` (in the top
    ``need_case_share`` of the whole frame by true need)."""
    return joined.join(
        truth.select("person_id", "true_need", "n_true_conditions"),
        on="person_id",
        how="left",
        maintain_order="left",
    ).with_columns(true_case(need_case_share=need_case_share))


def true_case(*, need_case_share: float) -> pl.Expr:
    """``true_case``: in the top ``need_case_share`` of the frame by true need."""
    return (
        (pl.col("true_need") >= pl.col("true_need").quantile(1.0 - need_case_share))
        .fill_null(False)
        .alias("true_case")
    )


def with_whole_cohort_columns(
    people: pl.DataFrame,
    *,
    capacity_mode: CapacityMode,
    capacity: float,
    need_case_share: float,
) -> pl.DataFrame:
    """``true_case`` (when ``people`` has ``true_need``) and ``selected``, computed over the
    whole cohort ``people`` as :func:`cohort_plan` computes them, in its column order."""
    added = [
        selection.select_top(pl.col("risk_rank"), capacity_mode=capacity_mode, capacity=capacity)
    ]
    if "true_need" in people.columns:
        added.append(true_case(need_case_share=need_case_share))
    frame = people.with_columns(added)
    late = ("true_need", "true_case", "oracle_risk", "selected", "need_score")
    first = [c for c in frame.columns if c not in late]
    return frame.select(*first, *(c for c in late if c in frame.columns))


def with_group_labels(people: pl.LazyFrame, dimensions: tuple[str, ...]) -> pl.LazyFrame:
    """Group labels of ``dimensions`` (:func:`dimension_expr`), ``recorded_need`` (Float64) and
    ``outcome`` as Int8."""
    return people.with_columns(
        *(dimension_expr(dimension) for dimension in labelled_dimensions(dimensions)),
        pl.col(contract.RECORDED_MULTIMORBIDITY).cast(pl.Float64).alias("recorded_need"),
        pl.col("outcome").cast(pl.Int8),
    )


def labelled_dimensions(dimensions: tuple[str, ...]) -> tuple[str, ...]:
    """The columns :func:`with_group_labels` labels: ``dimensions`` and those every audit
    needs, sorted."""
    # IMD and ethnicity are needed by the gradients and the Core20PLUS5 policy, age band and sex
    # by the funnel plots' standardisation, even when they are not audited dimensions
    return tuple(sorted(set(dimensions) | set(ALWAYS_LABELLED)))


def source_columns(dimensions: tuple[str, ...]) -> tuple[str, ...]:
    """The sensitive columns (:data:`pipeline.contract.SENSITIVE_SCHEMA`) the labels of
    ``dimensions`` are built from, in the schema's order."""
    wanted = set(labelled_dimensions(dimensions))
    if INTERSECTION in wanted:
        wanted |= {"ethnicity_group", "imd_quintile"}
    return tuple(c for c in contract.SENSITIVE_SCHEMA if c in wanted)


def check_cohort(cohort: pl.DataFrame, *, split: str, has_truth: bool) -> None:
    """A non-empty cohort with a score and an outcome for everyone (and, with ``has_truth``,
    a true need for someone); else :class:`~pipeline.errors.ContractError`."""
    if cohort.height == 0:
        raise ContractError(f"scores: no rows in split {split!r} to audit")
    missing = cohort.filter(pl.col("risk_score").is_null() | pl.col("outcome").is_null()).height
    if missing:
        raise ContractError(f"scores: {missing} rows with a null risk_score or outcome")
    if has_truth and cohort["true_need"].null_count() == cohort.height:
        raise ContractError("data/truth/people.parquet: no person of the cohort has a true_need")
