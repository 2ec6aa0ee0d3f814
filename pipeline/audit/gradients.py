"""Inequality summaries: SII/RII across IMD deciles and WHO HEAT measures for unordered groups.

SII and RII follow the OHID Fingertips method (Low & Low 2004): weighted least squares of each
decile's value on the midpoint of its cumulative population rank (0 = most deprived end, 1 =
least deprived end), weights = population share; SII = slope (least minus most deprived end),
RII = (intercept + slope) / intercept (least / most deprived end). So for an indicator that is
higher in deprived areas SII < 0 and RII < 1. CIs by Monte Carlo: each decile's value is drawn
from its sampling distribution (Jeffreys beta for proportions, normal for means) and the
regression refitted per draw.

HEAT (WHO Health Equity Assessment Toolkit) for unordered groups, with p_j population shares,
y_j group values, mu = sum p_j y_j: between-group variance BGV = sum p_j (y_j - mu)^2; mean
difference from the best group MDB = sum p_j |y_j - y_best|; Theil T = sum p_j r_j ln r_j with
r_j = y_j / mu; PAF = (y_best - mu) / mu. "Best" is the highest value for favourable
indicators (reach) and the lowest for adverse ones (outcome rate), among stable groups.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import polars as pl

from pipeline import contract
from pipeline.audit.aggregate import grouped_moments
from pipeline.metrics import percentile_interval

Direction = Literal["favourable", "adverse"]
IndicatorKind = Literal["proportion", "mean"]

INDICATORS: Final[dict[str, tuple[IndicatorKind, str, str, Direction]]] = {
    # indicator: (kind, numerator or mean column, denominator or sd column, direction)
    "outcome_rate": ("proportion", "n_events", "n", "adverse"),
    "mean_predicted_risk": ("mean", "mean_risk", "sd_risk", "adverse"),
    "selection_rate": ("proportion", "n_selected", "n", "favourable"),
    "need_reached": ("proportion", "n_cases_selected", "n_cases", "favourable"),
}
"""need_reached: share of the group's cases that the selection reaches (cases = true-need cases
when truth exists, else people with the recorded outcome)."""


def group_indicators(cohort: pl.DataFrame, dimension: str, *, case: str) -> pl.DataFrame:
    """Raw per-group sums behind :data:`INDICATORS` (``case`` = the boolean case column)."""
    counts = cohort.group_by(dimension).agg(
        n_events=pl.col("outcome").sum().cast(pl.Int64),
        n_selected=pl.col("selected").sum().cast(pl.Int64),
        n_cases=pl.col(case).sum().cast(pl.Int64),
        n_cases_selected=(pl.col(case) & pl.col("selected")).sum().cast(pl.Int64),
    )
    risk = grouped_moments(cohort, [dimension], ["risk_score"]).select(
        dimension,
        pl.col("n").cast(pl.Int64),
        pl.col("risk_score_mean").alias("mean_risk"),
        pl.col("risk_score_sd").alias("sd_risk"),
    )
    return (
        risk.join(counts, on=dimension, how="left")
        .select(
            "n",
            "n_events",
            "n_selected",
            "mean_risk",
            "sd_risk",
            "n_cases",
            "n_cases_selected",
            dimension,
        )
        .rename({dimension: "group"})
        .sort("group")
    )


def indicator_draws(
    table: pl.DataFrame, indicator: str, *, n_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Point values ``(G,)`` and Monte Carlo draws ``(n_draws, G)`` of one indicator."""
    kind, first, second, _ = INDICATORS[indicator]
    a = table[first].to_numpy().astype(np.float64)
    b = table[second].to_numpy().astype(np.float64)
    if kind == "proportion":
        with np.errstate(invalid="ignore", divide="ignore"):
            point = a / b
        ok = b > 0
        draws = np.full((n_draws, len(a)), np.nan)
        draws[:, ok] = rng.beta(a[ok] + 0.5, b[ok] - a[ok] + 0.5, size=(n_draws, int(ok.sum())))
        return point, draws
    n = table["n"].to_numpy().astype(np.float64)
    se = b / np.sqrt(np.maximum(n, 1.0))
    return a, a + se * rng.standard_normal((n_draws, len(a)))


