"""Test-split metrics of the risk model with Poisson-bootstrap CIs (on :mod:`pipeline.metrics`).

Every metric is computed for a matrix of weights (rows = weight sets): one row of ones is the
point estimate, Poisson draws (:func:`pipeline.metrics.poisson_bootstrap`) are the resamples,
processed in chunks of about ``BOOTSTRAP_CELLS`` weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from pipeline import contract, io, metrics
from pipeline.disclosure import Rule

METRIC_NAMES: Final = contract.MODEL_METRICS
"""Test-split metrics, each published with ``<name>_ci_low`` / ``<name>_ci_high``."""
BOOTSTRAP_CELLS: Final = 4_000_000  # resamples x rows per vectorised chunk (~32 MB per array)

RankIndexes = tuple[metrics.RankIndex, metrics.RankIndex | None]


def _recalibration(
    sums: tuple[np.ndarray, np.ndarray], index: metrics.RankIndex, start: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration-in-the-large and calibration slope per weight set (NaN without both
    outcomes) from the weighted events and non-events per distinct score (``sums``,
    :func:`pipeline.metrics.unit_sums`): the fits run on the distinct scores, not the people."""
    events, non_events = sums
    total = events + non_events
    lp = metrics.logit(index.unit_score)
    groups = {"unit_group": index.unit_group, "group_starts": index.group_starts}
    n_sets = events.shape[0]
    intercept = metrics.calibration_in_the_large(
        events, total, lp, start=np.full((n_sets, 1), start[0]), iterations=50, **groups
    )
    _, slope = metrics.logistic_recalibration(
        events,
        total,
        lp,
        start=(np.full((n_sets, 1), start[0]), np.full((n_sets, 1), start[1])),
        iterations=50,
        **groups,
    )
    both = (events.sum(axis=1) > 0) & (non_events.sum(axis=1) > 0)
    return np.where(both, intercept[:, 0], np.nan), np.where(both, slope[:, 0], np.nan)


