"""Stage ``train``: one LightGBM risk model per prevention target.

features + outcomes -> ``models/<target>/`` (model.txt in LightGBM's text format, calibration.json,
metrics.json, feature_importance.json, model_card.md, plots/*.csv) and
``data/scores/<target>.parquet`` (every eligible person), plus one MLflow run registered as
``phm-<target>`` with the alias ``candidate``.

Design choices (documented in the model card too):

- Class imbalance: by default none (``train.class_weighting: none``). Outreach ranks people and the
  audit reads the probabilities, so they must stay calibrated; reweighting the rare class inflates
  every probability. ``balanced`` sets LightGBM's ``scale_pos_weight`` to negatives/positives for
  users who only need a ranking (the calibration step then has more to correct).
- Calibration: fitted on the validation split and kept only when it lowers the validation Brier
  score, judged by cross-fitting within the validation split (an in-sample isotonic fit always
  "improves" its own Brier score). Stored as JSON, never pickle.
- Metrics on the test split with percentile bootstrap 95% CIs; the bootstrap is vectorised as a
  (resamples x people) matrix of resampling counts, processed in chunks.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import lightgbm as lgb
import numpy as np
import polars as pl
import yaml
from rich.progress import Progress
from scipy.special import expit, logit

from pipeline import contract, disclosure, io, seeds, selection, tracking
from pipeline.errors import ContractError, StageError

if TYPE_CHECKING:
    from pipeline.config import OperatingPointParams, Params, TargetParams, TrainParams

CalibrationMethod = Literal["none", "isotonic", "sigmoid"]

METRIC_NAMES: Final = contract.MODEL_METRICS
"""Test-split metrics, each published with ``<name>_ci_low`` / ``<name>_ci_high``."""

ECE_BINS: Final = 10
CALIBRATION_FOLDS: Final = 5
SCORE_BATCH_ROWS: Final = 500_000
BOOTSTRAP_CELLS: Final = 4_000_000  # resamples x rows per vectorised chunk (~32 MB per array)
SHAP_SAMPLE_ROWS: Final = 20_000
PLOT_POINTS: Final = 200
PROBABILITY_FLOOR: Final = 1e-6
REGISTERED_ALIAS: Final = "candidate"


# --- Features and cohort -------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """The model's inputs, in order, and which of them are integer categoricals."""

    names: tuple[str, ...]
    categorical: tuple[str, ...]


def feature_spec(manifest: contract.FeatureManifest) -> FeatureSpec:
    """Model inputs in manifest order and their categorical subset."""
    names, categorical = manifest.inputs()
    return FeatureSpec(names, categorical)


def cohort_frame(
    features: pl.LazyFrame,
    outcomes: pl.LazyFrame,
    *,
    target: str,
    columns: Sequence[str],
) -> pl.LazyFrame:
    """The eligible cohort of ``target``: its outcome rows joined to their feature rows.

    Parameters
    ----------
    features
        ``features/features.parquet`` (person_id, split, sensitive attributes, features).
    outcomes
        ``outcomes`` (person_id, target, value): one row per eligible person per target.
    target
        The target name.
    columns
        Feature-table columns to keep besides person_id and split.

    Returns
    -------
    pl.LazyFrame
        person_id, split, outcome (Int8), ``columns``, sorted by person_id; a left join, so a
        cohort member without features shows as a null split (see :func:`check_cohort`).
    """
    cohort = outcomes.filter(pl.col("target") == target).select(
        "person_id", pl.col("value").cast(pl.Int8).alias("outcome")
    )
    keep = features.select("person_id", "split", *columns)
    return cohort.join(keep, on="person_id", how="left").sort("person_id")


def check_cohort(cohort: pl.DataFrame, *, target: str, source: str) -> None:
    """Raise ContractError when the cohort cannot be trained on, naming the rule and row count."""
    if cohort.height == 0:
        raise ContractError(f"{source}: no outcome rows for target {target!r}")
    missing = cohort.filter(pl.col("split").is_null()).height
    if missing:
        raise ContractError(
            f"features/features.parquet: {missing} people of the {target!r} cohort have no "
            "feature row"
        )
    bad_outcome = cohort.filter(
        ~pl.col("outcome").is_in([0, 1]) | pl.col("outcome").is_null()
    ).height
    if bad_outcome:
        raise ContractError(
            f"{source}: column value must be 0/1 ({bad_outcome} rows of {target!r})"
        )
    duplicated = cohort.height - cohort.get_column("person_id").n_unique()
    if duplicated:
        raise ContractError(f"{source}: {duplicated} duplicated person_id rows for {target!r}")
    for split in ("train", "validation"):
        events = cohort.filter(pl.col("split") == split).get_column("outcome")
        if events.len() == 0 or events.sum() == 0 or events.sum() == events.len():
            raise StageError(
                f"{target}: the {split} split needs both outcomes (rows={events.len()}, "
                f"events={events.sum()})"
            )


def feature_matrix(frame: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The model's input matrix (float32, nulls as NaN) in ``spec`` order.

    Raises
    ------
    ContractError
        When a model input is not numeric or boolean, or a categorical is not integer.
    """
    for name in spec.names:
        dtype = frame.schema[name]
        if name in spec.categorical and not dtype.is_integer():
            raise ContractError(
                f"features/features.parquet: categorical model input {name!r} must be an "
                f"integer code, found {dtype}"
            )
        if not (dtype.is_numeric() or dtype == pl.Boolean):
            raise ContractError(
                f"features/features.parquet: model input {name!r} must be numeric, found {dtype}"
            )
    return frame.select(pl.col(name).cast(pl.Float32) for name in spec.names).to_numpy()


# --- Seeds and sampling --------------------------------------------------------------------------


def sample_rows(n_rows: int, *, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a seeded sample of ``max_rows`` without replacement."""
    if n_rows <= max_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False))


