"""Funnel plots for geographies: each area against the population value, age/sex standardised.

The standard way English public health compares areas (Spiegelhalter, "Funnel plots for
comparing institutional performance", Stat Med 2005;24:1185-1202). Comparing every ICB with the
largest one flags dozens of areas whenever that one is unusual; comparing each with the
population value after *indirect standardisation* asks whether the area differs from what its
own age and sex mix would give.

For an area and a metric (:data:`FUNNEL_METRICS`): ``observed`` = the area's count (people
selected, events, events reached); ``expected`` = sum over the area's people of the population
rate in their age band x sex stratum (for O/E: of the model's predicted risk, the model being
the expectation); the standardised ratio ``y = observed / expected``, target 1. Its variance
under the null is ``s^2 = k / expected`` with ``k`` = the dimension's binomial variance per
expected count (sum of p(1-p) over sum of p), so the limits are a smooth funnel in
``expected``. z-scores ``(y - 1) / s``; over-dispersion ``phi`` = mean of the squared z-scores
winsorised at their 10th and 90th percentiles; when ``I phi`` exceeds the chi-squared(I - 1)
95th percentile, an additive random effect ``tau^2 = (I phi - (I - 1)) / (sum w - sum w^2 /
sum w)``, ``w = 1 / s^2``, widens every limit to ``1 +- z sqrt(s^2 + tau^2)`` (95% and 99.8%).

Published from the *published* observed counts (:func:`funnel_statistics` runs on them), so a
ratio times its expected count gives back only the rounded count, and a point whose count is
suppressed is suppressed too.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import polars as pl
from scipy import stats

from pipeline.audit.aggregate import grouped_moments
from pipeline.metrics import z_value

STRATA: Final = ("age_band", "sex")
"""Indirect standardisation strata."""
FUNNEL_METRICS: Final = {
    # metric: (the published group count that is observed, the people it is a rate of)
    "selection_rate": "n_selected",
    "base_rate": "n_events",
    "tpr": "n_true_positives",
    "oe_ratio": "n_events",
}
LIMITS: Final = (0.95, 0.998)
"""Funnel limits drawn (and 99.8% the one a flagged point lies outside)."""
WINSOR: Final = 0.1
"""Spiegelhalter's winsorisation of z-scores for the over-dispersion estimate (each tail)."""
OVERDISPERSION_TEST: Final = 0.05


def _stratum_counts(cohort: pl.DataFrame, dimension: str) -> pl.DataFrame:
    """Counts and score sums per group x stratum (sorted; float sums in row order)."""
    flags = cohort.select(
        dimension,
        *STRATA,
        pl.col("outcome").cast(pl.Float64).alias("events"),
        pl.col("selected").cast(pl.Float64).alias("chosen"),
        (pl.col("selected") & (pl.col("outcome") == 1)).cast(pl.Float64).alias("reached"),
        pl.col("risk_score"),
        (pl.col("risk_score") * (1.0 - pl.col("risk_score"))).alias("score_var"),
    )
    moments = grouped_moments(
        flags, [dimension, *STRATA], ["events", "chosen", "reached", "risk_score", "score_var"]
    )
    return moments.select(
        pl.col(dimension).alias("group"),
        *STRATA,
        pl.col("n").cast(pl.Float64),
        *(pl.col(f"{c}_sum").alias(c) for c in ("events", "chosen", "reached")),
        pl.col("risk_score_sum").alias("score"),
        pl.col("score_var_sum").alias("score_var"),
    )


