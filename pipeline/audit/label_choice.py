"""Label-choice audit (Obermeyer et al., Science 2019): is the same score the same need?

A model trained on a recorded outcome (admissions, like cost in Obermeyer's study) can be
calibrated for every group and still under-serve a group whose needs are under-recorded or
who use less care for the same need. The check: mean need by score percentile for each group
(recorded multimorbidity always; true need when ``data/truth`` exists), the need gap at the same
score and at the selection cut-off, and - with truth - each group's share of the selection if
people were ranked by true need (or true risk) instead of by score.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl

from pipeline import selection
from pipeline.audit.aggregate import grouped_moments
from pipeline.metrics import z_value

NEED_MEASURES: Final = {"recorded_need": "recorded multimorbidity", "true_need": "true need"}


def add_score_percentile(cohort: pl.DataFrame, *, n_bins: int) -> pl.DataFrame:
    """``score_percentile``: 1..n_bins of the audited cohort's scores (n_bins = highest)."""
    return cohort.with_columns(
        ((pl.col("risk_score").rank("min") - 1) * n_bins // pl.len() + 1)
        .cast(pl.Int32)
        .alias("score_percentile")
    )


def need_by_percentile(
    cohort: pl.DataFrame, dimension: str, need: str, *, by: str = "score_percentile"
) -> pl.DataFrame:
    """Mean (and sd) of ``need`` per group and score percentile (raw counts).

    ``by``: the score grouping, ``score_percentile`` for the published curves or the audit's
    fine ``score_bin`` for the same-score comparison (its column is still called
    ``score_percentile``).
    """
    return (
        grouped_moments(
            cohort.with_columns(pl.col(by).alias("score_percentile")),
            [dimension, "score_percentile"],
            [need],
        )
        .select(
            pl.col(dimension).alias("group"),
            "score_percentile",
            pl.col("n").cast(pl.UInt32),
            pl.col(f"{need}_mean").alias("mean_need"),
            pl.col(f"{need}_sd").alias("sd_need"),
        )
        .with_columns(pl.lit(dimension).alias("dimension"), pl.lit(need).alias("need_measure"))
        .sort("group", "score_percentile")
    )


def need_gap_same_score(curve: pl.DataFrame, *, reference: str, confidence: float) -> pl.DataFrame:
    """Need gap to the reference group at the same score, standardised to each group's scores.

    gap_g = sum_b n_gb (need_gb - need_rb) / sum_b n_gb over score cells b where both groups
    have people; ratio_g = sum_b n_gb need_gb / sum_b n_gb need_rb. Both are linear in the
    cell means, so their normal CIs are exact sums of the cell variances (pooled within-cell sd
    of each group / sqrt(n)); the ratio's CI is on the log scale (delta method).
    """
    ref = curve.filter(pl.col("group") == reference).select(
        "score_percentile",
        pl.col("mean_need").alias("ref_mean"),
        pl.col("n").alias("ref_n"),
    )
    joined = curve.join(ref, on="score_percentile", how="inner").sort("group", "score_percentile")
    groups = joined["group"].unique(maintain_order=True).to_list()
    index = joined.select(pl.col("group").rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
    n = joined["n"].to_numpy().astype(np.float64)
    mean, sd = joined["mean_need"].to_numpy(), joined["sd_need"].to_numpy()
    ref_mean = joined["ref_mean"].to_numpy()
    ref_n = joined["ref_n"].to_numpy().astype(np.float64)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])  # rows sorted by group

    def per_group(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts)

    # one pooled within-cell sd per group: fine score cells often hold one or two people
    dof = np.clip(n - 1, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.nan_to_num(np.sqrt(per_group(dof * sd**2) / per_group(dof)))
    pooled_sd = dict(zip(groups, pooled, strict=True))
    own_var = (pooled[index] ** 2) / n  # variance of each cell mean
    ref_var = pooled_sd.get(reference, 0.0) ** 2 / ref_n
    is_ref = np.asarray(groups) == reference
    own_var = np.where(is_ref[index], 0.0, own_var)
    ref_var = np.where(is_ref[index], 0.0, ref_var)
    weight = per_group(n)
    own_sum, other_sum = per_group(n * mean), per_group(n * ref_mean)
    z = z_value(confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = (own_sum - other_sum) / weight
        ratio = own_sum / other_sum
        var_own, var_other = per_group(n**2 * own_var), per_group(n**2 * ref_var)
        gap_se = np.sqrt(var_own + var_other) / weight
        log_se = np.sqrt(var_own / own_sum**2 + var_other / other_sum**2)
    return pl.DataFrame(
        {
            "group": groups,
            "need_gap": gap,
            "need_gap_ci_low": np.where(is_ref, np.nan, gap - z * gap_se),
            "need_gap_ci_high": np.where(is_ref, np.nan, gap + z * gap_se),
            "need_ratio": ratio,
            "need_ratio_ci_low": np.where(is_ref, np.nan, ratio * np.exp(-z * log_se)),
            "need_ratio_ci_high": np.where(is_ref, np.nan, ratio * np.exp(z * log_se)),
        }
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def need_gap_at_cutoff(
    cohort: pl.DataFrame, dimension: str, need: str, *, reference: str, confidence: float
) -> pl.DataFrame:
    """Mean need of each group's *selected* people minus the reference's (Welch normal CI):
    at the cut-off, does the same selection mean the same need?"""
    moments = grouped_moments(cohort.filter(pl.col("selected")), [dimension], [need])
    selected = moments.select(
        pl.col(dimension).alias("group"),
        pl.col("n").cast(pl.UInt32).alias("n_selected"),
        pl.col(f"{need}_mean").alias("mean_need_selected"),
        (pl.col(f"{need}_sd") ** 2).alias("var"),
    )
    ref = selected.filter(pl.col("group") == reference)
    if ref.height == 0:
        return selected.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(name)
            for name in ("cutoff_gap", "cutoff_gap_ci_low", "cutoff_gap_ci_high")
        ).drop("var")
    ref_mean, ref_var, ref_n = ref["mean_need_selected"][0], ref["var"][0], ref["n_selected"][0]
    z = z_value(confidence)
    se = (pl.col("var") / pl.col("n_selected") + ref_var / ref_n).sqrt()
    gap = pl.col("mean_need_selected") - ref_mean
    is_ref = pl.col("group") == reference
    return selected.with_columns(
        cutoff_gap=gap,
        cutoff_gap_ci_low=pl.when(is_ref).then(None).otherwise(gap - z * se),
        cutoff_gap_ci_high=pl.when(is_ref).then(None).otherwise(gap + z * se),
    ).drop("var")


def selection_shares(
    cohort: pl.DataFrame, dimension: str, *, rankings: dict[str, str], unit: str | None
) -> pl.DataFrame:
    """Each group's share of the selection under each ranking (raw counts ``n_selected_<name>``).

    ``rankings`` maps a name (``risk_score``, ``true_need``, ``oracle_risk``) to a column.
    """
    flags = cohort.with_columns(
        selection.select_like(pl.col(column), selected=pl.col("selected"), unit=unit).alias(
            f"_by_{name}"
        )
        for name, column in rankings.items()
    )
    return (
        flags.group_by(dimension)
        .agg(pl.col(f"_by_{name}").sum().alias(f"n_selected_by_{name}") for name in rankings)
        .rename({dimension: "group"})
        .with_columns(
            (pl.col(f"n_selected_by_{name}") / pl.col(f"n_selected_by_{name}").sum()).alias(
                f"share_by_{name}"
            )
            for name in rankings
        )
        .sort("group")
    )