# --- Model ---------------------------------------------------------------------------------------


def lightgbm_params(
    train: TrainParams, *, seed: int, scale_pos_weight: float = 1.0
) -> dict[str, Any]:
    """LightGBM booster parameters from ``params.train`` (deterministic, seeded)."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": train.learning_rate,
        "num_leaves": train.num_leaves,
        "max_depth": train.max_depth,
        "min_data_in_leaf": train.min_child_samples,
        "feature_fraction": train.feature_fraction,
        "bagging_fraction": train.bagging_fraction,
        # bagging is only active with a positive frequency
        "bagging_freq": 1 if train.bagging_fraction < 1.0 else 0,
        "lambda_l2": train.lambda_l2,
        "scale_pos_weight": scale_pos_weight,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,  # fixed histogram layout: same model text on every run
        "num_threads": train.num_threads,
        "verbosity": -1,
    }


def class_weight(y: np.ndarray, *, mode: Literal["none", "balanced"]) -> float:
    """``scale_pos_weight``: 1 (calibrated probabilities) or negatives/positives (balanced)."""
    if mode == "none":
        return 1.0
    positives = float(y.sum())
    return (y.size - positives) / positives


def fit_booster(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    spec: FeatureSpec,
    params: Mapping[str, Any],
    n_estimators: int,
    early_stopping_rounds: int,
) -> lgb.Booster:
    """Train with early stopping on the validation split; return a booster of the best trees only.

    The returned booster is rebuilt from its own text, so it is exactly what ``model.txt`` holds.
    """
    train_set = lgb.Dataset(
        x_train,
        label=y_train,
        feature_name=list(spec.names),
        categorical_feature=list(spec.categorical),
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(x_valid, label=y_valid, reference=train_set)
    booster = lgb.train(
        dict(params),
        train_set,
        num_boost_round=n_estimators,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def predict_raw(
    booster: lgb.Booster, x: np.ndarray, *, batch_rows: int = SCORE_BATCH_ROWS
) -> np.ndarray:
    """Uncalibrated probabilities, predicted in batches (memory stays flat with cohort size)."""
    out = np.empty(x.shape[0], dtype=np.float64)
    starts = range(0, x.shape[0], batch_rows)
    with Progress(disable=not os.isatty(2), transient=True) as progress:
        task = progress.add_task("scoring", total=len(starts))
        for start in starts:
            stop = min(start + batch_rows, x.shape[0])
            out[start:stop] = booster.predict(x[start:stop])
            progress.advance(task)
    return out


# --- Calibration ---------------------------------------------------------------------------------


def _fit_calibrator(method: CalibrationMethod, raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return {
            "method": "isotonic",
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        }
    from sklearn.linear_model import LogisticRegression

    z = logit(np.clip(raw, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)).reshape(-1, 1)
    fitted = LogisticRegression(C=np.inf).fit(z, y)
    return {
        "method": "sigmoid",
        "intercept": float(fitted.intercept_[0]),
        "slope": float(fitted.coef_[0, 0]),
    }


def apply_calibration(calibration: Mapping[str, Any], raw: np.ndarray) -> np.ndarray:
    """Map raw probabilities through a calibration stored as JSON (see :func:`fit_calibration`)."""
    method = calibration["method"]
    if method == "none":
        return raw.astype(np.float64, copy=True)
    if method == "isotonic":
        # np.interp clips outside the thresholds, as IsotonicRegression(out_of_bounds="clip")
        return np.interp(raw, np.asarray(calibration["x"]), np.asarray(calibration["y"]))
    if method == "sigmoid":
        z = logit(np.clip(raw, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
        return expit(calibration["intercept"] + calibration["slope"] * z)
    raise StageError(f"calibration.json: unknown method {method!r}")


def fit_calibration(
    raw: np.ndarray,
    y: np.ndarray,
    *,
    mode: Literal["auto", "isotonic", "sigmoid", "none"],
    seed: int,
    n_folds: int = CALIBRATION_FOLDS,
) -> dict[str, Any]:
    """Choose and fit a probability calibration on the validation split.

    A candidate (``auto``: isotonic and sigmoid; otherwise the named method) is kept only when its
    cross-fitted Brier score (fit on ``n_folds - 1`` folds of the validation split, scored on the
    held-out fold) is lower than the raw model's; it is then refitted on the whole split.

    Returns
    -------
    dict
        JSON-ready: ``method`` plus its parameters, the validation Brier scores behind the choice.
    """
    brier_raw = float(np.mean((raw - y) ** 2))
    decision: dict[str, Any] = {
        "mode": mode,
        "validation_brier_raw": brier_raw,
        "validation_brier_cross_fitted": {},
    }
    if mode == "none":
        return {"method": "none", **decision}
    candidates: tuple[CalibrationMethod, ...] = (
        ("isotonic", "sigmoid") if mode == "auto" else (mode,)
    )
    folds = np.random.default_rng(seed).permutation(raw.size) % n_folds
    scores: dict[str, float] = {}
    for method in candidates:
        cross_fitted = np.empty_like(raw)
        for fold in range(n_folds):
            held_out = folds == fold
            fitted = _fit_calibrator(method, raw[~held_out], y[~held_out])
            cross_fitted[held_out] = apply_calibration(fitted, raw[held_out])
        scores[method] = float(np.mean((cross_fitted - y) ** 2))
    decision["validation_brier_cross_fitted"] = scores
    best = min(scores, key=lambda method: (scores[method], method))
    if scores[best] >= brier_raw:
        return {"method": "none", **decision}
    return {**_fit_calibrator(best, raw, y), **decision}


# --- Scores --------------------------------------------------------------------------------------


def rank_scores(scored: pl.DataFrame) -> pl.DataFrame:
    """Rank, decile and tier for every eligible person (``contract.SCORES_SCHEMA``).

    Parameters
    ----------
    scored
        person_id, split, outcome, risk_score for the whole cohort.

    Returns
    -------
    pl.DataFrame
        risk_rank 1 = highest score (ties broken by person_id), risk_decile 10 = highest,
        risk_tier from ``contract.RISK_TIERS`` by rank share; sorted by person_id.
    """
    n_people = scored.height
    ranked = scored.sort(["risk_score", "person_id"], descending=[True, False]).with_row_index(
        "risk_rank", offset=1
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


def selected_at_capacity(scores: pl.DataFrame, operating_point: OperatingPointParams) -> pl.Series:
    """Who a list at the operating point would reach, ranked on the whole cohort
    (:func:`pipeline.selection.select_top`; per-unit modes need icb_code / practice_id)."""
    chosen = selection.select_top(
        pl.col("risk_rank"),
        capacity_mode=operating_point.capacity_mode,
        capacity=operating_point.capacity,
    )
    return scores.select(chosen).get_column("selected")


# --- Metrics -------------------------------------------------------------------------------------


def bootstrap_counts(n_rows: int, n_resamples: int, *, rng: np.random.Generator) -> np.ndarray:
    """Resampling counts (resamples x rows): how often each row is drawn in each resample."""
    draws = rng.integers(0, n_rows, size=(n_resamples, n_rows))
    offsets = (np.arange(n_resamples) * n_rows)[:, None]
    flat = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_rows)
    return flat.reshape(n_resamples, n_rows).astype(np.float64)


@dataclass(frozen=True)
class _RankIndex:
    """Positions needed for weighted AUROC / AP: computed once, reused by every resample."""

    positives: np.ndarray  # row indices of events, by ascending score
    negatives: np.ndarray  # row indices of non-events, by ascending score
    negatives_below: np.ndarray  # per event: non-events with a strictly lower score
    negatives_upto: np.ndarray  # per event: non-events with a lower or equal score
    positives_below: np.ndarray  # per event: events with a strictly lower score


def _rank_index(score: np.ndarray, y: np.ndarray) -> _RankIndex:
    positives = np.flatnonzero(y == 1)
    negatives = np.flatnonzero(y != 1)
    positives = positives[np.argsort(score[positives], kind="stable")]
    negatives = negatives[np.argsort(score[negatives], kind="stable")]
    pos_score, neg_score = score[positives], score[negatives]
    return _RankIndex(
        positives,
        negatives,
        np.searchsorted(neg_score, pos_score, side="left"),
        np.searchsorted(neg_score, pos_score, side="right"),
        np.searchsorted(pos_score, pos_score, side="left"),
    )


def _ranking_metrics(weights: np.ndarray, index: _RankIndex) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC (ties count half) and average precision per row of ``weights``.

    Only cumulative sums over events and non-events plus gathers at the events' positions: a few
    passes over the (resamples x people) matrix.
    """
    w_pos = weights[:, index.positives]
    zero = np.zeros((weights.shape[0], 1))
    cum_neg = np.concatenate([zero, np.cumsum(weights[:, index.negatives], axis=1)], axis=1)
    cum_pos = np.concatenate([zero, np.cumsum(w_pos, axis=1)], axis=1)
    n_pos, n_neg = cum_pos[:, -1], cum_neg[:, -1]
    below = cum_neg[:, index.negatives_below]
    tied = cum_neg[:, index.negatives_upto] - below
    # events and non-events scored at or above each event's score (its precision there)
    tp = n_pos[:, None] - cum_pos[:, index.positives_below]
    fp = n_neg[:, None] - below
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (w_pos * (below + 0.5 * tied)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        auprc = (w_pos * precision).sum(axis=1) / n_pos
    return auroc, auprc


def _logistic_recalibration(
    weights: np.ndarray,
    y: np.ndarray,
    lp: np.ndarray,
    *,
    start: tuple[float, float, float] = (0.0, 1.0, 0.0),
    max_iter: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration intercept (logit offset, slope fixed at 1) and slope, by batched Newton steps.

    Slope: ``logit P(y) = a + b * lp``; intercept (calibration-in-the-large):
    ``logit P(y) = a + lp`` - the usual pair (Van Calster et al.). ``start`` = (a, b, intercept):
    resamples start from the point estimate and converge in a few steps.
    """
    n_sets = weights.shape[0]
    a = np.full(n_sets, start[0])
    b = np.full(n_sets, start[1])
    lp2 = lp * lp
    # degenerate resamples (no events, separation) diverge: they end as NaN, not as a warning
    with np.errstate(all="ignore"):
        for _ in range(max_iter):
            mu = expit(a[:, None] + b[:, None] * lp)
            resid = weights * (y - mu)
            var = weights * mu * (1.0 - mu)
            g0, g1 = resid.sum(axis=1), resid @ lp
            h00, h01, h11 = var.sum(axis=1), var @ lp, var @ lp2
            det = h00 * h11 - h01 * h01
            da = (h11 * g0 - h01 * g1) / det
            db = (h00 * g1 - h01 * g0) / det
            a, b = a + da, b + db
            if np.nanmax(np.abs(np.r_[da, db]), initial=0.0) < 1e-10:
                break
        intercept = np.full(n_sets, start[2])
        for _ in range(max_iter):
            mu = expit(intercept[:, None] + lp)
            step = (weights * (y - mu)).sum(axis=1) / (weights * mu * (1.0 - mu)).sum(axis=1)
            intercept = intercept + step
            if np.nanmax(np.abs(step), initial=0.0) < 1e-10:
                break
    b = np.where(np.isfinite(b), b, np.nan)
    intercept = np.where(np.isfinite(intercept), intercept, np.nan)
    return intercept, b


def metric_sets(
    weights: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    oracle: np.ndarray | None = None,
    ece_edges: np.ndarray | None = None,
    recalibration_start: tuple[float, float, float] = (0.0, 1.0, 0.0),
    rank_indexes: tuple[_RankIndex, _RankIndex | None] | None = None,
) -> dict[str, np.ndarray]:
    """Every test metric for each row of ``weights`` (rows = resamples; one row of ones = point).

    Parameters
    ----------
    weights
        (sets x people) resampling counts.
    y, p, selected
        Outcome (0/1), calibrated probability, selected at outreach capacity.
    oracle
        True probabilities on the same rows (synthetic data), or None.
    ece_edges
        Fixed bin edges for ECE (so resamples share the point estimate's bins).
    recalibration_start
        Starting values of the logistic recalibration fits (see ``_logistic_recalibration``).
    rank_indexes
        Precomputed rank positions of (p, oracle), shared across resample chunks.
    """
    y = y.astype(np.float64)
    sel = selected.astype(np.float64)
    total = weights.sum(axis=1)
    events = weights @ y
    if rank_indexes is None:
        rank_indexes = (_rank_index(p, y), None if oracle is None else _rank_index(oracle, y))
    auroc, auprc = _ranking_metrics(weights, rank_indexes[0])
    if ece_edges is None:
        ece_edges = ece_bin_edges(p)
    bins = np.clip(np.searchsorted(ece_edges, p, side="right") - 1, 0, len(ece_edges) - 2)
    onehot = np.zeros((p.size, len(ece_edges) - 1))
    onehot[np.arange(p.size), bins] = 1.0
    gap = np.abs(weights @ (onehot * y[:, None]) - weights @ (onehot * p[:, None])).sum(axis=1)
    lp = logit(np.clip(p, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
    intercept, slope = _logistic_recalibration(weights, y, lp, start=recalibration_start)
    selected_events = weights @ (sel * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "auroc": auroc,
            "auprc": auprc,
            "brier": (weights @ (p - y) ** 2) / total,
            "calibration_intercept": intercept,
            "calibration_slope": slope,
            "oe_ratio": events / (weights @ p),
            "ece": gap / total,
            "sensitivity_at_capacity": selected_events / events,
            "ppv_at_capacity": selected_events / (weights @ sel),
        }
    if oracle is not None:
        oracle_index = rank_indexes[1] or _rank_index(oracle, y)
        oracle_auroc, _ = _ranking_metrics(weights, oracle_index)
        out["oracle_auroc"] = oracle_auroc
        out["oracle_gap"] = oracle_auroc - auroc
    return out


def ece_bin_edges(p: np.ndarray, *, n_bins: int = ECE_BINS) -> np.ndarray:
    """Equal-frequency bin edges of the predictions (outer edges open to 0 and 1)."""
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    edges[0], edges[-1] = 0.0, np.nextafter(1.0, 2.0)
    return edges


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    selected: np.ndarray,
    *,
    oracle: np.ndarray | None,
    n_bootstrap: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimates and percentile-bootstrap CIs of every test metric.

    Returns
    -------
    dict
        metric -> {"value", "ci_low", "ci_high"} (NaN when undefined, e.g. no events).
    """
    edges = ece_bin_edges(p)
    indexes = (_rank_index(p, y), None if oracle is None else _rank_index(oracle, y))
    point = metric_sets(
        np.ones((1, y.size)), y, p, selected, oracle=oracle, ece_edges=edges, rank_indexes=indexes
    )
    resampled: dict[str, list[np.ndarray]] = {name: [] for name in point}
    intercept, slope = point["calibration_intercept"][0], point["calibration_slope"][0]
    warm = (intercept, slope, intercept) if np.isfinite([intercept, slope]).all() else (0, 1, 0)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // max(1, y.size))
    for start in range(0, n_bootstrap, chunk):
        counts = bootstrap_counts(y.size, min(chunk, n_bootstrap - start), rng=rng)
        for name, values in metric_sets(
            counts,
            y,
            p,
            selected,
            oracle=oracle,
            ece_edges=edges,
            recalibration_start=warm,
            rank_indexes=indexes,
        ).items():
            resampled[name].append(values)
    tail = (1.0 - confidence) / 2.0 * 100.0
    out: dict[str, dict[str, float]] = {}
    for name, value in point.items():
        draws = np.concatenate(resampled[name]) if resampled[name] else np.array([])
        finite = draws[np.isfinite(draws)]
        low, high = (
            np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (math.nan, math.nan)
        )
        out[name] = {"value": float(value[0]), "ci_low": float(low), "ci_high": float(high)}
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
) -> dict[str, Any]:
    """Flat, disclosure-controlled ``metrics.json``: ``<metric>``, ``<metric>_ci_low/high``.

    Counts are rounded/suppressed (pipeline.disclosure); a metric whose numerator or denominator
    count is suppressed is published as ``"*"`` along with its CI.
    """
    doc: dict[str, Any] = {
        "target": target,
        "split": "test",
        "n_test": disclosure.round_count(n_test),
        "n_test_events": disclosure.round_count(n_test_events),
        "n_selected_at_capacity": disclosure.round_count(n_selected),
        "n_selected_events_at_capacity": disclosure.round_count(n_selected_events),
        **extra,
    }
    capacity_counts = {
        "sensitivity_at_capacity": (n_selected_events, n_test_events),
        "ppv_at_capacity": (n_selected_events, n_selected),
    }
    for name, estimate in estimates.items():
        numerator, denominator = capacity_counts.get(name, (n_test_events, n_test))
        for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            doc[f"{name}{suffix}"] = disclosure.publish_rate(numerator, denominator, estimate[key])
    return doc


def external_metrics(
    y: np.ndarray, p: np.ndarray, selected: np.ndarray, *, n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """The test metrics on the held-out ICB (split "external"), keys prefixed ``external_``.

    Counts are ``n_external``, ``n_external_events``, ... (disclosure-controlled like the rest).
    """
    estimates = evaluate(y, p, selected, oracle=None, n_bootstrap=n_bootstrap, seed=seed)
    doc = metrics_document(
        estimates,
        target="",
        n_test=int(y.size),
        n_test_events=int(y.sum()),
        n_selected=int(selected.sum()),
        n_selected_events=int((selected * y).sum()),
        extra={},
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


# --- Plots ---------------------------------------------------------------------------------------


def curve_frames(
    y: np.ndarray, p: np.ndarray, *, n_points: int = PLOT_POINTS
) -> dict[str, pl.DataFrame]:
    """Small plot tables (a few hundred points) for ROC, precision-recall, calibration and gain."""
    y = y.astype(np.float64)
    n_events = max(y.sum(), 1.0)
    n_non_events = max(y.size - y.sum(), 1.0)
    thresholds = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_points + 1)))[::-1]
    order = np.argsort(-p, kind="stable")
    p_desc, y_desc = p[order], y[order]
    # people at or above each threshold (p_desc is descending, so search its negation)
    above = np.searchsorted(-p_desc, -thresholds, side="right")
    tp = np.r_[0.0, np.cumsum(y_desc)][above]
    fp = above - tp
    roc = pl.DataFrame({"fpr": np.r_[0.0, fp / n_non_events], "tpr": np.r_[0.0, tp / n_events]})
    pr = pl.DataFrame(
        {"recall": tp / n_events, "precision": np.where(above > 0, tp / np.maximum(above, 1), 1.0)}
    )
    edges = ece_bin_edges(p, n_bins=20)
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    calibration = (
        pl.DataFrame({"bin": bins, "p": p, "y": y})
        .group_by("bin")
        .agg(pl.col("p").mean().alias("mean_predicted"), pl.col("y").mean().alias("observed_rate"))
        .sort("bin")
        .drop("bin")
    )
    shares = np.linspace(0.0, 1.0, 101)
    cut = np.round(shares * y.size).astype(np.int64)
    gain = pl.DataFrame(
        {"share_selected": shares, "share_of_events": np.r_[0.0, np.cumsum(y_desc)][cut] / n_events}
    )
    return {
        "roc": roc,
        "precision_recall": pr,
        "calibration": calibration,
        "cumulative_gain": gain,
    }


# --- Explanations and model card -----------------------------------------------------------------


def feature_importance(
    booster: lgb.Booster, x_sample: np.ndarray, spec: FeatureSpec
) -> list[dict[str, Any]]:
    """Gain importance and mean |SHAP| (LightGBM ``pred_contrib``, log-odds scale) per feature."""
    gain = booster.feature_importance(importance_type="gain")
    contrib = booster.predict(x_sample, pred_contrib=True)[:, : len(spec.names)]
    mean_abs = np.abs(contrib).mean(axis=0) if x_sample.shape[0] else np.zeros(len(spec.names))
    rows = [
        {
            "feature": name,
            "categorical": name in spec.categorical,
            "gain": float(gain[index]),
            "mean_abs_shap": float(mean_abs[index]),
        }
        for index, name in enumerate(spec.names)
    ]
    return sorted(rows, key=lambda row: (-row["gain"], row["feature"]))


def _fmt(doc: Mapping[str, Any], name: str, digits: int = 3) -> str:
    value = doc.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return str(value) if value is not None else "n/a"
    low, high = doc.get(f"{name}_ci_low"), doc.get(f"{name}_ci_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return f"{value:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"
    return f"{value:.{digits}f}"


def model_card(
    *,
    target: str,
    target_params: TargetParams,
    params: Params,
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any],
    importance: Sequence[Mapping[str, Any]],
    n_cohort: int,
    n_train_rows: int,
) -> str:
    """Markdown model card (aggregate and disclosure-controlled: safe to log to MLflow)."""
    exclusions = ", ".join(target_params.exclude_prior) or "none"
    ages = f"{target_params.min_age}-{target_params.max_age}"
    index_date = params.index_date.isoformat()
    n_people = disclosure.round_count(n_cohort)
    n_train = disclosure.round_count(n_train_rows)
    top = ", ".join(row["feature"] for row in importance[:10])
    capacity = params.operating_point
    capacity_text = selection.capacity_text(
        capacity_mode=capacity.capacity_mode, capacity=capacity.capacity
    )
    rows = "\n".join(
        f"| {name.replace('_', ' ')} | {_fmt(metrics, name)} |"
        for name in (*METRIC_NAMES, *contract.ORACLE_METRICS)
        if name in metrics
    )
    return f"""# Model card: `phm-{target}`

## Intended use
Risk stratification for prevention in an integrated care system. The model ranks the eligible
cohort by the predicted probability of the outcome below, to prioritise proactive outreach
(case-finding, care co-ordination) within a fixed capacity: {capacity_text}.
It supports, and does not replace, clinical judgement; it is not a diagnostic tool; read it
with the equity audit of the same run (`reports/audit/{target}/`).

Target: **{target_params.description or target}**.

## Population
Eligible cohort: ages {ages} at the index date {index_date}, excluding prior: {exclusions}.
People in cohort: {n_people}; training rows: {n_train} (a seeded sample of the train split
when it exceeds {params.train.max_train_rows:,}).
Splits are deterministic per person (train / validation / test, plus any held-out ICB as
external validation).

## Outcome
`{target_params.outcome}` within {target_params.follow_up_months} months after the index date,
as recorded in GP and hospital records (recording depends on access to care; see limitations).

## Model
LightGBM binary classifier, saved in LightGBM's text format (no pickle).
Learning rate {params.train.learning_rate}, {params.train.num_leaves} leaves, early stopping on
the validation split after {params.train.early_stopping_rounds} rounds without improvement
(best iteration {metrics.get("best_iteration")}).
Class imbalance: `{params.train.class_weighting}` (`none` keeps the probabilities calibrated,
which outreach and the audit rely on).
Calibration: `{calibration["method"]}` (kept only when it lowers the cross-fitted validation
Brier score).

Most important inputs (gain): {top}.

## Performance (test split, 95% bootstrap CI, {params.train.n_bootstrap} resamples)
| metric | value (95% CI) |
| --- | --- |
{rows}

Capacity metrics: {capacity_text}.
`oracle_*` compares with the true risk of the synthetic population (absent on real data).

## Known limitations
- Trained on recorded data: under-recording of conditions and unequal access to care (more in
  deprived areas and some ethnic groups) bias both inputs and outcome; the label measures care use,
  not need (label-choice bias, Obermeyer et al. 2019). Check the equity audit before use.
- Calibration holds for the population and period it was fitted on; recalibrate before use in a
  different ICB or year. Temporal and geographic validation are limited to what the splits allow.
- Ethnicity is audited but is a model input only when `features.ethnicity_as_input` is true.
- Synthetic data by default: figures describe the simulation, not the NHS.

## TRIPOD+AI items covered
1-2 (title, abstract: this card), 3a-c (context, intended use, known inequalities), 5-6 (data
source, eligibility: Population), 7 (data preparation: features manifest), 8a (outcome
definition), 9 (predictors: manifest, importance), 10 (sample size: counts above), 12a-f (model
type, hyper-parameters, calibration, class imbalance, fairness by the audit), 13 (class
imbalance), 14 (fairness approach: audit stage), 16 (performance measures), 20b, 23a (performance
with CIs; subgroups in the audit), 25 (limitations), 27 (model availability: MLflow registry).
"""


# --- Provenance ----------------------------------------------------------------------------------


def dvc_input_hashes(
    lock: Mapping[str, Any], inputs: Sequence[str], *, tracked: Sequence[Mapping[str, Any]] = ()
) -> dict[str, str]:
    """md5 of each input: the dvc.lock out of the upstream stage that holds it.

    ``tracked`` are parsed ``*.dvc`` files (data added with ``dvc add``, e.g. a real extract).
    """
    outs: dict[str, str] = {}
    stages = [*(lock.get("stages") or {}).values(), *tracked]
    for stage in stages:
        for out in stage.get("outs") or []:
            digest = out.get("md5") or out.get("hash")
            if isinstance(out.get("path"), str) and digest:
                outs[out["path"].rstrip("/")] = str(digest)
    found: dict[str, str] = {}
    for path in inputs:
        holder = next(
            (
                out
                for out in sorted(outs, key=len, reverse=True)
                if path == out or path.startswith(f"{out}/")
            ),
            None,
        )
        if holder is not None:
            found[path] = outs[holder]
    return found


def _dvc_tracked(root: Path) -> list[dict[str, Any]]:
    """The ``*.dvc`` files of data added with ``dvc add``, out paths made relative to ``root``."""
    tracked = []
    for dvc_file in (root / "features.dvc", *root.glob("data/*.dvc")):
        if not dvc_file.exists():
            continue
        # outs of a .dvc file are relative to its folder
        parsed = yaml.safe_load(dvc_file.read_text()) or {}
        prefix = dvc_file.parent.relative_to(root).as_posix()
        outs = [
            {**out, "path": f"{prefix}/{out['path']}".removeprefix("./")}
            for out in parsed.get("outs") or []
            if isinstance(out, dict) and "path" in out
        ]
        tracked.append({"outs": outs})
    return tracked


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _file_digest(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _flat_params(params: Params, target: str) -> dict[str, Any]:
    flat = {f"train.{key}": value for key, value in params.train.model_dump().items()}
    flat |= {f"target.{key}": value for key, value in params.targets[target].model_dump().items()}
    flat |= {
        "seed": params.seed,
        "index_date": params.index_date.isoformat(),
        "operating_point.capacity": params.operating_point.capacity,
        "operating_point.capacity_mode": params.operating_point.capacity_mode,
    }
    return {key: str(value) for key, value in flat.items()}


def log_to_mlflow(
    *,
    params: Params,
    paths: io.Paths,
    target: str,
    spec: FeatureSpec,
    booster: lgb.Booster,
    example: np.ndarray,
    metrics: Mapping[str, Any],
    model_dir: Path,
    dataset_digest: str,
) -> str:
    """One MLflow run for this training: params, metrics, tags, dataset, model, registry alias.

    Nothing row-level is logged: the dataset input is schema + digest only and the input example
    is a synthetic row of training medians.
    """
    import mlflow
    import mlflow.lightgbm
    import pandas as pd

    with warnings.catch_warnings():
        # MLflow's pyfunc module warns about its own type hints when first imported: noise
        warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType")
        import mlflow.pyfunc
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema

    tracking.configure(paths.root)
    lock_file = paths.root / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text()) if lock_file.exists() else {}
    inputs = ["features", "data/population/outcomes.parquet", "data/truth"]
    tags = {
        "target": target,
        "stage": "train",
        "git_commit": _git_commit(paths.root),
        tracking.MODEL_DIGEST_TAG: tracking.model_digest(model_dir / "model.txt"),
        **{
            f"dvc.input.{path}": md5
            for path, md5 in dvc_input_hashes(
                lock or {}, inputs, tracked=_dvc_tracked(paths.root)
            ).items()
        },
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    # object-dtype column labels: MLflow 3.17 compares labels with a range, which pandas 3
    # deprecates for its default string dtype
    example_frame = pd.DataFrame(
        example.reshape(1, -1).astype(np.float64), columns=pd.Index(spec.names, dtype=object)
    )
    signature = infer_signature(example_frame, booster.predict(example_frame.to_numpy()))
    schema = Schema(
        [ColSpec("double", name) for name in spec.names] + [ColSpec("integer", "outcome")]
    )
    # MLflow registers the local source class twice; pick it directly (resolving it warns).
    local_source = next(
        source for source in get_registered_sources() if source._get_source_type() == "local"
    )
    dataset = MetaDataset(
        source=local_source(str(paths.features / "features.parquet")),
        name=f"{target}-train",
        digest=dataset_digest[:20],
        schema=schema,
    )
    name = f"phm-{target}"
    with mlflow.start_run(run_name=target) as run:
        mlflow.log_params(_flat_params(params, target))
        mlflow.set_tags(tags)
        mlflow.log_input(dataset, context="training")
        tracking.log_flat_metrics({k: v for k, v in metrics.items() if k != "target"})
        info = mlflow.lightgbm.log_model(
            lgb_model=booster,
            name="model",
            signature=signature,
            input_example=example_frame,
            pip_requirements=[f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}"],
            registered_model_name=name,
        )
        for artifact in ("metrics.json", "feature_importance.json", "model_card.md"):
            mlflow.log_artifact(str(model_dir / artifact))
        # isotonic thresholds are individual people's raw scores: MLflow gets the method, the
        # sigmoid coefficients and the Brier scores only (calibration.json stays under models/)
        calibration = io.read_json(model_dir / "calibration.json")
        mlflow.log_text(
            io.dumps_json({k: v for k, v in calibration.items() if k not in {"x", "y"}}),
            "calibration_summary.json",
        )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, REGISTERED_ALIAS, version)
        return run.info.run_id


# --- Stage ---------------------------------------------------------------------------------------


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Train, calibrate, evaluate, score and register the model for one target."""
    if target not in params.targets:
        raise StageError(f"unknown target {target!r}")
    features_file = paths.features / "features.parquet"
    manifest_file = paths.features / "manifest.json"
    for needed in (features_file, manifest_file):
        if not needed.exists():
            raise StageError(f"{needed}: missing - run the features stage first")
    spec = feature_spec(contract.read_manifest(manifest_file))
    unit = selection.unit_column(params.operating_point.capacity_mode)
    group_columns = [] if unit is None else [unit]
    try:
        outcomes = io.scan_table(paths.population, "outcomes")
    except FileNotFoundError as error:
        raise StageError(str(error)) from None
    features = pl.scan_parquet(features_file)
    present = features.collect_schema()
    missing = [c for c in ("person_id", "split", *spec.names, *group_columns) if c not in present]
    if missing:
        raise ContractError(f"{features_file}: missing columns {missing}")
    cohort = cohort_frame(
        features, outcomes, target=target, columns=[*spec.names, *group_columns]
    ).collect()
    check_cohort(cohort, target=target, source=str(paths.population / "outcomes"))

    x_all = feature_matrix(cohort, spec)
    y_all = cohort.get_column("outcome").to_numpy().astype(np.float64)
    split = cohort.get_column("split").to_numpy()
    train_rows = np.flatnonzero(split == "train")
    train_rows = train_rows[
        sample_rows(
            train_rows.size,
            max_rows=params.train.max_train_rows,
            seed=seeds.derive("train", target, "train_sample", root=params.seed),
        )
    ]
    valid_rows = np.flatnonzero(split == "validation")
    test_rows = np.flatnonzero(split == "test")
    if test_rows.size == 0:
        raise StageError(f"{target}: the test split is empty")

    weight = class_weight(y_all[train_rows], mode=params.train.class_weighting)
    booster = fit_booster(
        x_all[train_rows],
        y_all[train_rows],
        x_all[valid_rows],
        y_all[valid_rows],
        spec=spec,
        params=lightgbm_params(
            params.train,
            seed=seeds.derive("train", target, "lightgbm", root=params.seed),
            scale_pos_weight=weight,
        ),
        n_estimators=params.train.n_estimators,
        early_stopping_rounds=params.train.early_stopping_rounds,
    )
    raw = predict_raw(booster, x_all)
    calibration = fit_calibration(
        raw[valid_rows],
        y_all[valid_rows],
        mode=params.train.calibration,
        seed=seeds.derive("train", target, "calibration_folds", root=params.seed),
    )
    risk = apply_calibration(calibration, raw)

    scores = rank_scores(
        cohort.select("person_id", "split", "outcome").with_columns(
            pl.Series("risk_score", risk, dtype=pl.Float64)
        )
    )
    selected = selected_at_capacity(
        scores.hstack(cohort.select(group_columns)) if group_columns else scores,
        params.operating_point,
    ).to_numpy()

    oracle = None
    oracle_file = paths.truth / "oracle.parquet"
    if oracle_file.exists():
        oracle_risk = (
            cohort.select("person_id")
            .join(
                pl.scan_parquet(oracle_file)
                .filter(pl.col("target") == target)
                .select("person_id", "oracle_risk")
                .collect(),
                on="person_id",
                how="left",
                maintain_order="left",
            )
            .get_column("oracle_risk")
            .to_numpy()[test_rows]
        )
        if np.isnan(oracle_risk).any():
            raise ContractError(
                f"{oracle_file}: {int(np.isnan(oracle_risk).sum())} test-split people of "
                f"{target!r} have no oracle_risk"
            )
        oracle = oracle_risk

    y_test, p_test, sel_test = y_all[test_rows], risk[test_rows], selected[test_rows]
    estimates = evaluate(
        y_test,
        p_test,
        sel_test,
        oracle=oracle,
        n_bootstrap=params.train.n_bootstrap,
        seed=seeds.derive("train", target, "bootstrap", root=params.seed),
    )
    metrics = metrics_document(
        estimates,
        target=target,
        n_test=int(y_test.size),
        n_test_events=int(y_test.sum()),
        n_selected=int(sel_test.sum()),
        n_selected_events=int((sel_test * y_test).sum()),
        extra={
            "best_iteration": booster.current_iteration(),
            "calibration_method": calibration["method"],
            "class_weighting": params.train.class_weighting,
            "capacity_mode": params.operating_point.capacity_mode,
            "capacity": params.operating_point.capacity,
            "n_cohort": disclosure.round_count(cohort.height),
            "n_train_rows": disclosure.round_count(int(train_rows.size)),
        },
    )
    external_rows = np.flatnonzero(split == "external")
    if external_rows.size:
        metrics |= external_metrics(
            y_all[external_rows],
            risk[external_rows],
            selected[external_rows],
            n_bootstrap=params.train.n_bootstrap,
            seed=seeds.derive("train", target, "external_bootstrap", root=params.seed),
        )

    shap_rows = sample_rows(
        test_rows.size,
        max_rows=SHAP_SAMPLE_ROWS,
        seed=seeds.derive("train", target, "shap_sample", root=params.seed),
    )
    importance = feature_importance(booster, x_all[test_rows[shap_rows]], spec)
    model_dir = paths.models / target
    card = model_card(
        target=target,
        target_params=params.targets[target],
        params=params,
        metrics=metrics,
        calibration=calibration,
        importance=importance,
        n_cohort=cohort.height,
        n_train_rows=int(train_rows.size),
    )
    curves = curve_frames(y_test, p_test)

    # All outputs are computed; write them (each atomically), then log the run.
    io.write_text(booster.model_to_string(), model_dir / "model.txt")
    io.write_json(calibration, model_dir / "calibration.json")
    io.write_json(metrics, model_dir / "metrics.json")
    io.write_json(
        {
            "target": target,
            "n_shap_rows": disclosure.round_count(int(shap_rows.size)),
            "features": importance,
        },
        model_dir / "feature_importance.json",
    )
    io.write_text(card, model_dir / "model_card.md")
    for name, frame in curves.items():
        io.write_text(frame.write_csv(float_precision=6), model_dir / "plots" / f"{name}.csv")
    io.write_parquet(scores, paths.scores / f"{target}.parquet", sort_by="person_id")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no median
        example = np.nanmedian(x_all[train_rows], axis=0)
    example = np.where(np.isnan(example), 0.0, example)
    log_to_mlflow(
        params=params,
        paths=paths,
        target=target,
        spec=spec,
        booster=booster,
        example=example,
        metrics=metrics,
        model_dir=model_dir,
        dataset_digest=_file_digest(
            features_file, manifest_file, *sorted(paths.population.glob("outcomes*.parquet"))
        ),
    )
