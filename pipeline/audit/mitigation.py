"""Mitigation trade-off: four ways to fill the same outreach capacity, compared on one table.

Policies (each ranks the cohort and takes as many people as the risk ranking does, overall or
per ICB / practice, so "more reached" always means "better use of the same capacity"):

``risk``
    The risk score (what the outreach stage does by default).
``equal_opportunity``
    fairlearn ``ThresholdOptimizer`` (``true_positive_rate_parity`` across IMD quintiles,
    prefit on the score) fitted on the validation split, with the accuracy objective made
    cost-weighted (negatives subsampled) so that its optimum sits at the capacity cut; one fit
    for the audit and outreach (:func:`pipeline.fairness.fit_equal_opportunity`). Its
    randomised two-threshold rule per group is derandomised to the probability-weighted
    threshold, and people are ranked by score / their group's threshold, so the capacity cut
    sits at the same multiple of every group's threshold (the rule the outreach stage uses).
``core20plus5``
    Score x ``core20_uplift`` in IMD quintile 1 and x ``plus_uplift`` in the PLUS ethnic groups.
``need_based``
    The need stage's ranking (:mod:`pipeline.need`: a LightGBM regression of a need label on the
    recorded features), read from ``data/scores/need/<target>.parquet`` as ``need_score``.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import polars as pl

from pipeline import fairness, selection

POLICIES: Final = ("risk", "equal_opportunity", "core20plus5", "need_based")


def policy_selections(
    cohort: pl.DataFrame,
    *,
    thresholds: dict[str, float] | None,
    core20_uplift: float,
    plus_uplift: float,
    plus_groups: tuple[str, ...],
    unit: str | None,
) -> pl.DataFrame:
    """Add ``selected_<policy>`` for every policy (``need_score`` must be present for
    ``need_based``), each as many people as ``selected`` (overall or per ``unit``)."""
    frame = cohort.with_columns(
        fairness.equal_opportunity_priority(thresholds or {}).alias("_priority_equal_opportunity"),
        fairness.core20plus5_priority(
            core20_uplift=core20_uplift, plus_uplift=plus_uplift, plus_groups=plus_groups
        ).alias("_priority_core20plus5"),
        pl.col("need_score").fill_null(-math.inf).alias("_priority_need_based"),
    )
    # without need scores (no need model) the need-based policy is left out, not faked
    has_need = "need_score" in cohort.columns and cohort["need_score"].null_count() < cohort.height
    ranked = [p for p in POLICIES[1:] if p != "need_based" or has_need]
    frame = frame.with_columns(
        pl.col("selected").alias("selected_risk"),
        *(
            selection.select_like(
                pl.col(f"_priority_{policy}"), selected=pl.col("selected"), unit=unit
            ).alias(f"selected_{policy}")
            for policy in ranked
        ),
    )
    return frame.drop(f"_priority_{policy}" for policy in POLICIES[1:])


def tradeoff_table(
    cohort: pl.DataFrame, *, dimensions: tuple[str, ...], has_truth: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per policy: totals reached, and per group: selection share and TPR (raw counts).

    Returns
    -------
    tuple of polars.DataFrame
        ``summary`` (one row per policy: n_selected, n_events_reached, n_events, and with
        truth the expected true events reached and true-need cases reached) and ``by_group``
        (policy x dimension x group: n, n_selected, n_events, n_events_reached, n_cases,
        n_cases_reached).
    """
    case = "true_case" if has_truth else "outcome"
    policies = [p for p in POLICIES if f"selected_{p}" in cohort.columns]
    aggregations = [
        *_shared_counts(case),
        *(e for policy in policies for e in _policy_counts(policy, case)),
    ]
    summary_wide = cohort.select(aggregations)
    if has_truth and "oracle_risk" in cohort.columns:
        summary_wide = summary_wide.with_columns(_expected_true_events(cohort, policies))
    by_group = [
        _long(
            cohort.group_by(dimension).agg(aggregations).rename({dimension: "group"}),
            ["group"],
            policies=policies,
        ).with_columns(pl.lit(dimension).alias("dimension"))
        for dimension in dimensions
    ]
    summary = _long(summary_wide, [], policies=policies).drop("n")
    groups = pl.concat(by_group, how="diagonal_relaxed").with_columns(
        (pl.col("n_selected") / pl.col("n_selected").sum().over("policy", "dimension")).alias(
            "selection_share"
        ),
        (pl.col("n_events_reached") / pl.col("n_events")).alias("tpr"),
        (pl.col("n_cases_reached") / pl.col("n_cases")).alias("case_tpr"),
    )
    return summary, groups


def _shared_counts(case: str) -> list[pl.Expr]:
    """Counts that do not depend on the policy: people, events and cases."""
    return [
        pl.len().alias("n"),
        pl.col("outcome").cast(pl.Int64).sum().alias("n_events"),
        pl.col(case).cast(pl.Int64).sum().alias("n_cases"),
    ]


def _policy_counts(policy: str, case: str) -> list[pl.Expr]:
    """One policy's selected, events reached and cases reached, named ``<policy>|<count>``."""
    chosen = pl.col(f"selected_{policy}")
    return [
        chosen.sum().cast(pl.Int64).alias(f"{policy}|n_selected"),
        (chosen & (pl.col("outcome") == 1))
        .sum()
        .cast(pl.Int64)
        .alias(f"{policy}|n_events_reached"),
        (chosen & pl.col(case).cast(pl.Boolean))
        .sum()
        .cast(pl.Int64)
        .alias(f"{policy}|n_cases_reached"),
    ]


def _expected_true_events(cohort: pl.DataFrame, policies: list[str]) -> list[pl.Expr]:
    """Expected true events, overall and reached by each policy (sums of oracle risk)."""
    # float sums in numpy (row order), so identical on every run
    oracle = cohort["oracle_risk"].to_numpy()
    return [
        pl.lit(float(np.sum(oracle))).alias("expected_true_events"),
        *(
            pl.lit(float(np.sum(oracle[cohort[f"selected_{p}"].to_numpy()]))).alias(
                f"{p}|expected_true_events_reached"
            )
            for p in policies
        ),
    ]


def _long(wide: pl.DataFrame, keys: list[str], *, policies: list[str]) -> pl.DataFrame:
    """One row per policy (and key) from one wide row of ``<policy>|<count>`` columns: one
    pass over the people for all policies."""
    shared = [c for c in wide.columns if "|" not in c and c not in keys]
    parts = [
        wide.select(
            *keys,
            *shared,
            *(
                pl.col(c).alias(c.split("|", 1)[1])
                for c in wide.columns
                if c.startswith(f"{policy}|")
            ),
        ).with_columns(pl.lit(policy).alias("policy"))
        for policy in policies
    ]
    return pl.concat(parts, how="diagonal_relaxed")


def tpr_gaps(by_group: pl.DataFrame, *, dimension: str, min_group_events: int) -> pl.DataFrame:
    """Largest minus smallest TPR across the stable groups of ``dimension``, per policy."""
    return (
        by_group.filter(
            (pl.col("dimension") == dimension) & (pl.col("n_events") >= min_group_events)
        )
        .group_by("policy")
        .agg(
            (pl.col("tpr").max() - pl.col("tpr").min()).alias("tpr_gap"),
            (pl.col("case_tpr").max() - pl.col("case_tpr").min()).alias("case_tpr_gap"),
        )
        .with_columns(pl.lit(dimension).alias("gap_dimension"))
    )
