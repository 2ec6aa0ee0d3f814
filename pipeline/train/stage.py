"""The train stage for one target: the pure steps in order, and ``run`` (IO only)."""

from __future__ import annotations

import datetime as dt
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np
import polars as pl

from pipeline import console, contract, engine, headline, io, seeds, selection
from pipeline.disclosure import Rule
from pipeline.errors import ContractError, StageError
from pipeline.train import batches, card, evaluation, fit, importance, plots, registry, scoring
from pipeline.train import calibration as calibration_mod
from pipeline.train.cohort import (
    FeatureSpec,
    Splits,
    check_cohort,
    cohort_frame,
    feature_spec,
    oracle_risk,
    read_outcomes,
    sample_rows,
    split_index,
    split_rows,
)

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.config import OperatingPointParams, Params, TargetParams, TrainParams

SHAP_ROWS: Final = 20_000
"""Test-split people (a seeded sample) whose SHAP values give the mean |SHAP| importance."""
EXAMPLE_ROWS: Final = 100_000
"""Training rows (evenly spaced) whose medians make MLflow's input example."""


@dataclass(frozen=True)
class TargetRun:
    """The parameters one target's training uses (sections of ``Params``, not all of it)."""

    train: TrainParams
    operating_point: OperatingPointParams
    target_params: TargetParams
    index_date: dt.date
    seed: int
    unit: list[str]  # the capacity unit column (icb_code / practice_id), if any
    disclosure: Rule

    @classmethod
    def of(cls, params: Params, target: str) -> TargetRun:
        """The sections of ``params`` for ``target``."""
        unit = selection.unit_column(params.operating_point.capacity_mode)
        return cls(
            train=params.train,
            operating_point=params.operating_point,
            target_params=params.targets[target],
            index_date=params.index_date,
            seed=params.seed,
            unit=[] if unit is None else [unit],
            disclosure=params.disclosure,
        )


@dataclass(frozen=True)
class FitInputs:
    """The model inputs a fit reads, row for row: the train sample, the early-stopping rows
    and, for a distributed fit, every training row. Each set is read on its own (no gathered
    copies of a union), and only the fit holds them: scoring reads its own batches."""

    train: np.ndarray
    early_stopping: np.ndarray
    distributed: np.ndarray | None = None
    distributed_rows: np.ndarray | None = None
    """The cohort rows of ``distributed`` (every training row), for their outcomes."""


def read_fit_inputs(
    features_path: Path,
    keys: pl.DataFrame,
    rows: Splits,
    spec: FeatureSpec,
    *,
    distributed: np.ndarray | None = None,
) -> FitInputs:
    """The :class:`FitInputs` of ``rows`` (and of the ``distributed`` rows, if any), read ICB
    by ICB from ``features_path``; ``keys``: the cohort's (:func:`pipeline.batches.batch_keys`)."""
    features = pl.scan_parquet(features_path)

    def read(part: np.ndarray) -> np.ndarray:
        return batches.model_inputs_in_batches(features, keys[part], spec)

    return FitInputs(
        train=read(rows.train),
        early_stopping=read(rows.early_stopping),
        distributed=None if distributed is None else read(distributed),
        distributed_rows=distributed,
    )


@dataclass(frozen=True)
class Fitted:
    """The fitted model, its calibration, the calibrated risk of every cohort member, the
    fit's wall seconds (logged to MLflow only: timings are not outputs) and MLflow's input
    example (:func:`training_example`)."""

    booster: lgb.Booster
    calibration: dict[str, Any]
    risk: np.ndarray
    fit_seconds: float
    example: np.ndarray


@dataclass(frozen=True)
class Batching:
    """Where and how every cohort member is scored (:mod:`pipeline.train.batches`)."""

    features_path: Path
    client: Client | None
    batch_rows: int = batches.BATCH_ROWS


