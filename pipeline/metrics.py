"""Metrics and intervals shared by train and the audit (see ``docs/metrics.md``).

One definition of each:

- **Resampling**: the Poisson bootstrap. Every row (a person, or a cell of identical people
  with a count) gets a Poisson(weight) resampling weight; a cell of ``n`` people drawn as one
  Poisson(``n``) number is exactly the row-level Poisson bootstrap, so the same engine serves
  people (train: weight 1 each) and aggregated cells (the audit).
- **Intervals**: percentiles of the draws (:func:`percentile_interval`); Wilson for a binomial
  proportion (statsmodels' ``proportion_confint``).
- **Ranking**: weighted AUROC (ties count one half) and average precision (sklearn's step
  definition), per group, for any number of weight vectors at once (:func:`ranking_metrics`;
  for integer weights of rows already in score order, :func:`sorted_ranking_metrics`).
- **Calibration**: the logistic recalibration pair of Van Calster et al. - slope ``b`` of
  ``logit P(y) = a + b lp`` and calibration-in-the-large ``a`` of ``logit P(y) = a + lp`` -
  by batched Newton steps (:func:`logistic_recalibration`, :func:`calibration_in_the_large`);
  ECE on equal-frequency bins (:func:`expected_calibration_error`).

Every function takes ``weights`` of shape ``(sets, rows)``: one row of ones (people) or of cell
counts gives the point estimate, Poisson draws give bootstrap resamples.

Examples
--------
>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); score = np.array([0.1, 0.4, 0.35, 0.8])
>>> auroc, ap = ranking_metrics(np.ones((1, 4)), y, rank_index(score))
>>> float(auroc[0, 0]), round(float(ap[0, 0]), 4)
(0.75, 0.8333)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import stats
from scipy.special import logit as _logit
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "EventRanks",
    "RankIndex",
    "calibration_in_the_large",
    "ece_bin_edges",
    "ece_matrices",
    "event_ranks",
    "expected_calibration_error",
    "logistic_recalibration",
    "logit",
    "newton_step",
    "percentile_interval",
    "poisson_bootstrap",
    "poisson_counts",
    "poisson_weights",
    "rank_index",
    "ranking_metrics",
    "score_bin",
    "sorted_ranking_metrics",
    "unit_sums",
    "wilson_interval",
    "z_value",
]

PROBABILITY_FLOOR: Final = 1e-6
"""Scores are clipped to [floor, 1 - floor] before the logit (a score of 0 or 1 has none)."""
ECE_BINS: Final = 10


# --- resampling and intervals ---------------------------------------------------------------------


def poisson_counts(base: np.ndarray, *, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson-bootstrap weights ``(n_resamples, rows)`` as integers: Poisson(``base``) per row.

    ``base`` is 1 per person or the count of a cell of identical people.
    """
    base = np.asarray(base, dtype=np.float64)
    size = (n_resamples, base.size)
    if base.size and (base == base[0]).all():
        # one rate for every row (1 per person): the same draws as the array form, 3x faster
        # (numpy's per-element broadcasting costs more than the draw itself)
        return rng.poisson(base[0], size=size)
    return rng.poisson(base, size=size)


