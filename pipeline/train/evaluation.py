"""Test-split metrics of the risk model with Poisson-bootstrap CIs (on :mod:`pipeline.metrics`).

Every metric is computed for a matrix of weights (rows = weight sets): one row of ones is the
point estimate (:func:`metric_sets`), Poisson draws (:func:`pipeline.metrics.poisson_bootstrap`)
are the resamples, processed in chunks of about ``BOOTSTRAP_CELLS`` weights by
:func:`resample_sets`: the same metrics on the rows put in score order once, the calibration
fits as a k-step bootstrap (``RECALIBRATION_STEPS`` Newton steps from the full-sample fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import numpy as np

from pipeline import contract, io, metrics
from pipeline.disclosure import Rule

METRIC_NAMES: Final = contract.MODEL_METRICS
"""Test-split metrics, each published with ``<name>_ci_low`` / ``<name>_ci_high``."""
BOOTSTRAP_CELLS: Final = 4_000_000  # resamples x rows per chunk (uint8 weights: ~4-16 MB/array)
RECALIBRATION_STEPS: Final = 3
"""Newton steps per resample from the full-sample fit (k-step bootstrap, Andrews 2002)."""
_BLOCK: Final = 1 << 15  # rows (distinct scores) per block of the resample sums: cache-sized

RankIndexes = tuple[metrics.RankIndex, metrics.RankIndex | None]


def _recalibration(
    sums: tuple[np.ndarray, np.ndarray], index: metrics.RankIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration-in-the-large and calibration slope per weight set (NaN without both
    outcomes) from the weighted events and non-events per distinct score (``sums``,
    :func:`pipeline.metrics.unit_sums`), iterated to convergence from a = 0, b = 1: the fits
    run on the distinct scores, not the people."""
    start = (0.0, 1.0)
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
    rank_indexes: RankIndexes | None = None,
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
    rank_indexes
        :func:`pipeline.metrics.rank_index` of (p, oracle), shared across resample chunks.
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
    intercept, slope = _recalibration(sums, rank_indexes[0])
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
            "ece": metrics.expected_calibration_error(weights, y, p, edges=ece_edges),
            "sensitivity_at_capacity": selected_events / events,
            "ppv_at_capacity": selected_events / (weights @ sel),
        }
    if oracle is not None:
        oracle_index = rank_indexes[1] or metrics.rank_index(oracle)
        out["oracle_auroc"] = metrics.ranking_metrics(weights, y, oracle_index)[0][:, 0]
        out["oracle_gap"] = out["oracle_auroc"] - auroc
    return out


@dataclass(frozen=True)
class RecalibrationFit:
    """The full-sample recalibration fits, where every resample's Newton steps start."""

    citl: float  # a of logit P(y) = a + lp
    intercept: float  # a of logit P(y) = a + b lp
    slope: float  # b


_SUMS: Final = (
    "events",
    "expected",
    "squared_error",
    "selected",
    "selected_events",
    "events_lp",
    # the first Newton step's sums, at the full-sample fit (see ``score_order``)
    "prob",
    "prob_lp",
    "curv",
    "curv_lp",
    "curv_lp2",
    "citl_prob",
    "citl_curv",
)
"""The weighted sums over the people that :func:`resample_sets` takes, one column each."""


@dataclass(frozen=True)
class ScoreOrder:
    """The test rows in ascending score order and what every resample of them reuses.

    Resample weights are drawn directly in this order (i.i.d. Poisson(1) per row, so the same
    distribution as in the rows' own order): no resample is gathered into score order.
    """

    ranks: metrics.EventRanks
    oracle_rows: np.ndarray | None  # score-order row of each row in oracle order
    oracle_ranks: metrics.EventRanks | None
    unit_starts: np.ndarray | None  # first row of each distinct score (None: all distinct)
    lp: np.ndarray  # logit of each distinct score
    columns: np.ndarray  # (rows, len(_SUMS)): the values summed over the people
    segments: tuple[tuple[int, int, int], ...]  # (first row, stop row, ECE bin) per block
    n_bins: int  # ECE bins
    fit: RecalibrationFit