def metric_sets(
    weights: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    oracle: np.ndarray | None = None,
    ece_edges: np.ndarray | None = None,
    recalibration_start: tuple[float, float] = (0.0, 1.0),
    rank_indexes: RankIndexes | None = None,
    ece_matrices: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every test metric for each row of ``weights`` (rows = resamples; one row of ones = point).

    Parameters
    ----------
    weights
        (sets x people) weights.
    y, p, selected
        Outcome (0/1), calibrated probability, selected at outreach capacity.
    oracle
        True probabilities on the same rows (synthetic data), or None.
    ece_edges
        Fixed bin edges for ECE (so resamples share the point estimate's bins).
    recalibration_start
        Starting (intercept, slope) of the logistic recalibration fits.
    rank_indexes
        :func:`pipeline.metrics.rank_index` of (p, oracle), shared across resample chunks.
    ece_matrices
        :func:`pipeline.metrics.ece_matrices` of (y, p, ``ece_edges``), shared likewise.
    """
    y = y.astype(np.float64)
    sel = selected.astype(np.float64)
    if rank_indexes is None:
        rank_indexes = (
            metrics.rank_index(p),
            None if oracle is None else metrics.rank_index(oracle),
        )
    if ece_edges is None:
        ece_edges = metrics.ece_bin_edges(p)
    # events and non-events per distinct score: shared by the ranking and the recalibration
    sums = metrics.unit_sums(weights, y, rank_indexes[0])
    auroc, auprc = (
        values[:, 0] for values in metrics.ranking_metrics(weights, y, rank_indexes[0], sums=sums)
    )
    intercept, slope = _recalibration(sums, rank_indexes[0], recalibration_start)
    total, events = weights.sum(axis=1), weights @ y
    selected_events = weights @ (sel * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "auroc": auroc,
            "auprc": auprc,
            "brier": (weights @ (p - y) ** 2) / total,
            "calibration_intercept": intercept,
            "calibration_slope": slope,
            "oe_ratio": events / (weights @ p),
            "ece": metrics.expected_calibration_error(
                weights, y, p, edges=ece_edges, matrices=ece_matrices
            ),
            "sensitivity_at_capacity": selected_events / events,
            "ppv_at_capacity": selected_events / (weights @ sel),
        }
    if oracle is not None:
        oracle_index = rank_indexes[1] or metrics.rank_index(oracle)
        out["oracle_auroc"] = metrics.ranking_metrics(weights, y, oracle_index)[0][:, 0]
        out["oracle_gap"] = out["oracle_auroc"] - auroc
    return out


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    oracle: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
    confidence: float = 0.95,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Point estimates and Poisson-bootstrap percentile CIs of every test metric
    (``threads`` resample batches at once: same draws, same result).

    Returns
    -------
    dict
        metric -> {"value", "ci_low", "ci_high"} (NaN when undefined, e.g. no events).
    """
    ece_edges = metrics.ece_bin_edges(p)
    shared: dict[str, Any] = {
        "oracle": oracle,
        "ece_edges": ece_edges,
        "ece_matrices": metrics.ece_matrices(y.astype(np.float64), p, edges=ece_edges),
        "rank_indexes": (
            metrics.rank_index(p),
            None if oracle is None else metrics.rank_index(oracle),
        ),
    }
    point = metric_sets(np.ones((1, y.size)), y, p, selected, **shared)
    intercept, slope = point["calibration_intercept"][0], point["calibration_slope"][0]
    warm = (intercept, slope) if np.isfinite([intercept, slope]).all() else (0.0, 1.0)
    draws = metrics.poisson_bootstrap(
        lambda weights: metric_sets(weights, y, p, selected, recalibration_start=warm, **shared),
        np.ones(y.size),
        n_resamples=n_bootstrap,
        rng=np.random.default_rng(seed),
        chunk=max(1, BOOTSTRAP_CELLS // max(1, y.size)),
        threads=threads,
    )
    out: dict[str, dict[str, float]] = {}
    for name, value in point.items():
        low, high = (
            metrics.percentile_interval(draws[name][:, None], confidence=confidence)
            if name in draws
            else (np.array([math.nan]), np.array([math.nan]))
        )
        out[name] = {"value": float(value[0]), "ci_low": float(low[0]), "ci_high": float(high[0])}
    return out


def metrics_document(
    estimates: Mapping[str, Mapping[str, float]],
    *,
    target: str,
    n_test: int,
    n_test_events: int,
    n_selected: int,
    n_selected_events: int,
    extra: Mapping[str, Any],
    rule: Rule,
) -> dict[str, Any]:
    """Flat, disclosure-controlled ``metrics.json``: ``<metric>``, ``<metric>_ci_low/high``
    (floats to :data:`pipeline.io.PUBLISHED_DIGITS` significant digits).

    Counts are rounded/suppressed by ``rule``; a metric whose numerator or denominator count is
    suppressed is published as ``"*"`` along with its CI. The metrics that are shares of the
    published counts (sensitivity and PPV at capacity) are those shares
    (:meth:`pipeline.disclosure.Rule.share`), so they cannot undo the rounding.
    """
    doc: dict[str, Any] = {
        "target": target,
        "split": "test",
        "n_test": rule.count(n_test),
        "n_test_events": rule.count(n_test_events),
        "n_selected_at_capacity": rule.count(n_selected),
        "n_selected_events_at_capacity": rule.count(n_selected_events),
        **extra,
    }
    capacity_counts = {
        "sensitivity_at_capacity": (n_selected_events, n_test_events),
        "ppv_at_capacity": (n_selected_events, n_selected),
    }
    for name, estimate in estimates.items():
        numerator, denominator = capacity_counts.get(name, (n_test_events, n_test))
        for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            doc[f"{name}{suffix}"] = rule.rate(numerator, denominator, estimate[key])
        if name in capacity_counts:
            doc[name] = rule.share(numerator, denominator)
    return {key: io.significant(value) for key, value in doc.items()}


def split_metrics(
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    oracle: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
    target: str,
    extra: Mapping[str, Any],
    rule: Rule,
    threads: int = 1,
) -> dict[str, Any]:
    """:func:`evaluate` then :func:`metrics_document` for the people of one split."""
    estimates = evaluate(
        y, p, selected, oracle=oracle, n_bootstrap=n_bootstrap, seed=seed, threads=threads
    )
    return metrics_document(
        estimates,
        target=target,
        n_test=int(y.size),
        n_test_events=int(y.sum()),
        n_selected=int(selected.sum()),
        n_selected_events=int((selected * y).sum()),
        extra=extra,
        rule=rule,
    )


def external_metrics(
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    n_bootstrap: int,
    seed: int,
    rule: Rule,
    threads: int = 1,
) -> dict[str, Any]:
    """The test metrics on the held-out ICB (split "external"), keys prefixed ``external_``.

    Counts are ``n_external``, ``n_external_events``, ... (disclosure-controlled like the rest).
    """
    doc = split_metrics(
        y,
        p,
        selected,
        oracle=None,
        n_bootstrap=n_bootstrap,
        seed=seed,
        target="",
        extra={},
        rule=rule,
        threads=threads,
    )
    renamed = {
        "n_test": "n_external",
        "n_test_events": "n_external_events",
        "n_selected_at_capacity": "n_external_selected_at_capacity",
        "n_selected_events_at_capacity": "n_external_selected_events_at_capacity",
    }
    return {
        renamed.get(key, f"external_{key}"): value
        for key, value in doc.items()
        if key not in {"target", "split"}
    }
