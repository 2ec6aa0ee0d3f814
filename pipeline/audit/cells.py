"""Group metrics from weighted cells: fairlearn MetricFrame, made fast without changing answers.

People are collapsed to cells ``group x score bin x outcome x selected`` with a count. Every
group metric here depends on a person only through those four values, so a MetricFrame over
the cells with ``sample_weight = count`` gives exactly the row-level numbers when each score
bin holds one distinct score (the usual case after isotonic calibration). With more distinct
scores than ``score_bins``, scores are replaced by their quantile bin's mean and AUROC, Brier
and calibration move by at most the within-bin spread (``score_resolution`` says which case
applied).

The bootstrap draws Poisson counts per cell (:func:`pipeline.metrics.poisson_bootstrap`; a cell
of ``n`` people drawn as one Poisson(``n``) number is the row-level Poisson bootstrap) and
computes the same metrics with vectorised numpy (:func:`cell_metrics`, on the shared
:mod:`pipeline.metrics`), which a test checks against MetricFrame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import polars as pl
from fairlearn.metrics import MetricFrame

from pipeline import contract, metrics
from pipeline.audit import flags
from pipeline.metrics import percentile_interval, wilson_interval

PROPORTIONS: Final = {
    # metric: (numerator, denominator) in cell_metrics' count names (the contract's definitions)
    name: contract.METRIC_COUNTS[name]
    for name in ("base_rate", "selection_rate", "tpr", "fnr", "fpr", "ppv")
}
SCORE_METRICS: Final = {
    # metric: the counts whose suppression suppresses it
    name: contract.METRIC_COUNTS[name]
    for name in ("auroc", "brier", "oe_ratio", "calibration_slope")
}
METRICS: Final = (*PROPORTIONS, *SCORE_METRICS)
COUNTS: Final = contract.GROUP_COUNTS


@dataclass(frozen=True)
class Cells:
    """One dimension's people collapsed to weighted cells, sorted by group then score bin.

    Attributes
    ----------
    dimension
        The dimension name, e.g. ``imd_quintile``.
    groups
        Group labels; ``group`` indexes into it.
    group, score_bin, outcome, selected, count
        One entry per non-empty cell.
    bin_score
        Score of each bin (its mean over the audited people), indexed by ``score_bin``.
    """

    dimension: str
    groups: tuple[str, ...]
    group: np.ndarray
    score_bin: np.ndarray
    outcome: np.ndarray
    selected: np.ndarray
    count: np.ndarray
    bin_score: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """The score of every cell."""
        return self.bin_score[self.score_bin]


COMPARISON_COLUMNS: Final = (
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
)
METRIC_VALUE_COLUMNS: Final = ("value", "ci_low", "ci_high", *COMPARISON_COLUMNS)
"""A group metric's estimate with its CI, and its difference and ratio to the reference group."""