def recalibration_fit(
    y: np.ndarray, index: metrics.RankIndex, *, citl: float, slope: float
) -> RecalibrationFit:
    """The full-sample fits from the point estimates ``citl`` and ``slope``, with the intercept
    of the slope fit (not published): refitted here with the slope fixed at ``slope``, which
    solves the intercept's own score equation at the joint maximum."""
    if not np.isfinite([citl, slope]).all():
        # no fit without both outcomes: every resample is then undefined too, any start will do
        return RecalibrationFit(0.0, 0.0, 1.0)
    y_sorted = np.asarray(y, dtype=np.float64)[index.order]
    events = np.add.reduceat(y_sorted, index.unit_starts)[None, :]
    total = np.diff(np.r_[index.unit_starts, y_sorted.size]).astype(np.float64)[None, :]
    intercept = metrics.calibration_in_the_large(
        events,
        total,
        slope * metrics.logit(index.unit_score),
        start=np.full((1, 1), citl),
        unit_group=index.unit_group,
        group_starts=index.group_starts,
    )
    return RecalibrationFit(citl=citl, intercept=float(intercept[0, 0]), slope=slope)


def _logistic(eta: np.ndarray) -> np.ndarray:
    """Inverse logit, ``eta`` clipped to [-30, 30] (as in the metrics module's fits)."""
    return 1.0 / (1.0 + np.exp(-np.clip(eta, -30.0, 30.0)))


def _columns(y: np.ndarray, p: np.ndarray, sel: np.ndarray, fit: RecalibrationFit) -> np.ndarray:
    """Per row (in score order), the value of each of :data:`_SUMS`.

    Every resample starts its Newton steps at the full-sample fit, so the first step's
    probabilities are the same for all: its sums (p, p x lp and the curvature v = p(1-p) times
    1, lp, lp^2 of the slope fit; p and v of calibration-in-the-large) are weighted sums of
    these columns, like the rest.
    """
    lp = metrics.logit(p)
    prob = _logistic(fit.intercept + fit.slope * lp)
    curv = prob * (1.0 - prob)
    prob_citl = _logistic(fit.citl + lp)
    values: dict[str, Callable[[], np.ndarray]] = {
        "events": lambda: y,
        "expected": lambda: p,
        "squared_error": lambda: (p - y) ** 2,
        "selected": lambda: sel,
        "selected_events": lambda: sel * y,
        "events_lp": lambda: y * lp,
        "prob": lambda: prob,
        "prob_lp": lambda: prob * lp,
        "curv": lambda: curv,
        "curv_lp": lambda: curv * lp,
        "curv_lp2": lambda: curv * lp**2,
        "citl_prob": lambda: prob_citl,
        "citl_curv": lambda: prob_citl * (1.0 - prob_citl),
    }
    columns = np.empty((p.size, len(_SUMS)))
    for position, name in enumerate(_SUMS):  # one column at a time: no second copy in memory
        columns[:, position] = values[name]()
    return columns


def _segments(bins: np.ndarray) -> tuple[tuple[int, int, int], ...]:
    """Blocks of at most ``_BLOCK`` rows within one ECE bin each: (first row, stop, bin)."""
    cuts = np.union1d(np.r_[0 : bins.size : _BLOCK], np.flatnonzero(np.diff(bins)) + 1)
    stops = np.r_[cuts[1:], bins.size]
    return tuple((int(a), int(b), int(bins[a])) for a, b in zip(cuts, stops, strict=True))


def score_order(
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    rank_indexes: RankIndexes,
    ece_edges: np.ndarray,
    fit: RecalibrationFit,
) -> ScoreOrder:
    """The :class:`ScoreOrder` of the test rows (``rank_indexes``: of ``p`` and the oracle)."""
    order = rank_indexes[0].order
    y_s = np.asarray(y, dtype=np.float64)[order]
    p_s = np.asarray(p, dtype=np.float64)[order]
    starts = rank_indexes[0].unit_starts
    oracle_rows, oracle_ranks = None, None
    if rank_indexes[1] is not None:
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        oracle_rows = position[rank_indexes[1].order]
        oracle_ranks = metrics.event_ranks(
            rank_indexes[1].unit_score[rank_indexes[1].unit_of_row], y_s[oracle_rows]
        )
    # the score is sorted, so each ECE bin is a run of rows
    bins = metrics.score_bin(p_s, ece_edges)
    return ScoreOrder(
        ranks=metrics.event_ranks(p_s, y_s),
        oracle_rows=oracle_rows,
        oracle_ranks=oracle_ranks,
        unit_starts=None if starts.size == p_s.size else starts,
        lp=metrics.logit(rank_indexes[0].unit_score),
        columns=_columns(y_s, p_s, np.asarray(selected, dtype=np.float64)[order], fit),
        segments=_segments(bins) if p_s.size else (),
        n_bins=len(ece_edges) - 1,
        fit=fit,
    )