def poisson_weights(base: np.ndarray, *, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`poisson_counts` as float64 weights."""
    return poisson_counts(base, n_resamples=n_resamples, rng=rng).astype(np.float64)


def poisson_bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    base: np.ndarray,
    *,
    n_resamples: int,
    rng: np.random.Generator,
    chunk: int,
    threads: int = 1,
    spawn: bool = False,
) -> dict[str, np.ndarray]:
    """Draws of ``statistic`` over Poisson-bootstrap resamples, ``chunk`` resamples at a time.

    Parameters
    ----------
    statistic
        Maps weights ``(sets, rows)`` to named arrays whose first axis is ``sets``.
    base
        The observed weight of every row (1 per person, or cell counts).
    n_resamples
        Number of resamples.
    rng
        The random stream (draws depend only on it, ``base`` and ``chunk``).
    chunk
        Resamples per batch (memory is about ``(threads + 1) x chunk x rows``).
    threads
        Batches evaluated at once; the result does not depend on it. numpy releases the GIL in
        the array work (and in the draws), so two threads use two cores.
    spawn
        False: the main thread draws every batch's weights (:func:`poisson_weights`, float64)
        in order from ``rng``, so the draws do not depend on ``chunk`` either. True: each batch
        draws its own weights (:func:`poisson_counts`, integers) in its worker thread, from its
        own generator spawned from ``rng`` in batch order (``rng.spawn``), so the drawing runs
        in parallel too; the draws then depend on ``chunk`` (not on ``threads``) and differ
        from the default's.

    Returns
    -------
    dict of numpy.ndarray
        Each statistic's draws stacked on axis 0 (``n_resamples`` rows).
    """
    sizes = [min(chunk, n_resamples - first) for first in range(0, n_resamples, chunk)]
    if spawn:
        results = _spawned_batches(statistic, base, sizes=sizes, rng=rng, threads=threads)
    else:
        results = _ordered_batches(statistic, base, sizes=sizes, rng=rng, threads=threads)
    draws: dict[str, list[np.ndarray]] = {}
    for result in results:
        for name, values in result.items():
            draws.setdefault(name, []).append(values)
    return {name: np.concatenate(parts) for name, parts in draws.items()}


def _ordered_batches(
    statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    base: np.ndarray,
    *,
    sizes: list[int],
    rng: np.random.Generator,
    threads: int,
) -> list[Mapping[str, np.ndarray]]:
    """``statistic`` of each batch, the weights drawn in order from ``rng`` on this thread."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque[Future[Mapping[str, np.ndarray]]] = deque()
        results: list[Mapping[str, np.ndarray]] = []
        for size in sizes:
            if len(pending) >= max(1, threads):  # bound the weights held in memory
                results.append(pending.popleft().result())
            pending.append(pool.submit(statistic, poisson_weights(base, n_resamples=size, rng=rng)))
        results += [future.result() for future in pending]
    return results


def _spawned_batches(
    statistic: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    base: np.ndarray,
    *,
    sizes: list[int],
    rng: np.random.Generator,
    threads: int,
) -> list[Mapping[str, np.ndarray]]:
    """``statistic`` of each batch, batch ``i`` drawing its integer weights in its worker thread
    from the ``i``-th generator spawned from ``rng`` (so the draws do not depend on ``threads``)."""
    generators = rng.spawn(len(sizes))

    def batch(number: int) -> Mapping[str, np.ndarray]:
        return statistic(poisson_counts(base, n_resamples=sizes[number], rng=generators[number]))

    # at most ``threads`` batches run (and hold weights) at once; map keeps the batch order
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(batch, range(len(sizes))))


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for ``confidence`` (1.96 at 0.95)."""
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def percentile_interval(
    draws: np.ndarray, *, confidence: float = 0.95, shift: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of bootstrap (or Monte Carlo) draws, NaN draws ignored.

    A column needs at least ``max(10, half the draws)`` finite draws, else its bounds are NaN
    (an interval from a handful of defined resamples would look precise and is not). ``shift``
    moves the interval: the audit re-centres CIs computed on coarser score bins on the point
    estimate.
    """
    alpha = (1.0 - confidence) / 2.0
    draws = np.asarray(draws, dtype=np.float64)
    finite = np.isfinite(draws)
    enough = finite.sum(axis=0) >= max(10, int(0.5 * draws.shape[0]))
    if draws.size == 0 or not enough.any():
        nan = np.full(draws.shape[1:], np.nan)
        return nan, nan.copy()
    # all-NaN columns would warn in nanquantile: fill them, then blank their bounds
    filled = np.where(finite, draws, np.nan)
    filled = np.where(enough[None, ...], filled, 0.0)
    low, high = np.nanquantile(filled, [alpha, 1.0 - alpha], axis=0)
    return np.where(enough, low + shift, np.nan), np.where(enough, high + shift, np.nan)