def natural_key(label: str) -> tuple[int, float, str]:
    """Sort numbers numerically ("2" before "10") and labels alphabetically after them."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def add_score_bins(cohort: pl.DataFrame, *, score_bins: int) -> tuple[pl.DataFrame, str]:
    """Add ``score_bin`` (0 = lowest scores): one bin per distinct score when there are at most
    ``score_bins`` of them, else ``score_bins`` quantile bins. Returns the frame and the
    resolution used (``"exact"`` or ``"binned"``)."""
    distinct = cohort["risk_score"].n_unique()
    if distinct <= score_bins:
        binned = pl.col("risk_score").rank("dense") - 1
        resolution = "exact"
    else:
        binned = (pl.col("risk_score").rank("min") - 1) * score_bins // pl.len()
        resolution = "binned"
    return cohort.with_columns(binned.cast(pl.Int32).alias("score_bin")), resolution


def bin_scores(cohort: pl.DataFrame) -> np.ndarray:
    """Mean score of each ``score_bin`` (index = bin)."""
    bins = cohort["score_bin"].to_numpy()
    n_bins = int(bins.max()) + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        # numpy adds in row order: the same bits on every run (see aggregate.py)
        return np.bincount(
            bins, weights=cohort["risk_score"].to_numpy(), minlength=n_bins
        ) / np.bincount(bins, minlength=n_bins)


def build_cells(
    cohort: pl.DataFrame,
    dimension: str,
    *,
    bin_score: np.ndarray,
    outcome: str = "outcome",
    selected: str = "selected",
) -> Cells:
    """Collapse people (with ``score_bin``) to the weighted cells of one dimension."""
    counted = (
        cohort.group_by(dimension, "score_bin", outcome, selected)
        .agg(pl.len().alias("count"))
        .with_columns(pl.col(dimension).fill_null("Unknown"))
    )
    groups = tuple(sorted(counted[dimension].unique().to_list(), key=natural_key))
    order = pl.DataFrame(
        {dimension: list(groups), "group": np.arange(len(groups), dtype=np.int32)},
        schema={dimension: pl.String, "group": pl.Int32},
    )
    counted = counted.join(order, on=dimension).sort("group", "score_bin", outcome, selected)
    return Cells(
        dimension=dimension,
        groups=groups,
        group=counted["group"].to_numpy(),
        score_bin=counted["score_bin"].to_numpy(),
        outcome=counted[outcome].cast(pl.Int8).to_numpy(),
        selected=counted[selected].cast(pl.Int8).to_numpy(),
        count=counted["count"].to_numpy().astype(np.float64),
        bin_score=bin_score,
    )


def coarsen(cells: Cells, *, n_bins: int) -> Cells:
    """The same cells on at most ``n_bins`` score bins (for a cheaper bootstrap)."""
    n_fine = len(cells.bin_score)
    if n_fine <= n_bins:
        return cells
    coarse_of_fine = (np.arange(n_fine) * n_bins) // n_fine
    coarse_bin = coarse_of_fine[cells.score_bin]
    keys = np.stack([cells.group, coarse_bin, cells.outcome, cells.selected], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, weights=cells.count, minlength=len(unique))
    mass = np.bincount(coarse_bin, weights=cells.count * cells.score, minlength=n_bins)
    people = np.bincount(coarse_bin, weights=cells.count, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_score = mass / people
    merged = {
        "group": unique[:, 0],
        "score_bin": unique[:, 1],
        "outcome": unique[:, 2],
        "selected": unique[:, 3],
        "count": counts,
    }
    return Cells(
        dimension=cells.dimension,
        groups=cells.groups,
        group=merged["group"],
        score_bin=merged["score_bin"],
        outcome=merged["outcome"],
        selected=merged["selected"],
        count=merged["count"],
        bin_score=bin_score,
    )


# --- numpy engine -----------------------------------------------------------------------------


def _starts(keys: np.ndarray) -> np.ndarray:
    """Indices where a sorted key array changes value (reduceat segment starts)."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def cell_metrics(
    cells: Cells,
    weights: np.ndarray | None = None,
    *,
    slope_start: np.ndarray | None = None,
    slope_iterations: int = 25,
) -> dict[str, np.ndarray]:
    """Counts and metrics per group from (resampled) cell weights, vectorised.

    Parameters
    ----------
    cells
        The cells of one dimension.
    weights
        ``(B, n_cells)`` resampled counts; default: the observed counts (B = 1).
    slope_start
        ``(2, B or 1, G)`` Newton start for the calibration fit (e.g. the point estimate).
    slope_iterations
        Newton iterations for the calibration slope.

    Returns
    -------
    dict of numpy.ndarray
        Every name in :data:`COUNTS` and :data:`METRICS` (plus ``calibration_intercept``),
        each ``(B, G)``.
    """
    w = cells.count[None, :] if weights is None else np.asarray(weights, dtype=np.float64)
    y = cells.outcome.astype(np.float64)
    sel = cells.selected.astype(np.float64)
    score = cells.score
    group_starts = _starts(cells.group)

    def per_group(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, group_starts, axis=1)

    out: dict[str, np.ndarray] = {
        "n": per_group(w),
        "n_events": per_group(w * y),
        "n_selected": per_group(w * sel),
        "n_true_positives": per_group(w * (y * sel)),
    }
    out["n_non_events"] = out["n"] - out["n_events"]
    out["n_false_positives"] = out["n_selected"] - out["n_true_positives"]
    out["n_false_negatives"] = out["n_events"] - out["n_true_positives"]
    with np.errstate(invalid="ignore", divide="ignore"):
        for metric, (numerator, denominator) in PROPORTIONS.items():
            out[metric] = out[numerator] / out[denominator]
        out["brier"] = per_group(w * (score - y) ** 2) / out["n"]
        out["oe_ratio"] = out["n_events"] / per_group(w * score)
    auroc, intercept, slope = _ranking_and_calibration(
        cells, w, slope_start=slope_start, slope_iterations=slope_iterations
    )
    has_both = (out["n_events"] > 0) & (out["n_non_events"] > 0)
    out["auroc"] = np.where(has_both, auroc, np.nan)
    out["calibration_intercept"] = np.where(has_both, intercept, np.nan)
    out["calibration_slope"] = np.where(has_both, slope, np.nan)
    return out


