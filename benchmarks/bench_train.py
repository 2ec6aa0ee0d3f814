"""Benchmark: train one target's LightGBM model on 1M people; peer: sklearn's
HistGradientBoostingClassifier on the same data and hyper-parameters, in the same run.

Run: ``nice .venv/bin/python benchmarks/bench_train.py [--people 1000000]``. Budget: the
LightGBM fit (train split = 60% of people, early stopping on the 20% validation split) must take at
most 90 s per target on the project machine (2 cores). Also times the rest of the stage's compute
(scoring everyone, calibration, test metrics with bootstrap CIs).

Data (``--data``): ``pipeline`` (default) runs the project's own synthesize and features stages
for ``--people`` people into a scratch folder (kept for reuse) and trains the emergency-admission
target on its real features and cohort; ``standin`` uses a quick synthetic matrix of the same shape
(counts, flags, measurements with missing values, an integer categorical).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import contract
from pipeline.config import Params, load_params
from pipeline.io import Paths, scan_table
from pipeline.train import calibration as calibration_mod
from pipeline.train import cohort as cohort_mod
from pipeline.train import evaluation, fit

SCRATCH = Path(tempfile.gettempdir()) / "phm_bench_train"
TARGET = "emergency_admission_12m"


def pipeline_features(
    params: Params, n_people: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, cohort_mod.FeatureSpec]:
    """(features, outcome, split labels, spec) of the emergency-admission cohort of a population
    built by the project's own synthesize and features stages (cached in a scratch folder)."""
    from pipeline import features as features_stage
    from pipeline import synth

    root = SCRATCH / f"people_{n_people}"
    paths = Paths.at(root)
    scaled = params.model_copy(
        update={"population": params.population.model_copy(update={"n_people": n_people})}
    )
    if not (paths.features / "features.parquet").exists():
        started = time.perf_counter()
        synth.run(scaled, paths)
        features_stage.run(scaled, paths)
        print(f"built the population and its features in {time.perf_counter() - started:.0f} s")
    spec = cohort_mod.feature_spec(contract.read_manifest(paths.features / "manifest.json"))
    cohort = cohort_mod.cohort_frame(
        pl.scan_parquet(paths.features / "features.parquet"),
        scan_table(paths.population, "outcomes"),
        target=TARGET,
        columns=list(spec.names),
    ).collect()
    return (
        cohort_mod.feature_matrix(cohort, spec),
        cohort["outcome"].to_numpy().astype(np.float64),
        cohort["split"].to_numpy(),
        spec,
    )


