"""Stage ``need``: a need-based ranking of one target's eligible cohort (one DVC stage per target).

A LightGBM regression of a need label - the target's own ``true_need`` when
``data/truth/oracle.parquet`` exists (synthetic data: e.g. the true 5-year CVD risk for the CVD
target), else the recorded multimorbidity count - on the recorded features, trained on the
train split (its seeded sample: only those people's inputs are read) and scored on the whole
cohort in batches per ICB on the engine (:mod:`pipeline.batches`, ``engine``). Writes
``data/scores/need/<target>.parquet`` (person_id, need_score; row-level, so under ``data/``),
which the audit reads for its ``need_based`` mitigation policy and outreach for its
``need_adjusted`` policy.

Parameters: ``audit.need_model_rounds``, ``audit.need_model_max_rows``, ``audit.num_threads``
and ``seed``. Seeds (unchanged from when the audit trained this model, so the scores are too):
``seeds.derive("need_model", target, "lightgbm")`` for LightGBM and
``seeds.sequence("audit", target, "need")`` for the training sample.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import lightgbm as lgb
import numpy as np
import polars as pl

from pipeline import batches, console, contract, engine, io, seeds
from pipeline.config import AuditParams, Params
from pipeline.errors import ContractError, StageError

if TYPE_CHECKING:
    from distributed import Client

LIGHTGBM_PARAMS: Final = {
    "objective": "regression",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,  # fixed histogram layout: the same model on every run
    "verbosity": -1,
}


def need_model_features(manifest: contract.FeatureManifest) -> tuple[list[str], list[str]]:
    """Model inputs for the need model and the categorical ones; the recorded multimorbidity
    count itself is left out (it may be the label)."""
    inputs, categorical = manifest.inputs(exclude=(contract.RECORDED_MULTIMORBIDITY,))
    return list(inputs), list(categorical)


def need_frame(
    cohort: pl.LazyFrame, features: pl.LazyFrame, *, truth: pl.LazyFrame | None
) -> pl.DataFrame:
    """One row per cohort member with a feature row, without the model inputs (those are read
    for the training sample and batch by batch for scoring, so memory stays flat in N).

    Parameters
    ----------
    cohort
        person_id and split of the eligible cohort (``data/scores/<target>.parquet``).
    features
        ``features/features.parquet``.
    truth
        The target's true need (person_id, true_need; :func:`target_need`) or None.

    Returns
    -------
    polars.DataFrame
        person_id, ``icb_code`` (when the features have it: the scoring batches), split,
        ``recorded_need`` (Float64) always, ``true_need`` with truth; sorted by person_id.
    """
    labels = cohort.select("person_id", "split")
    if truth is not None:
        true_need = truth.select("person_id", "true_need")
        labels = labels.join(true_need, on="person_id", how="left", maintain_order="left")
    icb = [batches.ICB] if batches.ICB in features.collect_schema().names() else []
    labelled = features.select(
        "person_id",
        *icb,
        pl.col(contract.RECORDED_MULTIMORBIDITY).cast(pl.Float64).alias("recorded_need"),
    )
    return labelled.join(labels, on="person_id", how="inner").sort("person_id").collect()


def training_rows(frame: pl.DataFrame, *, max_rows: int, seed: int) -> pl.DataFrame:
    """The train split (or everyone when it is empty), a seeded sample above ``max_rows``."""
    training = frame.filter(pl.col("split") == "train")
    if training.height == 0:
        training = frame
    if training.height > max_rows:
        training = training.sample(max_rows, seed=seed)
    return training


def train_need_model(
    training: pl.DataFrame,
    *,
    label: str,
    features: list[str],
    categorical: list[str],
    rounds: int,
    seed: int,
    num_threads: int,
) -> lgb.Booster:
    """LightGBM regression of the need label on recorded features (deterministic)."""
    if training.height == 0:
        raise StageError("need: no training rows for the need model")
    data = lgb.Dataset(
        training.select(features).to_numpy().astype(np.float64),
        label=training[label].cast(pl.Float64).fill_null(0.0).to_numpy(),
        feature_name=features,
        categorical_feature=categorical or "auto",
        free_raw_data=True,
    )
    params = {**LIGHTGBM_PARAMS, "seed": seed, "num_threads": num_threads}
    return lgb.train(params, data, num_boost_round=rounds)


def need_batch(
    batch: batches.Batch, *, features_path: str, model: str, inputs: list[str]
) -> np.ndarray:
    """The need scores of one batch's people, in their order (a task: module-level)."""
    booster = lgb.Booster(model_str=model)
    frame = batches.input_rows(
        pl.scan_parquet(features_path), batch.person_ids, inputs, icb=batch.icb
    )
    return np.asarray(booster.predict(frame.select(inputs).to_numpy().astype(np.float64)))