def slope_index(values: np.ndarray, population: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SII and RII by the Fingertips WLS; ``values`` ``(..., G)`` with groups ordered from the
    most to the least deprived, ``population`` ``(G,)``."""
    share = population / population.sum()
    rank = np.cumsum(share) - share / 2.0  # midpoint of each group's cumulative rank
    x_bar = np.sum(share * rank)
    y_bar = np.sum(share * values, axis=-1)
    slope = np.sum(share * (rank - x_bar) * (values - y_bar[..., None]), axis=-1) / np.sum(
        share * (rank - x_bar) ** 2
    )
    intercept = y_bar - slope * x_bar
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = (intercept + slope) / intercept
    return slope, relative


def heat_measures(
    values: np.ndarray, population: np.ndarray, *, direction: Direction, eligible: np.ndarray
) -> dict[str, np.ndarray]:
    """WHO HEAT summary measures over groups; ``values`` ``(..., G)``; the best group is
    chosen among ``eligible`` (stable) groups."""
    share = population / population.sum()
    mu = np.sum(share * values, axis=-1)
    masked = np.where(eligible, values, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        best = (
            np.nanmax(masked, axis=-1) if direction == "favourable" else np.nanmin(masked, axis=-1)
        )
        ratio = values / mu[..., None]
        theil_terms = np.where(ratio > 0, ratio * np.log(np.where(ratio > 0, ratio, 1.0)), 0.0)
        return {
            "between_group_variance": np.sum(share * (values - mu[..., None]) ** 2, axis=-1),
            "mean_difference_from_best": np.sum(share * np.abs(values - best[..., None]), axis=-1),
            "theil_index": np.sum(share * theil_terms, axis=-1),
            "population_attributable_fraction": (best - mu) / mu,
            "mean": mu,
            "best": best,
        }


def deprivation_gradients(
    cohort: pl.DataFrame,
    *,
    case: str,
    n_monte_carlo: int,
    rng: np.random.Generator,
    confidence: float,
    dimension: str = "imd_decile",
) -> pl.DataFrame:
    """SII and RII with Monte Carlo CIs for every indicator across IMD deciles.

    Returns
    -------
    polars.DataFrame
        One row per indicator and measure (``sii``, ``rii``): value, ci_low, ci_high.
    """
    table = group_indicators(cohort, dimension, case=case)
    table = table.with_columns(pl.col("group").cast(pl.Int32, strict=False).alias("_order"))
    table = table.drop_nulls("_order").sort("_order")  # most deprived (decile 1) first
    population = table["n"].to_numpy().astype(np.float64)
    rows = []
    for indicator in INDICATORS:
        point, draws = indicator_draws(table, indicator, n_draws=n_monte_carlo, rng=rng)
        usable = np.isfinite(point)
        if usable.sum() < 2:
            continue
        sii, rii = slope_index(point[usable], population[usable])
        sii_draws, rii_draws = slope_index(draws[:, usable], population[usable])
        for measure, value, sample in (("sii", sii, sii_draws), ("rii", rii, rii_draws)):
            low, high = percentile_interval(sample[:, None], confidence=confidence)
            rows.append(
                {
                    "dimension": dimension,
                    "indicator": indicator,
                    "measure": measure,
                    "value": float(value),
                    "ci_low": float(low[0]),
                    "ci_high": float(high[0]),
                    "n_groups": int(usable.sum()),
                }
            )
    return pl.DataFrame(rows, schema=contract.GRADIENTS_SCHEMA)


def unordered_summaries(
    cohort: pl.DataFrame,
    dimension: str,
    *,
    case: str,
    n_monte_carlo: int,
    rng: np.random.Generator,
    confidence: float,
    min_group_size: int,
) -> pl.DataFrame:
    """WHO HEAT measures with Monte Carlo CIs for every indicator of one unordered dimension.

    Returns
    -------
    polars.DataFrame
        One row per indicator and measure: value, ci_low, ci_high, best_group.
    """
    table = group_indicators(cohort, dimension, case=case).sort("group")
    population = table["n"].to_numpy().astype(np.float64)
    eligible = population >= min_group_size
    if not eligible.any():
        eligible = np.ones_like(eligible)
    rows = []
    for indicator, (_, _, _, direction) in INDICATORS.items():
        point, draws = indicator_draws(table, indicator, n_draws=n_monte_carlo, rng=rng)
        usable = np.isfinite(point)
        if usable.sum() < 2:
            continue
        measures = heat_measures(
            point[usable], population[usable], direction=direction, eligible=eligible[usable]
        )
        sampled = heat_measures(
            draws[:, usable], population[usable], direction=direction, eligible=eligible[usable]
        )
        candidates = np.where(eligible[usable], point[usable], np.nan)
        best_index = (
            np.nanargmax(candidates) if direction == "favourable" else np.nanargmin(candidates)
        )
        best_group = np.asarray(table["group"].to_list(), dtype=object)[usable][best_index]
        for measure in (
            "between_group_variance",
            "mean_difference_from_best",
            "theil_index",
            "population_attributable_fraction",
        ):
            low, high = percentile_interval(sampled[measure][:, None], confidence=confidence)
            rows.append(
                {
                    "dimension": dimension,
                    "indicator": indicator,
                    "measure": measure,
                    "value": float(measures[measure]),
                    "ci_low": float(low[0]),
                    "ci_high": float(high[0]),
                    "best_group": str(best_group),
                    "direction": direction,
                }
            )
    return pl.DataFrame(rows, schema=contract.HEAT_SCHEMA)
