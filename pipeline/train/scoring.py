"""Scores of the whole eligible cohort: rank, decile, tier, and who the operating point selects."""

from __future__ import annotations

import polars as pl

from pipeline import contract, selection
from pipeline.selection import CapacityMode


def rank_scores(scored: pl.DataFrame, *, root_seed: int) -> pl.DataFrame:
    """Rank, decile and tier for every eligible person (``contract.SCORES_SCHEMA``).

    Parameters
    ----------
    scored
        person_id, split, outcome, risk_score for the whole cohort.
    root_seed
        The params ``seed`` (ties are broken by :func:`pipeline.selection.tie_key`).

    Returns
    -------
    pl.DataFrame
        risk_rank 1 = highest score (ties by the seeded per-person key,
        :func:`pipeline.selection.risk_order`), risk_decile 10 = highest, risk_tier from
        ``contract.RISK_TIERS`` by rank share; sorted by person_id.
    """
    n_people = scored.height
    keys, descending = selection.risk_order(root_seed=root_seed)
    # Each row's position in the risk order (the inverse of the ordering permutation): the rows
    # stay where they are, so no copy of the whole frame is sorted (memory: two index columns).
    ranked = scored.with_columns(
        (pl.arg_sort_by(keys, descending=descending).arg_sort() + 1).alias("risk_rank")
    )
    rank = pl.col("risk_rank").cast(pl.Int64)
    tier = pl.lit(None, dtype=pl.String)
    for label, cutoff in reversed(contract.RISK_TIERS):
        tier = pl.when(rank <= cutoff * n_people).then(pl.lit(label)).otherwise(tier)
    return (
        ranked.with_columns(
            rank.alias("risk_rank"),
            (10 - ((rank - 1) * 10) // n_people).cast(pl.Int8).alias("risk_decile"),
            tier.fill_null(contract.RISK_TIERS[-1][0]).alias("risk_tier"),
        )
        .select(pl.col(name).cast(dtype) for name, dtype in contract.SCORES_SCHEMA.items())
        .sort("person_id")
    )


def selected_at_capacity(
    scores: pl.DataFrame, *, capacity_mode: CapacityMode, capacity: float
) -> pl.Series:
    """Who a list at the operating point would reach, ranked on the whole cohort
    (:func:`pipeline.selection.select_top`; per-unit modes need icb_code / practice_id)."""
    chosen = selection.select_top(
        pl.col("risk_rank"), capacity_mode=capacity_mode, capacity=capacity
    )
    return scores.select(chosen).get_column("selected")