def _counts(weights: np.ndarray) -> np.ndarray:
    """Integer-valued weights as the narrowest exact integer type: uint8 holds any realistic
    Poisson(1) draw, so the oracle's gather and the cumulative sums move a byte per weight."""
    if weights.dtype == np.uint8:
        return weights
    if weights.size and weights.max() > np.iinfo(np.uint8).max:
        return weights.astype(np.int64)
    return weights.astype(np.uint8)


def _row_sums(counts: np.ndarray, order: ScoreOrder) -> np.ndarray:
    """``counts @ order.columns`` per ECE bin, ``(sets, bins, len(_SUMS))``: one pass over
    the weights, a cache-sized block at a time in float64."""
    sums = np.zeros((counts.shape[0], order.n_bins, order.columns.shape[1]))
    for first, stop, bin_ in order.segments:
        sums[:, bin_] += counts[:, first:stop].astype(np.float64) @ order.columns[first:stop]
    return sums


def _per_score(counts: np.ndarray, order: ScoreOrder) -> np.ndarray:
    """People per distinct score, ``(sets, distinct scores)`` (the counts when all distinct)."""
    if order.unit_starts is None:
        return counts
    return np.add.reduceat(counts, order.unit_starts, axis=1, dtype=np.float64)


def _slope_sums(
    total: np.ndarray, lp: np.ndarray, intercept: np.ndarray, slope: np.ndarray
) -> np.ndarray:
    """Per weight set, at its own (intercept, slope): sums of fitted p, p x lp, and of the
    curvature v = p(1-p) times 1, lp, lp^2 (``(5, sets)``) over the distinct scores.

    Block by block: the temporaries of a block stay in the CPU cache, where a pass over a whole
    row of a million distinct scores would go to memory for each of its dozen operations.
    """
    sums = np.zeros((5, total.shape[0]))
    for first in range(0, lp.size, _BLOCK):
        x = lp[first : first + _BLOCK]
        prob = _logistic(intercept[:, None] + slope[:, None] * x)
        fitted = total[:, first : first + _BLOCK] * prob
        curv = fitted * (1.0 - prob)
        sums += [fitted.sum(axis=1), fitted @ x, curv.sum(axis=1), curv @ x, curv @ x**2]
    return sums


