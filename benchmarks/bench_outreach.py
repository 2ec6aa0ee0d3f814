"""Benchmark: the outreach stage at 1M people in seconds (issues 8 and 18).

Builds a 1M-person project in a temporary folder (scores, features with ~70 model inputs and a
valid features/manifest.json, a LightGBM model of 120 trees x 31 leaves - the size the real
models early-stop at - trained on a 50k sample), then times ``python -m pipeline outreach`` as
DVC runs it (fresh processes, imports included) for several capacities and policies: what
``dvc exp run -S outreach.capacity=...`` re-runs. Each run computes the selected people's
contributions (TreeSHAP) itself, one ICB at a time. Also times the pseudonymisation (standard
library ``hmac``, one call per selected person).

Usage: ``nice .venv/bin/python benchmarks/bench_outreach.py [--people 1000000]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import contract  # noqa: E402
from pipeline.config import parse_params  # noqa: E402
from pipeline.features import build_manifest  # noqa: E402
from pipeline.io import write_json, write_parquet  # noqa: E402
from pipeline.pseudonyms import pseudonymise  # noqa: E402

TARGET = "emergency_admission_12m"
KEY = "benchmark-secret"
N_ICBS = 42
PRACTICE_SIZE = 8_000
N_TREES = 120  # the real models early-stop at ~85-110 trees of 31 leaves (mean depth ~10)


def build_project(root: Path, n_people: int, seed: int = 20261123) -> None:
    """Write scores, features, manifest, model and truth for ``n_people`` under ``root``."""
    rng = np.random.default_rng(seed)
    icb_codes = np.array([f"Q{i:02d}" for i in range(N_ICBS)])
    practice_number = rng.integers(0, max(1, n_people // PRACTICE_SIZE), n_people)
    icb = icb_codes[practice_number % N_ICBS]
    columns: dict[str, np.ndarray] = {
        "age": rng.integers(18, 100, n_people).astype(np.int16),
        "imd_decile": rng.integers(1, 11, n_people).astype(np.int8),
        "sex_female": rng.integers(0, 2, n_people).astype(np.int8),
        "rural": (rng.random(n_people) < 0.2).astype(np.int8),
    }
    descriptions = {
        "age": "age in years at the index date",
        "imd_decile": "IMD 2019 decile of the home area (1 = most deprived)",
        "sex_female": "recorded sex is female",
        "rural": "lives in a rural area",
    }
    events = {
        "gp_consultation": ("GP consultations", 2.0),
        "prescription": ("prescriptions issued", 3.0),
        "ae_attendance": ("A&E attendances", 0.2),
        "emergency_admission": ("emergency admissions", 0.1),
        "outpatient": ("outpatient appointments", 0.5),
    }
    for event, (words, rate) in events.items():
        for window in (3, 6, 12, 24):
            name = f"n_{event}_{window}m"
            columns[name] = rng.poisson(rate * window / 12, n_people).astype(np.int32)
            descriptions[name] = f"{words} in the last {window} months"
    for condition in contract.CONDITIONS:
        name = f"has_{condition}"
        columns[name] = (rng.random(n_people) < 0.08).astype(np.int8)
        descriptions[name] = f"{condition.replace('_', ' ')} recorded"
    for code, (unit, low, high) in contract.MEASUREMENT_CODES.items():
        value = rng.uniform(low + (high - low) * 0.2, low + (high - low) * 0.5, n_people)
        missing = rng.random(n_people) < 0.3
        columns[f"latest_{code}"] = np.where(missing, np.nan, value.round(1))
        columns[f"{code}_missing"] = missing.astype(np.int8)
        descriptions[f"latest_{code}"] = f"latest {code} ({unit})"
        descriptions[f"{code}_missing"] = f"no {code} recorded"
    for condition in contract.CONDITIONS:
        name = f"practice_prevalence_{condition}"
        columns[name] = rng.uniform(0.01, 0.2, n_people)
        descriptions[name] = f"share of the GP practice's patients with {condition} recorded"
    names = list(columns)
    logit = (
        -3.5
        + 0.03 * (columns["age"] - 50)
        + 0.8 * columns["n_emergency_admission_12m"]
        + 0.3 * columns["n_ae_attendance_12m"]
        + 0.6 * columns["has_copd"]
        + 0.5 * columns["has_diabetes"]
        - 0.05 * columns["imd_decile"]
    )
    outcome = (rng.random(n_people) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    person_id = pl.Series("person_id", np.char.add("P", np.arange(n_people).astype("U9")))
    split = rng.choice(["train", "validation", "test"], n_people, p=[0.6, 0.2, 0.2])

    sample = rng.choice(n_people, min(n_people, 50_000), replace=False)
    matrix = np.column_stack([columns[name][sample].astype(np.float64) for name in names])
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 31, "learning_rate": 0.05, "num_threads": 2,
         "min_data_in_leaf": 100, "deterministic": True, "seed": 1, "verbose": -1},
        lgb.Dataset(matrix, label=outcome[sample], feature_name=names),
        num_boost_round=N_TREES,
    )  # fmt: skip
    del matrix
    features = pl.DataFrame({**columns}).with_columns(
        person_id,
        pl.Series("split", split),
        pl.Series("icb_code", icb),
        pl.Series("practice_id", np.char.add("PR", practice_number.astype("U6"))),
        pl.Series("region", np.array(contract.REGIONS)[practice_number % len(contract.REGIONS)]),
        pl.Series("ethnicity_group", rng.choice(list(contract.BROAD_ETHNIC_GROUPS), n_people)),
    )
    features = features.with_columns(
        contract.imd_quintile_expr(pl.col("imd_decile")).alias("imd_quintile"),
        *[pl.col(f"latest_{code}").fill_nan(None) for code in contract.MEASUREMENT_CODES],
    )
    risk = booster.predict(features.select(names).to_numpy())
    scores = pl.DataFrame(
        {"person_id": person_id, "split": split, "outcome": outcome, "risk_score": risk}
    ).with_columns(
        pl.col("risk_score").rank("ordinal", descending=True).cast(pl.Int64).alias("risk_rank")
    )
    scores = scores.with_columns(
        (10 - (pl.col("risk_rank") - 1) * 10 // n_people).cast(pl.Int8).alias("risk_decile"),
        pl.when(pl.col("risk_rank") <= 0.05 * n_people)
        .then(pl.lit("very high"))
        .when(pl.col("risk_rank") <= 0.2 * n_people)
        .then(pl.lit("high"))
        .otherwise(pl.lit("low"))
        .alias("risk_tier"),
    ).select(list(contract.SCORES_SCHEMA))
    write_parquet(features, root / "features" / "features.parquet", sort_by="person_id")
    write_manifest(root / "features" / "manifest.json", features, names, descriptions)
    write_parquet(scores, root / "data" / "scores" / f"{TARGET}.parquet", sort_by="person_id")
    true_need = pl.sum_horizontal(pl.col(f"has_{c}") for c in contract.CONDITIONS)
    write_parquet(
        features.select("person_id", true_need.cast(pl.Float64).alias("true_need")),
        root / "data" / "truth" / "people.parquet",
        sort_by="person_id",
    )
    (root / "models" / TARGET).mkdir(parents=True, exist_ok=True)
    booster.save_model(str(root / "models" / TARGET / "model.txt"))


def write_manifest(
    path: Path, table: pl.DataFrame, names: list[str], descriptions: dict[str, str]
) -> None:
    """A valid manifest: the real entries where the default feature set has the column, else a
    plain entry (a measurement the default set does not keep, e.g. dbp)."""
    target = {"outcome": "emergency_admission", "follow_up_months": 12}
    document = build_manifest(parse_params({"targets": {TARGET: target}})).document()
    known = {entry["name"]: entry for entry in document["features"]}
    entries = []
    for name in names:
        kind = "measurement" if name.startswith("latest_") else "numeric"
        plain = {"name": name, "description": descriptions[name], "dtype": str(table.schema[name]),
                 "source_table": "events", "kind": kind, "categorical": False}  # fmt: skip
        if kind == "measurement":
            plain["unit"] = contract.MEASUREMENT_CODES[name.removeprefix("latest_")][0]
        entries.append({**known.get(name, plain), "model_input": True, "categorical": False})
    document |= {"features": entries, "model_inputs": names, "columns": table.columns}
    write_json(contract.FeatureManifest.model_validate(document).document(), path)


def write_params(root: Path, outreach: dict[str, object]) -> None:
    raw = {
        "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
        "outreach": {"secret_file": str(root / "no-key-file"), **outreach},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def time_stage(root: Path, outreach: dict[str, object], *command: str) -> tuple[float, float]:
    """Wall and CPU seconds of one stage run in a fresh process."""
    write_params(root, outreach)
    env = {**os.environ, "PHM_PSEUDONYM_KEY": KEY}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", *command, "--root", str(root)],
        cwd=ROOT,
        env=env,
        check=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores (shared with other jobs); people: {args.people:,}")
    with tempfile.TemporaryDirectory(prefix="bench_outreach_") as folder:
        root = Path(folder)
        start = time.perf_counter()
        build_project(root, args.people)
        print(f"fixture built in {time.perf_counter() - start:.1f} s")

        runs = [
            {"capacity_mode": "share", "capacity": 0.05, "policy": "risk"},
            {"capacity_mode": "share", "capacity": 0.02, "policy": "risk"},
            {"capacity_mode": "per_icb", "capacity": 500, "policy": "core20plus5"},
            {"capacity_mode": "share", "capacity": 0.05, "policy": "equal_opportunity"},
        ]
        print("\noutreach runs (fresh `python -m pipeline outreach`, as `dvc exp run -S` runs it):")
        for outreach in runs:
            wall, cpu = time_stage(root, outreach, "outreach")
            listed = pl.scan_parquet(root / "data" / "outreach" / f"{TARGET}.parquet")
            rows = listed.select(pl.len()).collect().item()
            label = ", ".join(f"{k}={v}" for k, v in outreach.items())
            print(f"  {label:<60} wall {wall:6.1f} s  cpu {cpu:6.1f} s  ({rows:,} listed)")

        ids = pl.read_parquet(root / "data" / "scores" / f"{TARGET}.parquet", columns=["person_id"])
        print("\npseudonymisation, HMAC-SHA256 (standard library hmac, one call per id):")
        for n in (50_000, args.people):
            start = time.perf_counter()
            pseudonymise(ids["person_id"].head(n), KEY.encode())
            print(f"  {n:>9,} ids: {time.perf_counter() - start:6.2f} s")


if __name__ == "__main__":
    main()
