"""The train stage for one target: the pure steps in order, and ``run`` (IO only)."""

from __future__ import annotations

import datetime as dt
import time
import warnings
from collections.abc import Iterator
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
    CohortCounts,
    CohortSlices,
    FeatureSpec,
    Samples,
    check_counts,
    cohort_counts,
    draw_samples,
    feature_spec,
    gather_samples,
    in_sample,
    oracle_risk,
    plan_slices,
    read_outcomes,
    with_split_position,
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
    """The model inputs and outcomes a fit reads, row for row: the train sample, the
    early-stopping rows and, for a distributed fit, every training row. Each set is read on its
    own (no gathered copies of a union), and only the fit holds them: scoring reads its own
    batches."""

    train: np.ndarray
    y_train: np.ndarray
    early_stopping: np.ndarray
    y_early_stopping: np.ndarray
    distributed: np.ndarray | None = None
    y_distributed: np.ndarray | None = None


def _outcomes(people: pl.DataFrame) -> np.ndarray:
    return people["outcome"].to_numpy().astype(np.float64)


def read_fit_inputs(
    features_path: Path, people: dict[str, pl.DataFrame], spec: FeatureSpec
) -> FitInputs:
    """The :class:`FitInputs` of the gathered samples ``people`` (``train``,
    ``early_stopping`` and, if present, ``distributed``), read ICB by ICB from
    ``features_path``."""
    features = pl.scan_parquet(features_path)

    def read(name: str) -> np.ndarray:
        return batches.model_inputs_in_batches(features, batches.batch_keys(people[name]), spec)

    distributed = people.get("distributed")
    return FitInputs(
        train=read("train"),
        y_train=_outcomes(people["train"]),
        early_stopping=read("early_stopping"),
        y_early_stopping=_outcomes(people["early_stopping"]),
        distributed=None if distributed is None else read("distributed"),
        y_distributed=None if distributed is None else _outcomes(distributed),
    )


@dataclass(frozen=True)
class Fitted:
    """The fitted model, its calibration (set once the validation rows are scored), the fit's
    wall seconds (logged to MLflow only: timings are not outputs) and MLflow's input example
    (:func:`training_example`)."""

    booster: lgb.Booster
    calibration: dict[str, Any]
    fit_seconds: float
    example: np.ndarray


@dataclass(frozen=True)
class Batching:
    """Where and how every cohort member is scored (:mod:`pipeline.train.batches`)."""

    features_path: Path
    client: Client | None
    batch_rows: int = batches.BATCH_ROWS


def fit_model(
    inputs: FitInputs,
    *,
    spec: FeatureSpec,
    train: TrainParams,
    target: str,
    root_seed: int,
    client: Client | None,
) -> tuple[lgb.Booster, float, np.ndarray]:
    """Fit LightGBM on the train rows (early stopping on the early-stopping rows); the booster,
    the fit's wall seconds and MLflow's input example.

    With ``inputs.distributed`` (``train.distributed``: every training row), the early-stopped
    fit on the sample only sets the number of rounds, and the model is refitted on those rows
    through ``lightgbm.dask`` on ``client`` (:func:`pipeline.train.fit.distributed_booster`).

    Pass ``inputs`` inline (``fit_model(read_fit_inputs(...), ...)``): this function then holds
    the only reference, so the fit's inputs are freed before every cohort member is scored.
    """
    example = training_example(inputs.train)
    booster_params = fit.lightgbm_params(
        train,
        seed=seeds.derive("train", target, "lightgbm", root=root_seed),
        scale_pos_weight=fit.class_weight(inputs.y_train, mode=train.class_weighting),
    )
    started = time.perf_counter()
    booster = fit.fit_booster(
        inputs.train,
        inputs.y_train,
        inputs.early_stopping,
        inputs.y_early_stopping,
        spec=spec,
        params=booster_params,
        n_estimators=train.n_estimators,
        early_stopping_rounds=train.early_stopping_rounds,
    )
    if inputs.distributed is not None and inputs.y_distributed is not None and client is not None:
        booster = fit.distributed_booster(
            inputs.distributed,
            inputs.y_distributed,
            spec=spec,
            params=booster_params,
            n_rounds=booster.current_iteration(),
            time_out=train.time_out,
            client=client,
        )
    fit_seconds = time.perf_counter() - started
    return booster, fit_seconds, example


RAW_SCORE: Final = "raw_score"


