"""Fairness-aware selection rules shared by the audit (which compares them) and the outreach
stage (which applies one), so the policy audited is exactly the policy used.

- equal opportunity: per-group score thresholds with equal true positive rates, from fairlearn's
  ``ThresholdOptimizer``, made deterministic;
- Core20PLUS5: a multiplicative uplift of the risk score for IMD quintile 1 (Core20) and the
  locally chosen PLUS groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline import selection
from pipeline.errors import StageError

__all__ = [
    "ScoreAsProbability",
    "core20plus5_priority",
    "equal_opportunity_priority",
    "equal_opportunity_thresholds",
    "fit_equal_opportunity",
    "fit_equal_opportunity_at",
]
FIT_SPLIT = "validation"
"""The split the equal-opportunity thresholds are fitted on (every row when it is absent)."""


class ScoreAsProbability(ClassifierMixin, BaseEstimator):
    """A prefit 'estimator' handing the risk score (first column) to ThresholdOptimizer."""

    def fit(self, features: Any, outcome: Any = None) -> ScoreAsProbability:
        self.fitted_ = True
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, features: Any) -> np.ndarray:
        return np.asarray(features, dtype=np.float64)[:, 0]

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _snap_to_quantiles(risk_score: np.ndarray, score_bins: int) -> np.ndarray:
    """Round scores up to one of ``score_bins`` quantiles: ThresholdOptimizer walks every distinct
    score in Python, and thresholds finer than the quantiles change no one's place in a list."""
    if np.unique(risk_score).size <= score_bins:
        return risk_score
    edges = np.unique(np.quantile(risk_score, np.linspace(0.0, 1.0, score_bins + 1)))
    return edges[np.clip(np.searchsorted(edges, risk_score), 0, edges.size - 1)]