def synthetic_features(
    n_people: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray, cohort_mod.FeatureSpec]:
    """(features float32 with NaN, outcome 0/1, spec) for ``n_people``."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 100, n_people)
    imd = rng.integers(1, 11, n_people)
    frailty = rng.gamma(1.0, 1.0, n_people) * (1 + (age - 18) / 40) * (1 + (10 - imd) / 20)
    counts = rng.poisson(np.outer(frailty, np.linspace(0.05, 1.5, 32)))  # 8 event types x 4 windows
    flags = rng.random((n_people, 12)) < np.clip(0.02 * frailty[:, None], 0, 0.9)
    measures = rng.normal([135, 27, 42, 5], [18, 5, 10, 1], (n_people, 4))
    measures[rng.random(measures.shape) < 0.4] = np.nan
    practice = rng.random((n_people, 6))
    ethnicity = rng.integers(0, 6, n_people)
    x = np.column_stack(
        [age, imd, counts, flags, flags.sum(axis=1), measures, practice, ethnicity]
    ).astype(np.float32)
    lp = (
        -3.6
        + 0.025 * (age - 50)
        + 0.35 * np.log1p(counts[:, 30])
        + 0.25 * flags[:, :6].sum(axis=1)
        - 0.04 * imd
        + 0.01 * np.nan_to_num(measures[:, 0] - 135) * (age > 60)
        + 0.1 * (ethnicity == 3)
    )
    y = (rng.random(n_people) < 1 / (1 + np.exp(-lp))).astype(np.float64)
    names = (
        ["age", "imd_decile"]
        + [f"n_event_{i}" for i in range(32)]
        + [f"has_condition_{i}" for i in range(12)]
        + ["n_recorded_conditions", "latest_sbp", "latest_bmi", "latest_hba1c", "latest_chol"]
        + [f"practice_{i}" for i in range(6)]
        + ["ethnicity_code"]
    )
    return x, y, cohort_mod.FeatureSpec(tuple(names), ("ethnicity_code",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--data", choices=("pipeline", "standin"), default="pipeline")
    args = parser.parse_args()
    params = load_params()
    tp = params.train

    start = time.perf_counter()
    if args.data == "pipeline":
        x, y, labels, spec = pipeline_features(params, args.people)
        tr, va, te = (np.flatnonzero(labels == name) for name in ("train", "validation", "test"))
        source = f"{TARGET} cohort of a {args.people:,}-person synthetic population"
    else:
        x, y, spec = synthetic_features(args.people, seed=params.seed)
        split = np.random.default_rng(1).choice(3, args.people, p=[0.6, 0.2, 0.2])
        tr, va, te = (np.flatnonzero(split == k) for k in range(3))
        source = f"stand-in matrix of {args.people:,} people"
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)\n"
        f"data: {source}: {x.shape[0]:,} rows x {x.shape[1]} features "
        f"({tr.size:,} train), prevalence {y.mean():.3f}, ready in "
        f"{time.perf_counter() - start:.1f} s; threads={tp.num_threads}"
    )

    start, cpu = time.perf_counter(), time.process_time()
    booster = fit.fit_booster(
        x[tr],
        y[tr],
        x[va],
        y[va],
        spec=spec,
        params=fit.lightgbm_params(tp, seed=1),
        n_estimators=tp.n_estimators,
        early_stopping_rounds=tp.early_stopping_rounds,
    )
    lgb_seconds, lgb_cpu = time.perf_counter() - start, time.process_time() - cpu
    from sklearn.metrics import roc_auc_score

    raw = booster.predict(x[te])

    print(
        f"lightgbm 4.7 fit: {lgb_seconds:.1f} s wall, {lgb_cpu:.1f} s CPU "
        f"({booster.current_iteration()} trees kept), "
        f"test AUROC {roc_auc_score(y[te], raw):.4f}\n"
        f"  budget 90 s wall: {'OK' if lgb_seconds <= 90 else 'OVER'}; on an idle machine "
        f"~CPU/threads = {lgb_cpu / tp.num_threads:.0f} s "
        f"({'OK' if lgb_cpu / tp.num_threads <= 90 else 'OVER'})"
    )

    start = time.perf_counter()
    raw = fit.predict_raw(booster, x)
    calibration = calibration_mod.fit_calibration(raw[va], y[va], mode=tp.calibration, seed=2)
    risk = calibration_mod.apply_calibration(calibration, raw)
    selected = np.zeros(risk.size, dtype=bool)
    selected[np.argsort(-risk, kind="stable")[: int(0.05 * risk.size)]] = True
    evaluation.evaluate(
        y[te], risk[te], selected[te], oracle=None, n_bootstrap=tp.n_bootstrap, seed=3
    )
    print(
        f"rest of the stage compute (score everyone, calibration={calibration['method']}, "
        f"test metrics with {tp.n_bootstrap} bootstrap resamples): "
        f"{time.perf_counter() - start:.1f} s"
    )

    if args.skip_peer:
        return
    from sklearn.ensemble import HistGradientBoostingClassifier

    categorical = np.array([name in spec.categorical for name in spec.names])
    # Same rows: HGB has no external validation set, so it gets train+validation with
    # validation_fraction = the validation share (its own random pick of those rows).
    fit_rows = np.concatenate([tr, va])
    peer = HistGradientBoostingClassifier(
        learning_rate=tp.learning_rate,
        max_iter=tp.n_estimators,
        max_leaf_nodes=tp.num_leaves,
        max_depth=None if tp.max_depth < 0 else tp.max_depth,
        min_samples_leaf=tp.min_child_samples,
        l2_regularization=tp.lambda_l2,
        max_features=tp.feature_fraction,
        categorical_features=categorical,
        early_stopping=True,
        validation_fraction=va.size / fit_rows.size,
        n_iter_no_change=tp.early_stopping_rounds,
        scoring="loss",
        random_state=1,
    )
    start, cpu = time.perf_counter(), time.process_time()
    peer.fit(x[fit_rows], y[fit_rows])
    peer_seconds, peer_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"sklearn HistGradientBoostingClassifier fit: {peer_seconds:.1f} s wall, "
        f"{peer_cpu:.1f} s CPU "
        f"({peer.n_iter_} iterations), test AUROC "
        f"{roc_auc_score(y[te], peer.predict_proba(x[te])[:, 1]):.4f}"
    )
    print(
        f"lightgbm vs peer: {peer_seconds / lgb_seconds:.2f}x faster by wall time, "
        f"{peer_cpu / lgb_cpu:.2f}x less CPU (wall is noisy on a shared machine)"
    )


if __name__ == "__main__":
    main()