def need_scores(
    frame: pl.DataFrame,
    *,
    features_path: Path,
    features: list[str],
    categorical: list[str],
    audit: AuditParams,
    root_seed: int,
    target: str,
    client: Client | None = None,
    batch_rows: int = batches.BATCH_ROWS,
) -> pl.DataFrame:
    """Train the need model on ``frame``'s training rows (:func:`need_frame`, :func:`training_rows`;
    their inputs read from ``features_path``), then score every row in batches on the engine.

    Returns
    -------
    polars.DataFrame
        person_id, need_score (higher = more need), in the order of ``frame``.
    """
    label = "true_need" if "true_need" in frame.columns else "recorded_need"
    sample_seed = seeds.sequence("audit", target, "need", root=root_seed).generate_state(1)[0]
    training = training_rows(frame, max_rows=audit.need_model_max_rows, seed=int(sample_seed))
    inputs = batches.input_rows(
        pl.scan_parquet(features_path), training["person_id"], features, icb=None
    )
    started = time.perf_counter()
    booster = train_need_model(
        training.hstack(inputs.drop("person_id")),
        label=label,
        features=features,
        categorical=categorical,
        rounds=audit.need_model_rounds,
        seed=seeds.derive("need_model", target, "lightgbm", root=root_seed),
        num_threads=audit.num_threads,
    )
    # a fit on a capped sample: the benchmarks project it apart from the per-person work
    fit_seconds = time.perf_counter() - started
    console.record_timing("need", "fit", fit_seconds, target=target, rows=training.height)
    del inputs
    scores = batches.predict_in_batches(
        batches.batch_keys(frame),
        need_batch,
        features_path=features_path,
        model=booster.model_to_string(),
        client=client,
        batch_rows=batch_rows,
        inputs=features,
    )
    return pl.DataFrame(
        {"person_id": frame["person_id"], "need_score": scores}, schema=contract.NEED_SCORES_SCHEMA
    )


def target_need(oracle_path: Path, *, target: str) -> pl.LazyFrame | None:
    """``person_id``, ``true_need`` of the target's own true need (``data/truth/oracle.parquet``;
    None without truth, i.e. on a real extract)."""
    if not oracle_path.exists():
        return None
    oracle = pl.scan_parquet(oracle_path)
    names = oracle.collect_schema().names()
    missing = [c for c in ("person_id", "target", "true_need") if c not in names]
    if missing:
        raise ContractError(f"{oracle_path}: missing column(s) {missing}")
    return oracle.filter(pl.col("target") == target).select("person_id", "true_need")


def _existing(path, what: str):
    if not path.exists():
        raise StageError(f"need: {what} not found at {path} (run the upstream stage first)")
    return path


def run(params: Params, paths: io.Paths, *, target: str) -> None:
    """Train the need model of one target and write ``data/scores/need/<target>.parquet``."""
    if target not in params.targets:
        raise StageError(f"need: unknown target {target!r}")
    scores_path = _existing(paths.scores / f"{target}.parquet", "scores")
    features_path = _existing(paths.features / "features.parquet", "features")
    manifest = contract.read_manifest(_existing(paths.features / "manifest.json", "manifest"))
    features, categorical = need_model_features(manifest)
    truth = target_need(paths.truth / "oracle.parquet", target=target)
    frame = need_frame(pl.scan_parquet(scores_path), pl.scan_parquet(features_path), truth=truth)
    if frame.height == 0:
        raise ContractError(f"{features_path}: no feature rows for the people in {scores_path}")
    with engine.connect_for(params) as client:
        scores = need_scores(
            frame,
            features_path=features_path,
            features=features,
            categorical=categorical,
            audit=params.audit,
            root_seed=params.seed,
            target=target,
            client=client,
        )
    io.write_parquet(
        scores, paths.scores / contract.NEED_SCORES_DIR / f"{target}.parquet", sort_by="person_id"
    )
    console.stage_done("need", target=target, did=f"{console.count(scores.height)} people scored")