def standardised_counts(cohort: pl.DataFrame, dimension: str) -> pl.DataFrame:
    """Observed count, expected count and null variance of every funnel metric of every group
    of ``dimension`` (raw: the observed count is exact; publish it before the statistics).

    ``cohort`` has ``dimension``, ``age_band``, ``sex``, ``outcome``, ``selected`` and
    ``risk_score``. Returns one row per group and metric: ``dimension``, ``group``, ``metric``,
    ``observed``, ``expected``, ``variance``.
    """
    cells = _stratum_counts(cohort, dimension)
    rates = cells.group_by(*STRATA).agg(
        (pl.col("chosen").sum() / pl.col("n").sum()).alias("p_sel"),
        (pl.col("events").sum() / pl.col("n").sum()).alias("p_event"),
        (pl.col("reached").sum() / pl.col("events").sum()).fill_nan(0.0).alias("p_reach"),
    )
    cells = cells.join(rates, on=list(STRATA), how="left").with_columns(
        (pl.col("n") * pl.col("p_sel")).alias("e_sel"),
        (pl.col("n") * pl.col("p_sel") * (1 - pl.col("p_sel"))).alias("v_sel"),
        (pl.col("n") * pl.col("p_event")).alias("e_event"),
        (pl.col("n") * pl.col("p_event") * (1 - pl.col("p_event"))).alias("v_event"),
        (pl.col("events") * pl.col("p_reach")).alias("e_reach"),
        (pl.col("events") * pl.col("p_reach") * (1 - pl.col("p_reach"))).alias("v_reach"),
    )
    sums = grouped_moments(
        cells.sort("group", *STRATA),
        ["group"],
        [
            "events",
            "chosen",
            "reached",
            "e_sel",
            "v_sel",
            "e_event",
            "v_event",
            "e_reach",
            "v_reach",
            "score",
            "score_var",
        ],
    )
    parts = {
        "selection_rate": ("chosen", "e_sel", "v_sel"),
        "base_rate": ("events", "e_event", "v_event"),
        "tpr": ("reached", "e_reach", "v_reach"),
        "oe_ratio": ("events", "score", "score_var"),
    }
    return pl.concat(
        sums.select(
            pl.lit(dimension).alias("dimension"),
            "group",
            pl.lit(metric).alias("metric"),
            pl.col(f"{observed}_sum").round(0).cast(pl.Int64).alias("observed"),
            pl.col(f"{expected}_sum").alias("expected"),
            pl.col(f"{variance}_sum").alias("variance"),
        )
        for metric, (observed, expected, variance) in parts.items()
    )


def overdispersion(z: np.ndarray, weights: np.ndarray) -> tuple[float, float, bool]:
    """Spiegelhalter's winsorised over-dispersion ``phi``, the additive random-effects variance
    ``tau^2`` (0 unless ``phi`` is significant) and whether it is, from finite z-scores and
    their weights ``1 / s^2``."""
    count = len(z)
    if count < 3:
        return 1.0, 0.0, False
    low, high = np.quantile(z, [WINSOR, 1.0 - WINSOR])
    phi = float(np.mean(np.clip(z, low, high) ** 2))
    significant = bool(stats.chi2.sf(count * phi, count - 1) < OVERDISPERSION_TEST)
    if not significant:
        return phi, 0.0, False
    spread = float(np.sum(weights) - np.sum(weights**2) / np.sum(weights))
    tau2 = max(0.0, (count * phi - (count - 1)) / spread) if spread > 0 else 0.0
    return phi, tau2, significant


def _one_funnel(part: pl.DataFrame) -> pl.DataFrame:
    """:func:`funnel_statistics` of one dimension x metric."""
    observed = part["observed"].cast(pl.Float64).to_numpy()
    expected = part["expected"].to_numpy()
    variance = part["variance"].to_numpy()
    shown = np.isfinite(observed) & (expected > 0)
    k = float(np.sum(variance[shown]) / np.sum(expected[shown])) if shown.any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(shown, observed / expected, np.nan)
        s2 = k / expected
        z = (ratio - 1.0) / np.sqrt(s2)
    usable = shown & np.isfinite(z)
    phi, tau2, dispersed = overdispersion(z[usable], 1.0 / s2[usable])
    spread = np.sqrt(s2 + tau2)
    adjusted = np.where(usable, (ratio - 1.0) / spread, np.nan)
    columns: dict[str, object] = {
        "ratio": ratio,
        "z_score": adjusted,
        "variance_per_expected": k,
        "phi": phi,
        "tau2": tau2,
        "overdispersed": dispersed,
    }
    for level in LIMITS:
        tag = f"{round(level * 1000):03d}".rstrip("0")
        half = z_value(level) * spread
        columns[f"limit_{tag}_low"] = np.maximum(1.0 - half, 0.0)
        columns[f"limit_{tag}_high"] = 1.0 + half
    columns["p_value"] = np.where(usable, 2.0 * stats.norm.sf(np.abs(adjusted)), np.nan)
    return part.with_columns(
        pl.Series(name, np.broadcast_to(value, part.height)).fill_nan(None)
        if isinstance(value, np.ndarray | float)
        else pl.lit(value).alias(name)
        for name, value in columns.items()
    )


def funnel_statistics(frame: pl.DataFrame) -> pl.DataFrame:
    """Standardised ratios, adjusted z-scores, p-values and funnel limits per row of ``frame``
    (``dimension``, ``group``, ``metric``, ``observed`` - null when not published -,
    ``expected``, ``variance``), each dimension x metric a funnel of its own."""
    if frame.is_empty():
        return _one_funnel(frame)
    parts = frame.group_by("dimension", "metric", maintain_order=True)
    return pl.concat([_one_funnel(part) for _, part in parts])