def _checked_sample(
    risk_score: np.ndarray, outcome: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """People with a known group, in a canonical order; refuses samples the rule cannot fit."""
    risk_score = np.asarray(risk_score, dtype=np.float64)
    outcome = np.asarray(outcome).astype(np.int64)
    labels = np.asarray(group).astype(str)
    known = ~np.isin(labels, ["None", "nan"])
    risk_score, outcome, labels = risk_score[known], outcome[known], labels[known]
    if outcome.size == 0 or outcome.min() == outcome.max():
        raise StageError("equal_opportunity needs people with and without the outcome")
    groups_with_events = set(np.unique(labels[outcome == 1]))
    lacking = sorted(set(np.unique(labels)) - groups_with_events)
    if lacking:
        raise StageError(
            f"equal_opportunity needs outcome events in every group; none in {lacking}"
        )
    # A canonical order makes the seeded subsample independent of how the rows arrived.
    order = np.lexsort((labels, outcome, risk_score))
    return risk_score[order], outcome[order], labels[order]


def _negatives_kept(
    outcome: np.ndarray, *, cut_score: float | None, rng: np.random.Generator | None
) -> np.ndarray:
    """Mask keeping every positive and negatives at rate ``cut / (1 - cut)`` (all without a
    usable cut), which moves the accuracy optimum to the capacity cut."""
    if cut_score is None or not 0.0 < cut_score < 0.5:
        return np.ones(outcome.size, dtype=bool)
    keep_rate = cut_score / (1.0 - cut_score)
    generator = rng if rng is not None else np.random.default_rng(0)
    return (outcome == 1) | (generator.random(outcome.size) < keep_rate)


def _deterministic_threshold(rule: Mapping[str, Any]) -> float:
    """Probability-weighted mean of fairlearn's two randomised thresholds (the finite one when
    the other is infinite; 1.0 when neither is)."""
    pairs = [
        (float(rule[f"p{i}"]), float(rule[f"operation{i}"].threshold))
        for i in (0, 1)
        if float(rule[f"p{i}"]) > 0
    ]
    finite = [(p, t) for p, t in pairs if math.isfinite(t)]
    if finite and len(finite) == len(pairs):
        return sum(p * t for p, t in finite) / sum(p for p, _ in finite)
    return finite[0][1] if finite else 1.0


def equal_opportunity_thresholds(
    risk_score: np.ndarray,
    outcome: np.ndarray,
    group: np.ndarray,
    *,
    cut_score: float | None = None,
    rng: np.random.Generator | None = None,
    score_bins: int = 1_000,
) -> dict[str, float]:
    """Per-group score thresholds with equal true positive rates (fairlearn ThresholdOptimizer).

    ThresholdOptimizer maximises accuracy subject to equal TPR, which for a rare outcome lands
    far from a list's capacity. With ``cut_score`` (the score at the capacity cut) negatives are
    subsampled at rate ``cut / (1 - cut)`` (seeded), which turns accuracy into the cost-weighted
    accuracy whose optimum is that cut, so the optimiser's operating point sits near the
    capacity. Fairlearn's rule mixes two thresholds per group at random; the deterministic
    threshold used here is their probability-weighted mean (the finite one when the other is
    infinite).

    Parameters
    ----------
    risk_score, outcome, group
        One entry per person of the fitting sample (normally the validation split).
    cut_score
        The risk score at the capacity cut-off, or None to keep fairlearn's own optimum.
    rng
        Generator for the negatives' subsample (seeded by the caller).
    score_bins
        Scores are snapped to this many quantiles before fitting (speed; see above).

    Returns
    -------
    dict[str, float]
        Threshold per group label (labels as strings).

    Raises
    ------
    StageError
        When some group has no outcome events, or nobody has / lacks the outcome.
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    risk_score, outcome, labels = _checked_sample(risk_score, outcome, group)
    keep = _negatives_kept(outcome, cut_score=cut_score, rng=rng)
    risk_score, outcome, labels = risk_score[keep], outcome[keep], labels[keep]
    optimiser = ThresholdOptimizer(
        estimator=ScoreAsProbability().fit(None),
        constraints="true_positive_rate_parity",
        objective="accuracy_score",
        prefit=True,
        predict_method="predict",
    )
    optimiser.fit(
        _snap_to_quantiles(risk_score, score_bins)[:, None], outcome, sensitive_features=labels
    )
    return {
        str(value): _deterministic_threshold(rule)
        for value, rule in optimiser.interpolated_thresholder_.interpolation_dict.items()
    }


def fit_equal_opportunity(
    cohort: pl.DataFrame,
    *,
    capacity_mode: selection.CapacityMode,
    capacity: float,
    rng: np.random.Generator,
    group: str = "imd_quintile",
) -> dict[str, float]:
    """The one equal-opportunity fit, called by the audit (at ``operating_point``) and by the
    outreach stage (at its capacity), so both rank by the same thresholds at the same capacity.

    The fitting sample is the cohort's validation split (every row when there is none); the
    cut score is where the risk ranking of the *whole* cohort stops at the capacity
    (:func:`pipeline.selection.cut_score`); the fit is :func:`equal_opportunity_thresholds`.

    Parameters
    ----------
    cohort
        The whole eligible cohort (every split): ``split``, ``risk_score``, ``risk_rank``,
        ``outcome``, ``group`` and, for a per-unit capacity, the unit column.
    capacity_mode, capacity
        The operating point (audit) or the list capacity (outreach).
    rng
        The ``("equal_opportunity", target)`` stream (:func:`pipeline.seeds.rng`).
    group
        The grouping whose true positive rates are equalised.

    Returns
    -------
    dict[str, float]
        Threshold per group label.

    Raises
    ------
    StageError
        When the fitting sample lacks events in some group (see
        :func:`equal_opportunity_thresholds`).
    """
    cut = selection.cut_score(cohort, capacity_mode=capacity_mode, capacity=capacity)
    return fit_equal_opportunity_at(cohort, cut_score=cut, rng=rng, group=group)


def fit_equal_opportunity_at(
    cohort: pl.DataFrame,
    *,
    cut_score: float | None,
    rng: np.random.Generator,
    group: str = "imd_quintile",
) -> dict[str, float]:
    """:func:`fit_equal_opportunity` at a cut score known already: the audit's fit on a seeded
    sample of a cohort too large to hold, whose cut is the whole cohort's, not the sample's.

    Parameters
    ----------
    cohort
        The people to fit on (every split): ``split``, ``risk_score``, ``outcome``, ``group``.
    cut_score
        The risk score at the capacity cut of the whole cohort (None: fairlearn's own optimum).
    rng, group
        As :func:`fit_equal_opportunity`.

    Returns
    -------
    dict[str, float]
        Threshold per group label.
    """
    fit = cohort.filter(pl.col("split") == FIT_SPLIT)
    if fit.height == 0:
        fit = cohort
    fit = fit.filter(pl.col(group).is_not_null())
    return equal_opportunity_thresholds(
        fit["risk_score"].to_numpy(),
        fit["outcome"].to_numpy(),
        fit[group].to_numpy(),
        cut_score=cut_score,
        rng=rng,
    )


def equal_opportunity_priority(
    thresholds: Mapping[str, float], *, group: str = "imd_quintile"
) -> pl.Expr:
    """Risk score divided by the person's group threshold: ranking on it cuts every group at
    the same multiple of its own threshold. Groups the optimiser never saw get the mean."""
    fallback = float(np.mean(list(thresholds.values()))) if thresholds else 1.0
    threshold = (
        pl.col(group)
        .cast(pl.String)
        .replace_strict(dict(thresholds), default=fallback, return_dtype=pl.Float64)
        .fill_null(fallback)
    )
    return pl.col("risk_score") / threshold.clip(lower_bound=1e-12)


def core20plus5_priority(
    *, core20_uplift: float, plus_uplift: float, plus_groups: tuple[str, ...]
) -> pl.Expr:
    """Risk score uplifted for Core20 (IMD quintile 1) and the PLUS groups (multiplicative)."""
    core20 = (
        pl.when(pl.col("imd_quintile").cast(pl.String) == "1").then(core20_uplift).otherwise(1.0)
    )
    plus = (
        pl.when(pl.col("ethnicity_group").is_in(list(plus_groups))).then(plus_uplift).otherwise(1.0)
    )
    return pl.col("risk_score") * core20 * plus