def fit_model(
    cohort: pl.DataFrame,
    inputs: FitInputs,
    rows: Splits,
    *,
    spec: FeatureSpec,
    train: TrainParams,
    target: str,
    root_seed: int,
    batching: Batching,
) -> Fitted:
    """Fit LightGBM on the train rows (early stopping on the validation split's early-stopping
    rows), score every cohort member in batches, then fit the calibration on every validation
    row's score.

    With ``inputs.distributed`` (``train.distributed``: every training row), the early-stopped
    fit on the sample only sets the number of rounds, and the model is refitted on those rows
    through ``lightgbm.dask`` on ``batching.client``
    (:func:`pipeline.train.fit.distributed_booster`).

    Pass ``inputs`` inline (``fit_model(cohort, read_fit_inputs(...), ...)``): this function
    then holds the only reference and drops it once fitted, so the fit's inputs are freed
    before every cohort member is scored.
    """
    y = cohort["outcome"].to_numpy().astype(np.float64)
    example = training_example(inputs.train)
    booster_params = fit.lightgbm_params(
        train,
        seed=seeds.derive("train", target, "lightgbm", root=root_seed),
        scale_pos_weight=fit.class_weight(y[rows.train], mode=train.class_weighting),
    )
    started = time.perf_counter()
    booster = fit.fit_booster(
        inputs.train,
        y[rows.train],
        inputs.early_stopping,
        y[rows.early_stopping],
        spec=spec,
        params=booster_params,
        n_estimators=train.n_estimators,
        early_stopping_rounds=train.early_stopping_rounds,
    )
    if (
        inputs.distributed is not None
        and inputs.distributed_rows is not None
        and batching.client is not None
    ):
        booster = fit.distributed_booster(
            inputs.distributed,
            y[inputs.distributed_rows],
            spec=spec,
            params=booster_params,
            n_rounds=booster.current_iteration(),
            time_out=train.time_out,
            client=batching.client,
        )
    fit_seconds = time.perf_counter() - started
    del inputs  # the only reference (see above): scoring must not hold the fit's inputs too
    raw = batches.score_in_batches(
        batches.batch_keys(cohort),
        features_path=batching.features_path,
        spec=spec,
        booster=booster,
        client=batching.client,
        batch_rows=batching.batch_rows,
    )
    calibration = calibration_mod.fit_calibration(
        raw[rows.validation],
        y[rows.validation],
        mode=train.calibration,
        seed=seeds.derive("train", target, "calibration_folds", root=root_seed),
    )
    risk = calibration_mod.apply_calibration(calibration, raw)
    return Fitted(booster, calibration, risk, fit_seconds, example)


def model_metrics(
    y: np.ndarray,
    fitted: Fitted,
    selected: np.ndarray,
    rows: Splits,
    *,
    oracle: np.ndarray | None,
    train: TrainParams,
    operating_point: OperatingPointParams,
    target: str,
    root_seed: int,
    n_cohort: int,
    n_train_rows: int,
    rule: Rule,
) -> dict[str, Any]:
    """``metrics.json``: test-split metrics with CIs (and the held-out ICB's, if any)."""
    test = rows.test
    metrics = evaluation.split_metrics(
        y[test],
        fitted.risk[test],
        selected[test],
        oracle=oracle,
        n_bootstrap=train.n_bootstrap,
        seed=seeds.derive("train", target, "bootstrap", root=root_seed),
        target=target,
        extra={
            "best_iteration": fitted.booster.current_iteration(),
            "calibration_method": fitted.calibration["method"],
            "class_weighting": train.class_weighting,
            "capacity_mode": operating_point.capacity_mode,
            "capacity": operating_point.capacity,
            "n_cohort": rule.count(n_cohort),
            "n_train_rows": rule.count(n_train_rows),
        },
        rule=rule,
        threads=train.num_threads,
    )
    if rows.external.size:
        metrics |= evaluation.external_metrics(
            y[rows.external],
            fitted.risk[rows.external],
            selected[rows.external],
            n_bootstrap=train.n_bootstrap,
            seed=seeds.derive("train", target, "external_bootstrap", root=root_seed),
            rule=rule,
            threads=train.num_threads,
        )
    return metrics


