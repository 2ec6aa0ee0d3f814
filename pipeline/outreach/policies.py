"""Outreach policies: who is contacted first (``priority``, higher = sooner).

``risk``
    Rank by the calibrated risk score.
``core20plus5``
    Rank by ``risk_score * core20_uplift`` for IMD quintile 1 (Core20: the most deprived 20%
    nationally) and ``* plus_uplift`` for the PLUS ethnic groups (``plus_groups``); both uplifts
    multiply when both apply. The uplift only re-orders people: nobody's score is changed.
``equal_opportunity``
    Group thresholds over IMD quintiles from fairlearn's ``ThresholdOptimizer``
    (``true_positive_rate_parity``) fitted on the validation split and matched to the list's
    cut-off score (``pipeline.fairness``, the rule the audit compares), derandomised by taking
    the probability-weighted threshold of its two. People are ranked by ``risk_score /
    threshold`` of their quintile, so the capacity cut is the same multiple of every group's
    threshold.
``need_adjusted``
    Rank by the audit's ``need_score`` (``data/scores/need/<target>.parquet``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import polars as pl

from pipeline import fairness
from pipeline.config import OutreachParams
from pipeline.errors import ParamsError, StageError

__all__ = [
    "Policy",
    "equal_opportunity_thresholds",
    "fit_thresholds",
    "policy_detail",
    "policy_priority",
    "prioritise",
]

Policy = Literal["risk", "core20plus5", "equal_opportunity", "need_adjusted"]


def equal_opportunity_thresholds(
    validation: pl.DataFrame,
    *,
    group: str = "imd_quintile",
    cut_score: float | None = None,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Per-group score thresholds with equal true positive rates, fitted on the validation split.

    The same rule the audit compares (:func:`pipeline.fairness.equal_opportunity_thresholds`).

    Parameters
    ----------
    validation
        Validation-split rows with ``risk_score``, ``outcome`` and ``group``.
    group
        The grouping column (IMD quintile).
    cut_score
        The risk score at the capacity cut-off (None: fairlearn's own optimum).
    rng
        Draws the subsample of negatives that matches the optimiser to the cut-off (the audit
        uses the same stream, :func:`pipeline.seeds.rng` ``("equal_opportunity", target)``).

    Returns
    -------
    dict[str, float]
        Threshold per group label.
    """
    frame = validation.filter(pl.col(group).is_not_null())
    try:
        return fairness.equal_opportunity_thresholds(
            frame["risk_score"].to_numpy(),
            frame["outcome"].to_numpy(),
            frame[group].to_numpy(),
            cut_score=cut_score,
            rng=rng,
        )
    except StageError as error:
        raise StageError(f"outreach: {error} (validation split, {group})") from None


def policy_priority(
    cohort: pl.LazyFrame,
    *,
    policy: Policy,
    outreach: OutreachParams,
    thresholds: Mapping[str, float] | None = None,
    need: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Add ``priority`` (higher = contact first) to the cohort according to the policy.

    Parameters
    ----------
    cohort
        Scores joined with ``imd_quintile`` and ``ethnicity_group``.
    policy
        See the module docstring.
    outreach
        The outreach params (uplifts and PLUS groups).
    thresholds
        Group thresholds for ``equal_opportunity`` (see :func:`equal_opportunity_thresholds`).
    need
        ``person_id``, ``need_score`` for ``need_adjusted``.

    Returns
    -------
    pl.LazyFrame
        The cohort with a Float64 ``priority``.
    """
    if policy == "risk":
        return cohort.with_columns(pl.col("risk_score").alias("priority"))
    if policy == "core20plus5":
        priority = fairness.core20plus5_priority(
            core20_uplift=outreach.core20_uplift,
            plus_uplift=outreach.plus_uplift,
            plus_groups=outreach.plus_groups,
        )
        return cohort.with_columns(priority.alias("priority"))
    if policy == "equal_opportunity":
        if not thresholds:
            raise StageError("outreach: equal_opportunity needs fitted group thresholds")
        # People in a quintile the optimiser never saw (e.g. missing IMD) get the mean threshold.
        return cohort.with_columns(
            fairness.equal_opportunity_priority(thresholds).alias("priority")
        )
    if policy == "need_adjusted":
        if need is None:
            raise StageError("outreach: need_adjusted needs the audit's need scores")
        return cohort.join(
            need.select("person_id", pl.col("need_score").cast(pl.Float64)),
            on="person_id",
            how="left",
        ).with_columns(pl.col("need_score").fill_null(-math.inf).alias("priority"))
    raise ParamsError(f"outreach.policy: unknown policy {policy!r}")


def fit_thresholds(
    cohort: pl.DataFrame, *, outreach: OutreachParams, rng: np.random.Generator
) -> dict[str, float] | None:
    """The equal-opportunity thresholds at the list's capacity (None for other policies).

    Parameters
    ----------
    cohort
        One target's whole eligible cohort, or just its columns the fit reads (``split``,
        ``risk_score``, ``risk_rank``, ``outcome``, ``imd_quintile`` and a per-unit capacity's
        unit column: :func:`pipeline.fairness.fit_equal_opportunity`).
    outreach
        Policy and capacity.
    rng
        The ``("equal_opportunity", target)`` stream.
    """
    if outreach.policy != "equal_opportunity":
        return None
    # the audit's fit too, at this list's capacity (validation split, whole-cohort cut)
    try:
        return fairness.fit_equal_opportunity(
            cohort, capacity_mode=outreach.capacity_mode, capacity=outreach.capacity, rng=rng
        )
    except StageError as error:
        raise StageError(f"outreach: {error} (validation split, imd_quintile)") from None


def prioritise(
    cohort: pl.DataFrame,
    *,
    outreach: OutreachParams,
    rng: np.random.Generator,
    need: pl.LazyFrame | None = None,
) -> tuple[pl.LazyFrame, dict[str, float] | None]:
    """The cohort with ``priority`` under ``outreach.policy``, fitting thresholds if it needs them.

    Parameters
    ----------
    cohort
        One target's eligible cohort (scores with ``split``, ``outcome``, ``risk_rank`` and the
        sensitive columns).
    outreach
        Policy, capacity and uplifts.
    rng
        The ``("equal_opportunity", target)`` stream (used by that policy only).
    need
        ``person_id``, ``need_score`` for ``need_adjusted``.

    Returns
    -------
    tuple[pl.LazyFrame, dict[str, float] | None]
        The prioritised cohort and the equal-opportunity thresholds (None for other policies).
    """
    thresholds = fit_thresholds(cohort, outreach=outreach, rng=rng)
    prioritised = policy_priority(
        cohort.lazy(), policy=outreach.policy, outreach=outreach, thresholds=thresholds, need=need
    )
    return prioritised, thresholds


def policy_detail(
    outreach: OutreachParams, thresholds: Mapping[str, float] | None
) -> dict[str, Any]:
    """The policy and its settings as the summary reports them."""
    detail: dict[str, Any] = {"policy": outreach.policy}
    if outreach.policy == "core20plus5":
        detail |= {
            "core20_uplift": outreach.core20_uplift,
            "plus_groups": list(outreach.plus_groups),
            "plus_uplift": outreach.plus_uplift,
        }
    if thresholds is not None:
        detail["imd_quintile_thresholds"] = {
            str(group): round(value, 6) for group, value in sorted(thresholds.items())
        }
    return detail