def score_slices(
    slices: CohortSlices,
    counts: CohortCounts,
    folder: Path,
    *,
    booster: lgb.Booster,
    spec: FeatureSpec,
    batching: Batching,
    unit: list[str],
    calibration_positions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Score every cohort member slice by slice (each slice's batches on the engine) and write
    each slice as a part in ``folder`` (person_id, split, outcome, ``split_position``, the
    capacity ``unit`` and the uncalibrated ``raw_score``); returns the raw scores and outcomes
    of the calibration sample's validation rows, in their order."""
    raw_rows, outcomes = [], []
    for index in range(len(slices)):
        people = with_split_position(slices.read(index), counts, index)
        raw = batches.score_in_batches(
            batches.batch_keys(people),
            features_path=batching.features_path,
            spec=spec,
            booster=booster,
            client=batching.client,
            batch_rows=batching.batch_rows,
        )
        part = people.select("person_id", "split", "outcome", "split_position", *unit).with_columns(
            pl.Series(RAW_SCORE, raw, dtype=pl.Float64)
        )
        part.write_parquet(folder / io.part_name(slices.bounds[index][0]))
        chosen = part.filter(in_sample("validation", calibration_positions))
        raw_rows.append(chosen[RAW_SCORE].to_numpy())
        outcomes.append(_outcomes(chosen))
    return np.concatenate(raw_rows), np.concatenate(outcomes)


def calibrated_parts(
    raw_parts: list[Path], folder: Path, *, calibration: dict[str, Any], root_seed: int
) -> list[Path]:
    """Each raw part calibrated (:func:`pipeline.train.calibration.apply_calibration`) as a part
    of :func:`pipeline.train.scoring.write_ranked_scores` in ``folder``."""
    written = []
    for raw_part in raw_parts:
        part = pl.read_parquet(raw_part, columns=["person_id", "split", "outcome", RAW_SCORE])
        risk = calibration_mod.apply_calibration(calibration, part[RAW_SCORE].to_numpy())
        scored = scoring.scored_part(part.drop(RAW_SCORE), risk, root_seed=root_seed)
        scored.write_parquet(folder / raw_part.name)
        written.append(folder / raw_part.name)
    return written


@dataclass(frozen=True)
class Evaluated:
    """The people the metrics read, in cohort order: outcome, calibrated risk and whether the
    operating point selects them (``selected``), for the test sample and the held-out ICB."""

    test: pl.DataFrame
    external: pl.DataFrame


def evaluated_rows(
    scores: Path,
    raw_parts: list[Path],
    *,
    samples: Samples,
    unit: list[str],
    operating_point: OperatingPointParams,
) -> Evaluated:
    """The test sample's and the held-out ICB's people with ``selected`` at the operating point,
    ranked on the whole cohort (per unit), folded part by part from the scores file's ranks
    (:func:`pipeline.train.scoring.selected_rows`): only list-sized candidates are held."""
    mode = operating_point.capacity_mode
    sizes = pl.concat([pl.scan_parquet(part).select("person_id", *unit) for part in raw_parts])
    capacity = selection.list_sizes(
        sizes, capacity_mode=mode, capacity=operating_point.capacity, key="operating_point.capacity"
    )
    kept: dict[str, list[pl.DataFrame]] = {"test": [], "external": []}

    def ranks() -> Iterator[pl.DataFrame]:
        start = 0
        for raw_part in raw_parts:
            part = pl.read_parquet(
                raw_part, columns=["person_id", "split", "split_position", *unit]
            )
            ranked = (
                pl.scan_parquet(scores)
                .slice(start, part.height)
                .select("person_id", "outcome", "risk_score", "risk_rank")
                .collect()
            )
            if not ranked["person_id"].equals(part["person_id"]):  # both sorted by person_id
                raise StageError(f"{scores}: rows from {start} are not the cohort's, in order")
            rows = ranked.hstack(part.drop("person_id")).with_columns(
                (pl.int_range(pl.len()) + start).alias("row")
            )
            for name, found in kept.items():
                chosen = in_sample(samples.split_of(name), samples.positions[name])
                found.append(rows.filter(chosen).select("row", "outcome", "risk_score"))
            start += part.height
            yield rows.select("row", "risk_rank", *unit)

    selected = scoring.selected_rows(ranks(), capacity, capacity_mode=mode)
    frames = {
        name: pl.concat(parts).with_columns(
            pl.col("row").is_in(selected.implode()).alias("selected")
        )
        for name, parts in kept.items()
    }
    return Evaluated(test=frames["test"], external=frames["external"])


def model_metrics(
    evaluated: Evaluated,
    fitted: Fitted,
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
    test = evaluated.test
    metrics = evaluation.split_metrics(
        _outcomes(test),
        test["risk_score"].to_numpy(),
        test["selected"].to_numpy(),
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
    external = evaluated.external
    if external.height:
        metrics |= evaluation.external_metrics(
            _outcomes(external),
            external["risk_score"].to_numpy(),
            external["selected"].to_numpy(),
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
) -> tuple[CohortSlices, CohortCounts, FeatureSpec]:
    """The checked cohort of ``target`` as slices (person_id, split, outcome, ``extra_columns``
    and icb_code when the features have it; no model inputs), its counts and its spec;
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
    # only the key columns, a slice at a time; model inputs are read for the rows a fit needs
    # and batch by batch for scoring (pipeline.train.batches), so memory stays flat in N
    keys = [c for c in (batches.ICB,) if c in present and c not in extra_columns]
    slices = plan_slices(features_file, table, target=target, columns=[*extra_columns, *keys])
    counts = cohort_counts(slices)
    check_counts(counts, target=target, source=source)
    return slices, counts, spec


def input_files(paths: io.Paths) -> list[Path]:
    """The files the stage reads (tagged with their sha256 in MLflow)."""
    files = [paths.features / "features.parquet", paths.features / "manifest.json"]
    files += sorted(paths.population.glob("outcomes*.parquet"))
    return files + [file for file in (paths.truth / "oracle.parquet",) if file.exists()]


def sample_caps(
    train: TrainParams, *, target: str, root_seed: int
) -> tuple[dict[str, int], dict[str, int]]:
    """Each sample's cap and seed (:func:`pipeline.train.cohort.draw_samples`)."""
    caps = {
        "train": train.max_train_rows,
        "early_stopping": train.max_validation_rows,
        "calibration": train.max_calibration_rows,
        "test": train.max_test_rows,
        "shap": SHAP_ROWS,
    }
    purposes = {
        "train": "train_sample",
        "early_stopping": "early_stopping_sample",
        "calibration": "calibration_sample",
        "test": "test_sample",
        "shap": "shap_sample",
    }
    return caps, {
        name: seeds.derive("train", target, purpose, root=root_seed)
        for name, purpose in purposes.items()
    }


@dataclass(frozen=True)
class Trained:
    """Everything the stage writes for one target besides the scores file."""

    fitted: Fitted
    metrics: dict[str, Any]
    importance: dict[str, Any]
    card: str
    curves: dict[str, pl.DataFrame]


def scores_of_cohort(
    slices: CohortSlices,
    counts: CohortCounts,
    booster: lgb.Booster,
    *,
    scores_path: Path,
    samples: Samples,
    spec: FeatureSpec,
    params: TargetRun,
    target: str,
    batching: Batching,
) -> tuple[dict[str, Any], Evaluated]:
    """Score, calibrate and rank every cohort member into ``scores_path`` (ranked on disk:
    :func:`pipeline.train.scoring.write_ranked_scores`) and return the calibration and the
    people the metrics read (:func:`evaluated_rows`). Every per-person table is a part on disk
    (in a private temporary folder removed afterwards); the stage holds a slice."""
    train, seed = params.train, params.seed
    with io.atomic_path(scores_path) as tmp:
        raw_folder, scored_folder = tmp.parent / "raw", tmp.parent / "scored"
        raw_folder.mkdir(mode=0o700)
        scored_folder.mkdir(mode=0o700)
        raw, y = score_slices(
            slices,
            counts,
            raw_folder,
            booster=booster,
            spec=spec,
            batching=batching,
            unit=params.unit,
            calibration_positions=samples.positions["calibration"],
        )
        calibration = calibration_mod.fit_calibration(
            raw,
            y,
            mode=train.calibration,
            seed=seeds.derive("train", target, "calibration_folds", root=seed),
        )
        del raw, y
        raw_parts = sorted(raw_folder.glob("*.parquet"))
        scoring.write_ranked_scores(
            calibrated_parts(raw_parts, scored_folder, calibration=calibration, root_seed=seed),
            tmp,
            n_people=counts.n_people,
            spill=tmp.parent / "spill",
            threads=train.num_threads,
        )
        evaluated = evaluated_rows(
            tmp,
            raw_parts,
            samples=samples,
            unit=params.unit,
            operating_point=params.operating_point,
        )
    return calibration, evaluated


def train_target(
    slices: CohortSlices,
    counts: CohortCounts,
    spec: FeatureSpec,
    *,
    target: str,
    params: TargetRun,
    oracle: pl.LazyFrame | None,
    batching: Batching,
    scores_path: Path,
    distributed: bool = False,
) -> Trained:
    """Fit, calibrate, score, evaluate and explain the model of one target; writes the scores
    file (``scores_path``, :func:`scores_of_cohort`), returns everything else.

    ``slices``, ``counts``: :func:`read_cohort`'s; the model inputs are read from
    ``batching.features_path`` for the samples a fit needs (:func:`read_fit_inputs`), and
    batch by batch for scoring. ``distributed``: fit on every training row on
    ``batching.client`` (``train.distributed``).
    """
    train, point, seed = params.train, params.operating_point, params.seed
    caps, sample_seeds = sample_caps(train, target=target, root_seed=seed)
    samples = draw_samples(
        counts, caps=caps, seeds_of=sample_seeds, distributed=distributed, target=target
    )
    people = gather_samples(slices, counts, samples)
    n_train_rows = people["distributed" if distributed else "train"].height
    booster, fit_seconds, example = fit_model(
        read_fit_inputs(batching.features_path, people, spec),
        spec=spec,
        train=train,
        target=target,
        root_seed=seed,
        client=batching.client,
    )
    console.record_timing("train", "fit", fit_seconds, target=target, rows=n_train_rows)
    calibration, evaluated = scores_of_cohort(
        slices,
        counts,
        booster,
        scores_path=scores_path,
        samples=samples,
        spec=spec,
        params=params,
        target=target,
        batching=batching,
    )
    fitted = Fitted(booster, calibration, fit_seconds, example)
    test_oracle = None
    if oracle is not None:
        test_ids = people["test"]["person_id"]
        test_oracle = oracle_risk(test_ids, oracle, target=target)
    metrics = model_metrics(
        evaluated,
        fitted,
        oracle=test_oracle,
        train=train,
        operating_point=point,
        target=target,
        root_seed=seed,
        n_cohort=counts.n_people,
        n_train_rows=n_train_rows,
        rule=params.disclosure,
    )
    shap_people = people["shap"]
    shap_inputs = batches.model_inputs_in_batches(
        pl.scan_parquet(batching.features_path), batches.batch_keys(shap_people), spec
    )
    ranked = importance.feature_importance(booster, shap_inputs, spec)
    model_card = card.model_card(
        target=target,
        target_params=params.target_params,
        train=train,
        operating_point=point,
        index_date=params.index_date,
        metrics=metrics,
        calibration_method=calibration["method"],
        importance=ranked,
        n_cohort=counts.n_people,
        n_train_rows=n_train_rows,
        rule=params.disclosure,
    )
    importance_doc = {
        "target": target,
        "n_shap_rows": params.disclosure.count(shap_people.height),
        "features": ranked,
    }
    test = evaluated.test
    curves = plots.curve_frames(_outcomes(test), test["risk_score"].to_numpy())
    return Trained(fitted, metrics, importance_doc, model_card, curves)


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
    return model_dir


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Train, calibrate, evaluate, score and register the model for one target."""
    if target not in params.targets:
        raise StageError(f"unknown target {target!r}")
    run_params = TargetRun.of(params, target)
    registry.prepare(root=paths.root, target=target)  # fails fast when the store is down
    slices, counts, spec = read_cohort(
        paths,
        target=target,
        extra_columns=run_params.unit,
        outcomes=read_outcomes(paths, params, target=target),
    )
    oracle_file = paths.truth / "oracle.parquet"
    oracle = pl.scan_parquet(oracle_file) if oracle_file.exists() else None
    with engine.connect_for(params) as client:
        trained = train_target(
            slices,
            counts,
            spec,
            target=target,
            params=run_params,
            oracle=oracle,
            batching=Batching(paths.features / "features.parquet", client),
            scores_path=paths.scores / f"{target}.parquet",
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
        did=f"{console.count(counts.n_people)} people, {trained.metrics['best_iteration']} trees",
        figure=console.figures(trained.metrics, ("auroc", "AUROC"), ("oe_ratio", "O/E")),
    )