def _citl_sums(total: np.ndarray, lp: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Per weight set, at its own intercept of ``logit P(y) = a + lp``: sums of fitted p and
    of the curvature p(1-p) (``(2, sets)``), block by block as :func:`_slope_sums`."""
    sums = np.zeros((2, total.shape[0]))
    for first in range(0, lp.size, _BLOCK):
        prob = _logistic(intercept[:, None] + lp[first : first + _BLOCK])
        fitted = total[:, first : first + _BLOCK] * prob
        sums += [fitted.sum(axis=1), (fitted * (1.0 - prob)).sum(axis=1)]
    return sums


def _recalibration_steps(
    sums: Mapping[str, np.ndarray], total: np.ndarray, order: ScoreOrder, *, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration-in-the-large and slope per weight set by ``steps`` Newton steps from the
    full-sample fit (k-step bootstrap: Andrews 2002, Econometrica 70(1); Davidson & MacKinnon
    1999) instead of iterating each resample to convergence.

    A resample's fit is O(n^-1/2) from the full-sample fit and each Newton step squares the
    distance. Measured against fully iterated fits on 200 Poisson resamples (max |difference|
    of slope and calibration-in-the-large, docs/metrics.md): 3 steps 3e-15 at 1.57M test rows,
    2e-13 at 200,000, 2e-9 at 20,000; 2 steps 6e-9, 4e-7, 5e-5. ``sums``: the :data:`_SUMS`
    of each set (the first step's sums among them); ``total``: people per distinct score.
    """
    lp, fit, events = order.lp, order.fit, sums["events"]
    step = metrics.newton_step(
        (events - sums["prob"], sums["events_lp"] - sums["prob_lp"]),
        (sums["curv"], sums["curv_lp"], sums["curv_lp2"]),
    )
    intercept, slope = fit.intercept + step[0], fit.slope + step[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        citl = fit.citl + (events - sums["citl_prob"]) / sums["citl_curv"]
        for _ in range(steps - 1):
            at = _slope_sums(total, lp, intercept, slope)
            step = metrics.newton_step(
                (events - at[0], sums["events_lp"] - at[1]), (at[2], at[3], at[4])
            )
            intercept, slope = intercept + step[0], slope + step[1]
            fitted, curvature = _citl_sums(total, lp, citl)
            citl = citl + (events - fitted) / curvature
    return np.where(np.isfinite(citl), citl, np.nan), slope


def resample_sets(
    weights: np.ndarray, order: ScoreOrder, *, steps: int = RECALIBRATION_STEPS
) -> dict[str, np.ndarray]:
    """The metrics of :func:`metric_sets` for each row of integer-valued ``weights``
    (sets x people) of the people in score order (:class:`ScoreOrder`).

    The same definitions as :func:`metric_sets` (equal to rounding on the same weights,
    tested), without sorting any resample: AUROC and AP from integer cumulative sums
    (:func:`pipeline.metrics.sorted_ranking_metrics`), the other metrics from one pass of
    weighted sums (:data:`_SUMS`, the ECE bins being runs of rows), the calibration fits by
    ``steps`` Newton steps from the full-sample fit (:func:`_recalibration_steps`).
    """
    counts = _counts(weights)
    auroc, auprc = metrics.sorted_ranking_metrics(counts, order.ranks)
    by_bin = _row_sums(counts, order)
    sums = dict(zip(_SUMS, by_bin.sum(axis=1).T, strict=True))
    intercept, slope = _recalibration_steps(sums, _per_score(counts, order), order, steps=steps)
    people, events, selected_events = counts.sum(axis=1), sums["events"], sums["selected_events"]
    observed, expected = (by_bin[:, :, _SUMS.index(name)] for name in ("events", "expected"))
    both = (events > 0) & (events < people)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "auroc": auroc,
            "auprc": auprc,
            "brier": sums["squared_error"] / people,
            "calibration_intercept": np.where(both, intercept, np.nan),
            "calibration_slope": np.where(both, slope, np.nan),
            "oe_ratio": events / sums["expected"],
            "ece": np.abs(observed - expected).sum(axis=1) / people,
            "sensitivity_at_capacity": selected_events / events,
            "ppv_at_capacity": selected_events / sums["selected"],
        }
    if order.oracle_rows is not None and order.oracle_ranks is not None:
        oracle_counts = np.take(counts, order.oracle_rows, axis=1)
        out["oracle_auroc"] = metrics.sorted_ranking_metrics(oracle_counts, order.oracle_ranks)[0]
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
    """Point estimates and Poisson-bootstrap percentile CIs of every test metric.

    The point estimates are :func:`metric_sets` of the people; the resamples are
    :func:`resample_sets` of Poisson weights drawn in score order, batch by batch in
    ``threads`` worker threads from generators spawned from ``seed`` in batch order
    (:func:`pipeline.metrics.poisson_bootstrap` with ``spawn``): the same ``seed`` gives the
    same result whatever ``threads``.

    Returns
    -------
    dict
        metric -> {"value", "ci_low", "ci_high"} (NaN when undefined, e.g. no events).
    """
    ece_edges = metrics.ece_bin_edges(p)
    rank_indexes = (metrics.rank_index(p), None if oracle is None else metrics.rank_index(oracle))
    point = metric_sets(
        np.ones((1, y.size)),
        y,
        p,
        selected,
        oracle=oracle,
        ece_edges=ece_edges,
        rank_indexes=rank_indexes,
    )
    fit = recalibration_fit(
        y,
        rank_indexes[0],
        citl=float(point["calibration_intercept"][0]),
        slope=float(point["calibration_slope"][0]),
    )
    order = score_order(y, p, selected, rank_indexes=rank_indexes, ece_edges=ece_edges, fit=fit)
    draws = metrics.poisson_bootstrap(
        partial(resample_sets, order=order),
        np.ones(y.size),
        n_resamples=n_bootstrap,
        rng=np.random.default_rng(seed),
        chunk=max(1, BOOTSTRAP_CELLS // max(1, y.size)),
        threads=threads,
        spawn=True,
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