def wilson_interval(
    successes: np.ndarray, trials: np.ndarray, *, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of binomial proportions, vectorised; ``trials == 0`` gives NaN.

    Examples
    --------
    >>> low, high = wilson_interval(np.array([0, 5]), np.array([10, 0]))
    >>> round(float(low[0]), 4), round(float(high[0]), 4), bool(np.isnan(high[1]))
    (0.0, 0.2775, True)
    """
    successes = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    has_trials = trials > 0
    low, high = proportion_confint(
        np.where(has_trials, successes, 0.0),
        np.where(has_trials, trials, 1.0),  # placeholder: no division by zero, blanked below
        alpha=1.0 - confidence,
        method="wilson",
    )
    return (
        np.where(has_trials, np.clip(low, 0.0, 1.0), np.nan),
        np.where(has_trials, np.clip(high, 0.0, 1.0), np.nan),
    )


# --- ranking ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankIndex:
    """Rows sorted by (group, score) and cut into units of one group and one distinct score.

    Built once per score vector and reused by every resample.
    """

    order: np.ndarray  # row indices by group, then ascending score (stable)
    unit_starts: np.ndarray  # start of each unit in ``order``
    unit_group: np.ndarray  # position of each unit's group among the groups present
    group_starts: np.ndarray  # first unit of each group
    unit_of_row: np.ndarray  # unit of each position of ``order``
    unit_score: np.ndarray  # the score of each unit


def rank_index(score: np.ndarray, *, group: np.ndarray | None = None) -> RankIndex:
    """The :class:`RankIndex` of ``score`` within groups ``0..G-1`` (default: one group).

    Groups must be integer codes; a group without rows has no unit (and no metric).
    """
    score = np.asarray(score, dtype=np.float64)
    group = np.zeros(score.size, dtype=np.int64) if group is None else np.asarray(group)
    order = np.lexsort((score, group))
    sorted_score, sorted_group = score[order], group[order]
    change = np.r_[True, (sorted_score[1:] != sorted_score[:-1]) | (np.diff(sorted_group) != 0)]
    unit_starts = np.flatnonzero(change)
    code = sorted_group[unit_starts]
    new_group = np.r_[True, code[1:] != code[:-1]]
    return RankIndex(
        order=order,
        unit_starts=unit_starts,
        unit_group=np.cumsum(new_group) - 1,
        group_starts=np.flatnonzero(new_group),
        unit_of_row=np.cumsum(change) - 1,
        unit_score=sorted_score[unit_starts],
    )


def unit_sums(
    weights: np.ndarray, y: np.ndarray, index: RankIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted events and non-events per unit of ``index``, each ``(sets, units)``."""
    w = np.asarray(weights, dtype=np.float64)[:, index.order]
    y_sorted = np.asarray(y, dtype=np.float64)[index.order]
    return _per_unit(w * y_sorted, index), _per_unit(w * (1.0 - y_sorted), index)


def _per_unit(values: np.ndarray, index: RankIndex) -> np.ndarray:
    return np.add.reduceat(values, index.unit_starts, axis=1)


def _within_group_below(per_unit: np.ndarray, index: RankIndex) -> np.ndarray:
    """Sum over the units of the same group with a strictly lower score."""
    below = np.cumsum(per_unit, axis=1) - per_unit
    if index.group_starts.size == 1:  # one group: nothing below its first unit to subtract
        return below
    return below - below[:, index.group_starts][:, index.unit_group]


def ranking_metrics(
    weights: np.ndarray,
    y: np.ndarray,
    index: RankIndex,
    *,
    sums: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC (Mann-Whitney, ties count one half) and average precision per group.

    Parameters
    ----------
    weights
        ``(sets, rows)`` weights (ones, cell counts or bootstrap draws).
    y
        Outcome 0/1 per row.
    index
        :func:`rank_index` of the rows' scores (and groups).
    sums
        :func:`unit_sums` of the same arguments, when the caller already has them.

    Returns
    -------
    tuple of numpy.ndarray
        AUROC and AP, each ``(sets, groups)``; NaN where a group lacks events or non-events.
        AP is sklearn's: the precision at each event's score (all rows scored at or above it),
        averaged over events.
    """
    y_sorted = np.asarray(y, dtype=np.float64)[index.order]
    pos, neg = unit_sums(weights, y, index) if sums is None else sums
    n_pos = np.add.reduceat(pos, index.group_starts, axis=1)
    n_neg = np.add.reduceat(neg, index.group_starts, axis=1)
    below = _within_group_below(neg, index)
    # events and non-events scored at or above each unit's score: its precision
    tp = _by_unit(n_pos, index.unit_group) - _within_group_below(pos, index)
    fp = _by_unit(n_neg, index.unit_group) - below
    events = np.flatnonzero(y_sorted == 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        concordant = np.add.reduceat(pos * (below + 0.5 * neg), index.group_starts, axis=1)
        auroc = concordant / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        # summed event by event (not unit by unit): the precision is weighted per person
        # only the events' columns of the weights, in score order
        event_weights = np.asarray(weights, dtype=np.float64)[:, index.order[events]]
        contribution = event_weights * precision[:, index.unit_of_row[events]]
        if index.group_starts.size == 1:
            precision_sum = contribution.sum(axis=1, keepdims=True)
        else:
            event_group = index.unit_group[index.unit_of_row[events]]
            starts = np.flatnonzero(np.r_[True, event_group[1:] != event_group[:-1]])
            precision_sum = np.zeros_like(n_pos)
            precision_sum[:, event_group[starts]] = np.add.reduceat(contribution, starts, axis=1)
        average_precision = precision_sum / n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    return np.where(defined, auroc, np.nan), np.where(n_pos > 0, average_precision, np.nan)


@dataclass(frozen=True)
class EventRanks:
    """Where the events sit among rows sorted by ascending score (one group): what
    :func:`sorted_ranking_metrics` needs besides the weights. Built once, reused by every
    resample."""

    events: np.ndarray  # positions of the events among the sorted rows
    first_event: np.ndarray | None  # first of ``events`` in each unit (None: one event a unit)
    unit_start: np.ndarray  # first row of each unit (distinct score) holding an event
    unit_stop: np.ndarray  # one past its last row


def event_ranks(sorted_score: np.ndarray, sorted_y: np.ndarray) -> EventRanks:
    """The :class:`EventRanks` of rows already sorted by ascending ``sorted_score``."""
    sorted_score = np.asarray(sorted_score, dtype=np.float64)
    change = np.r_[True, sorted_score[1:] != sorted_score[:-1]]
    unit_starts = np.flatnonzero(change)
    unit_stops = np.r_[unit_starts[1:], sorted_score.size]
    events = np.flatnonzero(np.asarray(sorted_y) == 1)
    event_unit = (np.cumsum(change) - 1)[events]
    # the slice: no events, no first event (the leading True would make one)
    first = np.flatnonzero(np.r_[True, event_unit[1:] != event_unit[:-1]])[: event_unit.size]
    units = event_unit[first]
    return EventRanks(
        events=events,
        first_event=None if first.size == events.size else first,
        unit_start=unit_starts[units],
        unit_stop=unit_stops[units],
    )


def _cumulative(counts: np.ndarray) -> np.ndarray:
    """Cumulative sums of integer ``counts`` along the rows, after a leading 0 column: int32
    when no sum can reach 2^31 (half the memory traffic of int64), else int64."""
    bound = counts.shape[1] * (int(counts.max()) if counts.size else 0)
    cumulative = np.zeros(
        (counts.shape[0], counts.shape[1] + 1), dtype=np.int32 if bound < 2**31 else np.int64
    )
    np.cumsum(counts, axis=1, out=cumulative[:, 1:])
    return cumulative


def sorted_ranking_metrics(counts: np.ndarray, ranks: EventRanks) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of :func:`ranking_metrics` (one group) for integer weights
    ``counts`` ``(sets, rows)`` of rows sorted by ascending score (:func:`event_ranks`).

    The same definitions in less work: one integer cumulative sum over the rows, then
    arithmetic on the units holding an event only. Every count is an exact integer, so the
    AUROC is the correctly rounded ratio of exact sums whatever the summation order.

    Returns
    -------
    tuple of numpy.ndarray
        AUROC and AP, each ``(sets,)``; NaN without events (AUROC: or without non-events).
    """
    cumulative = _cumulative(counts)
    # weighted events per unit holding an event, and everything scored strictly below it
    pos = counts[:, ranks.events].astype(np.int64)
    if ranks.first_event is not None:
        pos = np.add.reduceat(pos, ranks.first_event, axis=1)
    below = cumulative[:, ranks.unit_start].astype(np.int64)
    pos_up_to = np.cumsum(pos, axis=1)
    pos_below = pos_up_to - pos
    neg_below = below - pos_below
    neg_within = cumulative[:, ranks.unit_stop] - below - pos
    n_pos = pos.sum(axis=1)
    n_neg = cumulative[:, -1].astype(np.int64) - n_pos
    # twice the concordant pairs (ties count one half): an exact integer
    twice_concordant = (pos * (2 * neg_below + neg_within)).sum(axis=1)
    tp = n_pos[:, None] - pos_below
    fp = n_neg[:, None] - neg_below
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = twice_concordant / (2.0 * n_pos * n_neg)
        precision = np.where(pos > 0, tp / np.maximum(tp + fp, 1), 0.0)
        average_precision = (pos * precision).sum(axis=1) / n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    return np.where(defined, auroc, np.nan), np.where(n_pos > 0, average_precision, np.nan)


# --- calibration -------------------------------------------------------------------------------


def logit(score: np.ndarray) -> np.ndarray:
    """Log-odds of scores clipped to ``[PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]``."""
    clipped = np.clip(np.asarray(score, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return _logit(clipped)


def _by_unit(per_group: np.ndarray, unit_group: np.ndarray) -> np.ndarray:
    """``(sets, groups)`` values spread to ``(sets, units)`` (one group: broadcast, no copy)."""
    return per_group if per_group.shape[1] == 1 else per_group[:, unit_group]


def newton_step(
    gradient: tuple[np.ndarray, np.ndarray], hessian: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The Newton step ``H^-1 g`` of a two-parameter fit, elementwise over sets and groups.

    Parameters
    ----------
    gradient
        ``(g0, g1)``.
    hessian
        ``(h00, h01, h11)`` of the symmetric 2 x 2 Hessian.

    Returns
    -------
    tuple of numpy.ndarray
        The step of each parameter; 0 where the Hessian is singular (``det <= 1e-12``: no
        events, separation), so a fit stays at its start rather than diverging.

    Examples
    --------
    >>> one = np.array([1.0])
    >>> newton_step((one, one), (2 * one, 0 * one, 4 * one))
    (array([0.5]), array([0.25]))
    """
    (g0, g1), (h00, h01, h11) = gradient, hessian
    det = h00 * h11 - h01**2
    with np.errstate(invalid="ignore", divide="ignore"):
        step0 = np.where(det > 1e-12, (h11 * g0 - h01 * g1) / det, 0.0)
        step1 = np.where(det > 1e-12, (h00 * g1 - h01 * g0) / det, 0.0)
    return step0, step1


def logistic_recalibration(
    events: np.ndarray,
    total: np.ndarray,
    lp: np.ndarray,
    *,
    unit_group: np.ndarray,
    group_starts: np.ndarray,
    start: tuple[np.ndarray, np.ndarray] | None = None,
    iterations: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted logistic fit ``logit P(y) = a + b lp`` per group, by batched Newton steps.

    Parameters
    ----------
    events, total
        ``(sets, units)`` weighted events and people per unit (a unit shares one ``lp``).
    lp
        Linear predictor (logit of the score) per unit.
    unit_group, group_starts
        Each unit's group (0..G-1) and the first unit of each group (units sorted by group),
        e.g. from :func:`rank_index`.
    start
        ``(a, b)`` starting values ``(sets, groups)``, e.g. the point estimate for resamples
        (a few steps then reach machine precision); default ``a = 0, b = 1``.
    iterations
        At most this many Newton steps (stops once every step is below 1e-10).

    Returns
    -------
    tuple of numpy.ndarray
        Intercept ``a`` and calibration slope ``b``, each ``(sets, groups)``; a singular
        Hessian (no events, separation) leaves the start value rather than diverging.
    """
    n_sets, n_groups = events.shape[0], len(group_starts)
    intercept = np.zeros((n_sets, n_groups)) if start is None else start[0].copy()
    slope = np.ones((n_sets, n_groups)) if start is None else start[1].copy()
    lp_squared = lp**2
    for _ in range(iterations):
        eta = _by_unit(intercept, unit_group) + _by_unit(slope, unit_group) * lp
        prob = 1.0 / (1.0 + np.exp(-np.clip(eta, -30.0, 30.0)))
        resid = events - total * prob
        curv = total * prob * (1.0 - prob)
        g0 = np.add.reduceat(resid, group_starts, axis=1)
        g1 = np.add.reduceat(resid * lp, group_starts, axis=1)
        h00 = np.add.reduceat(curv, group_starts, axis=1)
        h01 = np.add.reduceat(curv * lp, group_starts, axis=1)
        h11 = np.add.reduceat(curv * lp_squared, group_starts, axis=1)
        step0, step1 = newton_step((g0, g1), (h00, h01, h11))
        intercept = intercept + step0
        slope = slope + step1
        if np.nanmax(np.abs(np.r_[step0.ravel(), step1.ravel(), 0.0])) < 1e-10:
            break
    return intercept, slope


def calibration_in_the_large(
    events: np.ndarray,
    total: np.ndarray,
    lp: np.ndarray,
    *,
    group_starts: np.ndarray,
    unit_group: np.ndarray,
    start: np.ndarray | None = None,
    iterations: int = 50,
) -> np.ndarray:
    """Intercept ``a`` of ``logit P(y) = a + lp`` (slope fixed at 1) per group, by Newton steps.

    Arguments as :func:`logistic_recalibration`; returns ``(sets, groups)``, NaN where the fit
    is undefined (no events or no non-events).
    """
    n_sets, n_groups = events.shape[0], len(group_starts)
    intercept = np.zeros((n_sets, n_groups)) if start is None else start.copy()
    with np.errstate(all="ignore"):  # degenerate resamples end as NaN, not as a warning
        for _ in range(iterations):
            prob = 1.0 / (1.0 + np.exp(-np.clip(_by_unit(intercept, unit_group) + lp, -30.0, 30.0)))
            gradient = np.add.reduceat(events - total * prob, group_starts, axis=1)
            curvature = np.add.reduceat(total * prob * (1.0 - prob), group_starts, axis=1)
            step = gradient / curvature
            intercept = intercept + step
            if np.nanmax(np.abs(step), initial=0.0) < 1e-10:
                break
    return np.where(np.isfinite(intercept), intercept, np.nan)


def ece_bin_edges(score: np.ndarray, *, n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-frequency bin edges of the scores (outer edges open to 0 and 1)."""
    edges = np.unique(np.quantile(score, np.linspace(0.0, 1.0, n_bins + 1)))
    edges[0], edges[-1] = 0.0, np.nextafter(1.0, 2.0)
    return edges


def score_bin(score: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of each score's bin between ``edges`` (see :func:`ece_bin_edges`)."""
    return np.clip(np.searchsorted(edges, score, side="right") - 1, 0, len(edges) - 2)


def ece_matrices(
    y: np.ndarray, score: np.ndarray, *, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row and bin of ``edges``: its outcome and its score in its own bin, 0 elsewhere
    (``(rows, bins)`` each); a weight set's observed and expected events per bin are
    ``weights @`` them (:func:`expected_calibration_error`)."""
    rows, bins = np.arange(score.size), score_bin(score, edges)
    # the values of a one-hot matrix times y and times the score (outcomes and scores are not
    # negative: the zeros are +0.0 as there), without building and multiplying the one-hot
    shape = (score.size, len(edges) - 1)
    observed, expected = np.zeros(shape), np.zeros(shape)
    observed[rows, bins] = y
    expected[rows, bins] = score
    return observed, expected


def expected_calibration_error(
    weights: np.ndarray,
    y: np.ndarray,
    score: np.ndarray,
    *,
    edges: np.ndarray,
    matrices: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """ECE per weight set: sum over bins of |observed - expected events| / people.

    Fixed ``edges`` (the point estimate's) keep resamples on the same bins; ``matrices``:
    :func:`ece_matrices` of the same arguments, built once for many weight sets.
    """
    observed, expected = ece_matrices(y, score, edges=edges) if matrices is None else matrices
    gap = np.abs(weights @ observed - weights @ expected)
    return gap.sum(axis=1) / weights.sum(axis=1)