def training_example(x_train: np.ndarray, *, max_rows: int = EXAMPLE_ROWS) -> np.ndarray:
    """A synthetic input row for MLflow: the medians of at most ``max_rows`` evenly spaced
    training rows (0 for an all-missing column)."""
    step = max(1, -(-x_train.shape[0] // max_rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no median
        example = np.nanmedian(x_train[::step], axis=0)
    return np.where(np.isnan(example), 0.0, example)


def read_cohort(
    paths: io.Paths,
    *,
    target: str,
    extra_columns: list[str],
    outcomes: tuple[pl.LazyFrame, str],
) -> tuple[pl.DataFrame, FeatureSpec]:
    """The checked cohort of ``target`` (person_id, split, outcome, ``extra_columns`` and
    icb_code when the features have it; no model inputs) and its spec;
    ``outcomes``: the target's outcomes and where they came from (``cohort.read_outcomes``)."""
    features_file = paths.features / "features.parquet"
    manifest_file = paths.features / "manifest.json"
    for needed in (features_file, manifest_file):
        if not needed.exists():
            raise StageError(f"{needed}: missing - run the features stage first")
    spec = feature_spec(contract.read_manifest(manifest_file))
    table, source = outcomes
    features = pl.scan_parquet(features_file)
    present = features.collect_schema()
    needed_columns = ("person_id", "split", *spec.names, *extra_columns)
    missing = [c for c in needed_columns if c not in present]
    if missing:
        raise ContractError(f"{features_file}: missing columns {missing}")
    # only the key columns of everyone; model inputs are read for the rows a fit needs and
    # batch by batch for scoring (pipeline.train.batches), so memory stays flat in N
    keys = [c for c in (batches.ICB,) if c in present and c not in extra_columns]
    columns = [*extra_columns, *keys]
    cohort = cohort_frame(features, table, target=target, columns=columns).collect()
    check_cohort(cohort, target=target, source=source)
    return cohort, spec


def input_files(paths: io.Paths) -> list[Path]:
    """The files the stage reads (tagged with their sha256 in MLflow)."""
    files = [paths.features / "features.parquet", paths.features / "manifest.json"]
    files += sorted(paths.population.glob("outcomes*.parquet"))
    return files + [file for file in (paths.truth / "oracle.parquet",) if file.exists()]


def score_cohort(
    cohort: pl.DataFrame,
    risk: np.ndarray,
    *,
    unit: list[str],
    operating_point: OperatingPointParams,
    root_seed: int,
) -> tuple[pl.DataFrame, np.ndarray]:
    """The scores table of the whole cohort and who the operating point selects (ranked on the
    whole cohort, per ``unit`` in the per-ICB / per-practice modes)."""
    scores = scoring.rank_scores(
        cohort.select("person_id", "split", "outcome").with_columns(risk_score=risk),
        root_seed=root_seed,
    )
    selected = scoring.selected_at_capacity(
        scores.hstack(cohort.select(unit)),
        capacity_mode=operating_point.capacity_mode,
        capacity=operating_point.capacity,
    )
    return scores, selected.to_numpy()


@dataclass(frozen=True)
class Trained:
    """Everything the stage writes for one target."""

    fitted: Fitted
    scores: pl.DataFrame
    metrics: dict[str, Any]
    importance: dict[str, Any]
    card: str
    curves: dict[str, pl.DataFrame]


def train_target(
    cohort: pl.DataFrame,
    spec: FeatureSpec,
    *,
    target: str,
    params: TargetRun,
    oracle: pl.LazyFrame | None,
    batching: Batching,
    distributed: bool = False,
) -> Trained:
    """Fit, calibrate, score, evaluate and explain the model of one target (no files written).

    ``cohort``: :func:`read_cohort`'s; the model inputs are read from ``batching.features_path``
    for the rows a fit needs (:func:`read_fit_inputs`), and batch by batch for scoring.
    ``distributed``: fit on every training row on ``batching.client`` (``train.distributed``).
    """
    train, point, seed = params.train, params.operating_point, params.seed
    y = cohort["outcome"].to_numpy().astype(np.float64)
    rows = split_rows(
        cohort["split"],
        max_train_rows=train.max_train_rows,
        max_validation_rows=train.max_validation_rows,
        sample_seed=seeds.derive("train", target, "train_sample", root=seed),
        stopping_seed=seeds.derive("train", target, "early_stopping_sample", root=seed),
        target=target,
    )
    every_train_row = None
    if distributed:
        every_train_row = split_index(cohort["split"], "train")
    n_train_rows = int((rows.train if every_train_row is None else every_train_row).size)
    shap_seed = seeds.derive("train", target, "shap_sample", root=seed)
    shap_rows = rows.test[sample_rows(rows.test.size, max_rows=SHAP_ROWS, seed=shap_seed)]
    keys = batches.batch_keys(cohort)
    fitted = fit_model(
        cohort,
        read_fit_inputs(batching.features_path, keys, rows, spec, distributed=every_train_row),
        rows,
        spec=spec,
        train=train,
        target=target,
        root_seed=seed,
        batching=batching,
    )
    console.record_timing("train", "fit", fitted.fit_seconds, target=target, rows=n_train_rows)
    scores, selected = score_cohort(
        cohort, fitted.risk, unit=params.unit, operating_point=point, root_seed=seed
    )
    test_oracle = None
    if oracle is not None:
        test_oracle = oracle_risk(cohort["person_id"][rows.test], oracle, target=target)
    metrics = model_metrics(
        y,
        fitted,
        selected,
        rows,
        oracle=test_oracle,
        train=train,
        operating_point=point,
        target=target,
        root_seed=seed,
        n_cohort=cohort.height,
        n_train_rows=n_train_rows,
        rule=params.disclosure,
    )
    shap_inputs = batches.model_inputs_in_batches(
        pl.scan_parquet(batching.features_path), keys[shap_rows], spec
    )
    ranked = importance.feature_importance(fitted.booster, shap_inputs, spec)
    model_card = card.model_card(
        target=target,
        target_params=params.target_params,
        train=train,
        operating_point=point,
        index_date=params.index_date,
        metrics=metrics,
        calibration_method=fitted.calibration["method"],
        importance=ranked,
        n_cohort=cohort.height,
        n_train_rows=n_train_rows,
        rule=params.disclosure,
    )
    importance_doc = {
        "target": target,
        "n_shap_rows": params.disclosure.count(int(shap_rows.size)),
        "features": ranked,
    }
    curves = plots.curve_frames(y[rows.test], fitted.risk[rows.test])
    return Trained(fitted, scores, metrics, importance_doc, model_card, curves)


def write_outputs(trained: Trained, paths: io.Paths, *, target: str) -> Path:
    """Write every output of one target (each file atomically); returns the model folder."""
    model_dir = paths.models / target
    io.write_text(trained.fitted.booster.model_to_string(), model_dir / "model.txt")
    io.write_json(trained.fitted.calibration, model_dir / "calibration.json")
    io.write_json(trained.metrics, model_dir / "metrics.json")
    io.write_json(trained.importance, model_dir / "feature_importance.json")
    io.write_text(trained.card, model_dir / "model_card.md")
    headline.write_headline(
        trained.metrics,
        keys=headline.TRAIN_HEADLINE,
        root=paths.root,
        target=target,
        name="train.json",
    )
    for name, frame in trained.curves.items():
        csv = frame.write_csv(float_precision=6)
        io.write_text(csv, headline.plots_folder(paths.root, target) / f"{name}.csv")
    io.write_parquet(trained.scores, paths.scores / f"{target}.parquet", sort_by="person_id")
    return model_dir


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Train, calibrate, evaluate, score and register the model for one target."""
    if target not in params.targets:
        raise StageError(f"unknown target {target!r}")
    run_params = TargetRun.of(params, target)
    registry.prepare(root=paths.root, target=target)  # fails fast when the store is down
    cohort, spec = read_cohort(
        paths,
        target=target,
        extra_columns=run_params.unit,
        outcomes=read_outcomes(paths, params, target=target),
    )
    oracle_file = paths.truth / "oracle.parquet"
    oracle = pl.scan_parquet(oracle_file) if oracle_file.exists() else None
    with engine.connect_for(params) as client:
        trained = train_target(
            cohort,
            spec,
            target=target,
            params=run_params,
            oracle=oracle,
            batching=Batching(paths.features / "features.parquet", client),
            distributed=params.train.distributed,
        )
    model_dir = write_outputs(trained, paths, target=target)
    registry.log_to_mlflow(
        root=paths.root,
        target=target,
        params=registry.flat_params(
            train=run_params.train,
            target_params=run_params.target_params,
            seed=run_params.seed,
            index_date=run_params.index_date,
            operating_point=run_params.operating_point,
        ),
        spec=spec,
        example=trained.fitted.example,
        metrics=trained.metrics,
        model_dir=model_dir,
        inputs=input_files(paths),
        timings={"fit_seconds": trained.fitted.fit_seconds},
    )
    console.stage_done(
        "train",
        target=target,
        did=f"{console.count(cohort.height)} people, {trained.metrics['best_iteration']} trees",
        figure=console.figures(trained.metrics, ("auroc", "AUROC"), ("oe_ratio", "O/E")),
    )