def _ranking_and_calibration(
    cells: Cells,
    weights: np.ndarray,
    *,
    slope_start: np.ndarray | None,
    slope_iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC and the logistic recalibration (intercept, slope) per group, ``(B, G)`` each, on
    units = (group, distinct score) (:mod:`pipeline.metrics`)."""
    y = cells.outcome.astype(np.float64)
    index = metrics.rank_index(cells.score, group=cells.group)
    with np.errstate(invalid="ignore", divide="ignore"):
        events, non_events = metrics.unit_sums(weights, y, index)
        auroc = metrics.ranking_metrics(weights, y, index, sums=(events, non_events))[0]
        intercept, slope = metrics.logistic_recalibration(
            events,
            events + non_events,
            metrics.logit(index.unit_score),
            unit_group=index.unit_group,
            group_starts=index.group_starts,
            start=None if slope_start is None else (slope_start[0], slope_start[1]),
            iterations=slope_iterations,
        )
    return auroc, intercept, slope


# --- fairlearn MetricFrame on cells -------------------------------------------------------------
#
# ``CELL_METRICS`` are metric functions with ``sample_weight`` (sklearn validates its arguments on
# every call, ~ms, which dominates once there are only a few thousand cells per dimension); the
# score metrics are pipeline.metrics, as in the bootstrap. ``y_pred`` is the score; the selection
# flag travels as a per-row sample parameter (MetricFrame splits sample params by group just like
# ``y_true``), so one MetricFrame holds every metric. tests/ prove them equal to fairlearn's and
# sklearn's own functions on a row-level MetricFrame (benchmarks/peer_metrics.py).


def _weights(y_true, sample_weight) -> np.ndarray:
    if sample_weight is None:
        return np.ones(len(y_true))
    return np.asarray(sample_weight, dtype=np.float64)


def _cell_count(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    return float(np.sum(_weights(y_true, sample_weight)))


def _cell_base_rate(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    w = _weights(y_true, sample_weight)
    return float(np.sum(w * np.asarray(y_true)) / np.sum(w))


def _cell_rate(which: str):
    def rate(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
        w = _weights(y_true, sample_weight)
        y = np.asarray(y_true, dtype=np.float64)
        sel = np.asarray(selected, dtype=np.float64)
        num, den = {
            "selection_rate": (sel, np.ones_like(y)),
            "tpr": (y * sel, y),
            "fnr": (y * (1 - sel), y),
            "fpr": ((1 - y) * sel, 1 - y),
            "ppv": (y * sel, sel),
        }[which]
        denominator = np.sum(w * den)
        return float(np.sum(w * num) / denominator) if denominator > 0 else float("nan")

    rate.__name__ = which
    return rate


def cell_auroc(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    """Weighted AUROC of one group's rows (:func:`pipeline.metrics.ranking_metrics`)."""
    w = _weights(y_true, sample_weight)[None, :]
    index = metrics.rank_index(np.asarray(y_pred, dtype=np.float64))
    return float(metrics.ranking_metrics(w, np.asarray(y_true), index)[0][0, 0])


def _cell_brier(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    w = _weights(y_true, sample_weight)
    error = (np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true)) ** 2
    return float(np.sum(w * error) / np.sum(w))


def oe_ratio(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    """Observed / expected events of one group's rows."""
    w = _weights(y_true, sample_weight)
    return float(np.sum(w * np.asarray(y_true)) / np.sum(w * np.asarray(y_pred)))


def calibration_slope(y_true, y_pred, *, sample_weight=None, selected=None) -> float:
    """Calibration slope of one group's rows (:func:`pipeline.metrics.logistic_recalibration`)."""
    y = np.asarray(y_true, dtype=np.float64)
    w = _weights(y, sample_weight)
    if y.min() == y.max():
        return float("nan")
    _, slope = metrics.logistic_recalibration(
        (w * y)[None, :],
        w[None, :],
        metrics.logit(np.asarray(y_pred, dtype=np.float64)),
        unit_group=np.zeros(len(y), dtype=np.int64),
        group_starts=np.array([0]),
    )
    return float(slope[0, 0])


CELL_METRICS: Final = {
    "n": _cell_count,
    "base_rate": _cell_base_rate,
    **{name: _cell_rate(name) for name in ("selection_rate", "tpr", "fpr", "fnr", "ppv")},
    "auroc": cell_auroc,
    "brier": _cell_brier,
    "oe_ratio": oe_ratio,
    "calibration_slope": calibration_slope,
}


def _merge(cells: Cells, keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Cells summed over everything but ``keys``: (first index of each merged cell, counts)."""
    stacked = np.stack(keys, axis=1)
    unique, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=cells.count, minlength=len(unique))
    return first, counts


def _bundle(names: tuple[str, ...]):
    """One MetricFrame metric returning several cell metrics at once (an array).

    fairlearn converts every argument column element by element on every metric call, so one
    call that returns all metrics costs a fraction of one call per metric.
    """

    def bundle(y_true, y_pred, *, sample_weight=None, selected=None) -> np.ndarray:
        return np.array(
            [
                CELL_METRICS[name](y_true, y_pred, sample_weight=sample_weight, selected=selected)
                for name in names
            ]
        )

    return bundle


def cells_metric_frames(all_cells: list[Cells]) -> list[pd.DataFrame]:
    """Group metrics by fairlearn MetricFrame over the cells of several dimensions at once.

    Each metric gets the fewest cells that determine it: the selection metrics need only
    ``group x outcome x selected`` (at most 4 cells per group), the score metrics ``group x
    score bin x outcome``; each set is one MetricFrame metric returning an array, and all
    dimensions share one MetricFrame per set (groups labelled ``<dimension index>|<group>``),
    since fairlearn's fixed cost per MetricFrame and per metric call dominates on cells.

    Returns
    -------
    list of pandas.DataFrame
        Per dimension: rows in ``cells.groups`` order; columns ``n`` and :data:`METRICS`.
    """
    parts: list[list[pd.DataFrame]] = [[] for _ in all_cells]
    for names, with_selection in (
        (("n", *PROPORTIONS), True),
        (tuple(SCORE_METRICS), False),
    ):
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("y", "score", "weight", "selected", "label")
        }
        for index, cells in enumerate(all_cells):
            second = cells.selected if with_selection else cells.score_bin
            first, counts = _merge(cells, [cells.group, cells.outcome, second])
            labels = np.asarray([f"{index}|{g}" for g in cells.groups], dtype=object)
            columns["y"].append(cells.outcome[first].astype(np.int64))
            columns["score"].append(cells.score[first])
            columns["weight"].append(counts)
            columns["selected"].append(cells.selected[first].astype(np.int64))
            columns["label"].append(labels[cells.group[first]])
        params: dict[str, np.ndarray] = {"sample_weight": np.concatenate(columns["weight"])}
        if with_selection:
            params["selected"] = np.concatenate(columns["selected"])
        frame = MetricFrame(
            metrics={"bundle": _bundle(names)},
            y_true=np.concatenate(columns["y"]),
            y_pred=np.concatenate(columns["score"]),
            sensitive_features=pd.Series(np.concatenate(columns["label"]), name="group"),
            sample_params={"bundle": params},
        )
        by_group = frame.by_group["bundle"]
        for index, cells in enumerate(all_cells):
            keys = [f"{index}|{g}" for g in cells.groups]
            values = np.stack(by_group.loc[keys].to_numpy())
            parts[index].append(pd.DataFrame(values, index=list(cells.groups), columns=list(names)))
    return [pd.concat(part, axis=1)[["n", *METRICS]] for part in parts]


def cells_metric_frame(cells: Cells) -> pd.DataFrame:
    """:func:`cells_metric_frames` for one dimension."""
    return cells_metric_frames([cells])[0]


# --- one dimension: estimates, CIs and comparisons with the reference group ----------------------

FLAGGED_METRICS: Final = tuple(flags.FLAG_COMPARATORS)
"""Metrics that can be flagged (:mod:`pipeline.audit.flags`): calibration O/E against 1 and
equal opportunity (TPR) against the reference group. Selection rate is context (in need-based
targeting it should follow need), FNR is TPR's complement (one finding), FPR and PPV are
reported; base rate, AUROC, Brier and calibration slope are reported with their comparisons."""
GATES: Final = {"tpr": "n_events", "fnr": "n_events", "oe_ratio": "n_events", "ppv": "n_selected"}
"""A metric's own denominator gates its flag: at least ``min_group_events`` of it (in the group
and, for comparisons, the reference group)."""


def reference_group(groups: tuple[str, ...], sizes: np.ndarray, preferred: str | None) -> str:
    """``preferred`` when present, else the largest recorded group (ties: first in order)."""
    return flags.preferred_reference(groups, sizes, preferred)


def bootstrap_metrics(
    cells: Cells,
    *,
    n_bootstrap: int,
    rng: np.random.Generator,
    chunk: int = 100,
) -> dict[str, np.ndarray]:
    """Poisson-bootstrap draws ``(n_bootstrap, G)`` of every metric, resampling cell counts
    (:func:`pipeline.metrics.poisson_bootstrap`)."""
    point = cell_metrics(cells)
    start = np.stack([point["calibration_intercept"], point["calibration_slope"]])
    start = np.nan_to_num(start, nan=0.0)

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        # Newton from the point estimate: a few steps reach machine precision on a resample
        resampled = cell_metrics(
            cells,
            weights,
            slope_start=np.repeat(start, weights.shape[0], axis=1),
            slope_iterations=2,
        )
        return {name: resampled[name] for name in METRICS}

    return metrics.poisson_bootstrap(
        statistic, cells.count, n_resamples=n_bootstrap, rng=rng, chunk=chunk
    )


def _estimate_interval(
    metric: str,
    value: np.ndarray,
    counts: dict[str, np.ndarray],
    *,
    coarse_value: np.ndarray,
    draws: np.ndarray | None,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray, np.ndarray]:
    """CI of one metric per group: Wilson for proportions, else bootstrap percentiles re-centred
    on ``value``; plus the method and the numerator / denominator counts behind it."""
    if metric in PROPORTIONS:
        numerator, denominator = (counts[name][0] for name in PROPORTIONS[metric])
        low, high = wilson_interval(numerator, denominator, confidence=confidence)
        return low, high, "wilson", numerator, denominator
    numerator, denominator = (counts[name][0] for name in SCORE_METRICS[metric])
    if draws is None:
        low = high = np.full(len(value), np.nan)
    else:
        low, high = percentile_interval(draws, confidence=confidence, shift=value - coarse_value)
    return low, high, "bootstrap", numerator, denominator


def _reference_comparison(
    value: np.ndarray,
    *,
    ref: int,
    coarse_value: np.ndarray,
    draws: np.ndarray | None,
    confidence: float,
) -> tuple[np.ndarray, ...]:
    """Difference and ratio of each group to the reference group ``ref``, with bootstrap
    percentile CIs re-centred on them: (difference, ratio, d_low, d_high, r_low, r_high)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        difference = value - value[ref]
        ratio = value / value[ref]
        if draws is None:
            nan = np.full(len(value), np.nan)
            return difference, ratio, nan, nan, nan, nan
        d_low, d_high = percentile_interval(
            draws - draws[:, [ref]],
            confidence=confidence,
            shift=difference - (coarse_value - coarse_value[ref]),
        )
        r_low, r_high = percentile_interval(
            draws / draws[:, [ref]],
            confidence=confidence,
            shift=ratio - coarse_value / coarse_value[ref],
        )
    return difference, ratio, d_low, d_high, r_low, r_high


def _gate(metric: str, counts: dict[str, np.ndarray], ref: int, *, min_events: int) -> np.ndarray:
    """The metric's own denominator is large enough, in the group and its reference."""
    gate = GATES.get(metric)
    if gate is None:
        return np.zeros(len(counts["n"][0]), dtype=bool)
    own = counts[gate][0] >= min_events
    if flags.FLAG_COMPARATORS.get(metric) == "reference group":
        own &= own[ref]
    return own


def _flag_columns(
    metric: str,
    *,
    value: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    ratio: np.ndarray,
    r_low: np.ndarray,
    r_high: np.ndarray,
    is_ref: np.ndarray,
    confidence: float,
) -> dict[str, object]:
    """What a flaggable metric is compared with, its p-value and whether its interval
    excludes 1 (O/E: its own interval; TPR: its ratio to the reference)."""
    comparator = flags.FLAG_COMPARATORS.get(metric)
    nan = np.full(len(value), np.nan)
    if comparator == "1 (calibration)":
        p = flags.p_from_interval(value, low, high, confidence=confidence)
        return {"comparator": comparator, "p_value": p, "significant": (low > 1.0) | (high < 1.0)}
    significant = ~is_ref & ((r_low > 1.0) | (r_high < 1.0))
    if comparator == "reference group":
        p = flags.p_from_interval(ratio, r_low, r_high, confidence=confidence)
        return {
            "comparator": [None if own else comparator for own in is_ref],
            "p_value": np.where(is_ref, np.nan, p),
            "significant": significant,
        }
    return {"comparator": None, "p_value": nan, "significant": significant}


def _metric_table(
    cells: Cells,
    metric: str,
    *,
    value: np.ndarray,
    counts: dict[str, np.ndarray],
    ref: int,
    coarse_value: np.ndarray,
    draws: np.ndarray | None,
    confidence: float,
    min_group_events: int,
) -> pl.DataFrame:
    """One metric's rows of :func:`audit_dimension` (one per group); ``flag`` is the raw
    candidate (gated and significant), the publication adds materiality and the FDR."""
    low, high, method, num_count, den_count = _estimate_interval(
        metric, value, counts, coarse_value=coarse_value, draws=draws, confidence=confidence
    )
    difference, ratio, d_low, d_high, r_low, r_high = _reference_comparison(
        value, ref=ref, coarse_value=coarse_value, draws=draws, confidence=confidence
    )
    is_ref = np.arange(len(cells.groups)) == ref
    flag_columns = _flag_columns(
        metric,
        value=value,
        low=low,
        high=high,
        ratio=ratio,
        r_low=r_low,
        r_high=r_high,
        is_ref=is_ref,
        confidence=confidence,
    )
    gated = _gate(metric, counts, ref, min_events=min_group_events)
    return pl.DataFrame(
        {
            "dimension": cells.dimension,
            "group": list(cells.groups),
            "reference_group": cells.groups[ref],
            "is_reference": is_ref,
            "metric": metric,
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "ci_method": method,
            "numerator_raw": num_count,
            "denominator_raw": den_count,
            # a proportion also reveals its complement (e.g. FNR = 1 - TPR)
            "complement_raw": den_count - num_count
            if metric in PROPORTIONS
            else np.zeros(len(cells.groups)),
            "group_n_raw": counts["n"][0],
            "difference": np.where(is_ref, 0.0, difference),
            "difference_ci_low": np.where(is_ref, np.nan, d_low),
            "difference_ci_high": np.where(is_ref, np.nan, d_high),
            "ratio": np.where(is_ref, 1.0, ratio),
            "ratio_ci_low": np.where(is_ref, np.nan, r_low),
            "ratio_ci_high": np.where(is_ref, np.nan, r_high),
            "outside_fair_range": np.zeros(len(cells.groups), dtype=bool),  # set on publishing
            "gated": gated,
            **flag_columns,
            "flag": gated
            & np.asarray(flag_columns["significant"], dtype=bool)
            & (metric in FLAGGED_METRICS),
        },
        strict=False,
    ).with_columns(pl.col("comparator").cast(pl.String))


def audit_dimension(
    cells: Cells,
    *,
    preferred_reference: str | None,
    n_bootstrap: int,
    bootstrap_bins: int,
    rng: np.random.Generator,
    confidence: float,
    min_group_size: int,
    min_group_events: int,
    point: pd.DataFrame | None = None,
) -> pl.DataFrame:
    """Every metric of every group of one dimension, with CIs and comparisons to the reference.

    Point estimates come from fairlearn MetricFrame on the cells; 95% CIs are Wilson for the
    proportions and Poisson-bootstrap percentiles (cell counts resampled, on at most
    ``bootstrap_bins`` score bins and re-centred on the point estimate) for the other metrics
    and for every difference and ratio to the reference group.

    ``point``: the MetricFrame estimates when already computed (:func:`cells_metric_frames`).

    Returns
    -------
    polars.DataFrame
        Long format, raw (not yet disclosure-controlled): one row per group and metric.
    """
    frame = cells_metric_frame(cells) if point is None else point
    counts = cell_metrics(cells)
    sizes = counts["n"][0]
    preferred = reference_group(cells.groups, sizes, preferred_reference)
    coarse = coarsen(cells, n_bins=bootstrap_bins)
    coarse_point = cell_metrics(coarse)
    draws = bootstrap_metrics(coarse, n_bootstrap=n_bootstrap, rng=rng) if n_bootstrap > 0 else None
    rows = []
    for metric in METRICS:
        value = frame[metric].to_numpy()
        rows.append(
            _metric_table(
                cells,
                metric,
                value=value,
                counts=counts,
                # per metric: a reference whose value is 0 or undefined would give inf ratios
                ref=flags.reference_index(cells.groups, sizes, value, preferred=preferred),
                coarse_value=coarse_point[metric][0],
                draws=None if draws is None else draws[metric],
                confidence=confidence,
                min_group_events=min_group_events,
            )
        )
    stable = (sizes >= min_group_size) & (counts["n_events"][0] >= min_group_events)
    return (
        pl.concat(rows)
        .with_columns(pl.col(c).fill_nan(None) for c in (*METRIC_VALUE_COLUMNS, "p_value"))
        .join(
            pl.DataFrame({"group": list(cells.groups), "stable": stable}),
            on="group",
            how="left",
            maintain_order="left",
        )
    )


def group_counts(cells: Cells, *, min_group_size: int, min_group_events: int) -> pl.DataFrame:
    """Raw counts per group (not yet disclosure-controlled)."""
    counts = cell_metrics(cells)
    frame = pl.DataFrame(
        {"dimension": cells.dimension, "group": list(cells.groups)}
        | {name: counts[name][0].astype(np.int64) for name in COUNTS}
    )
    return frame.with_columns(
        stable=(pl.col("n") >= min_group_size) & (pl.col("n_events") >= min_group_events)
    )
