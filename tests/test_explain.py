"""Stage explain: top LightGBM contributions for the whole eligible cohort."""

from __future__ import annotations

import doctest
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from pipeline import contract, explain
from pipeline.errors import ContractError, StageError
from pipeline.explain import explain_cohort, top_contributions
from pipeline.io import Paths, write_parquet

TARGET = "t"
NAMES = ["age", "ethnicity_code", "has_copd", "latest_sbp"]


@pytest.fixture(scope="module")
def booster_and_inputs() -> tuple[lgb.Booster, pl.DataFrame]:
    rng = np.random.default_rng(3)
    n = 400
    inputs = pl.DataFrame(
        {
            "person_id": [f"P{i:04d}" for i in range(n)],
            "age": rng.integers(20, 90, n).astype(np.int16),
            "ethnicity_code": rng.integers(0, 6, n).astype(np.int8),
            "has_copd": (rng.random(n) < 0.1).astype(np.int8),
            "latest_sbp": np.where(rng.random(n) < 0.2, np.nan, rng.normal(135, 15, n)),
        }
    )
    logit = -2 + 0.04 * (inputs["age"].to_numpy() - 50) + 0.8 * inputs["ethnicity_code"].to_numpy()
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 5, "min_data_in_leaf": 10, "num_threads": 1,
         "deterministic": True, "seed": 1, "verbose": -1},
        lgb.Dataset(inputs.select(NAMES).to_numpy(), label=outcome, feature_name=NAMES),
        num_boost_round=10,
    )  # fmt: skip
    return booster, inputs


def test_top_contributions_order_ties_and_never_ethnicity() -> None:
    contributions = np.array(
        [
            [0.2, 9.0, 0.5, 0.2, -1.0],  # ethnicity largest; a tie between age and latest_sbp
            [-0.1, 0.0, -0.3, -0.2, 2.0],  # nothing positive: still the three largest
        ]
    )  # last column: the bias
    top = top_contributions(pl.Series(["a", "b"]), contributions, NAMES)
    assert top.schema == pl.Schema(contract.EXPLANATIONS_SCHEMA)
    assert top.rows() == [
        ("a", 1, "has_copd", 0.5),
        ("a", 2, "age", 0.2),  # equal contributions keep the model's feature order
        ("a", 3, "latest_sbp", 0.2),
        ("b", 1, "age", -0.1),
        ("b", 2, "latest_sbp", -0.2),
        ("b", 3, "has_copd", -0.3),
    ]


def test_fewer_explainable_features_than_positions() -> None:
    top = top_contributions(pl.Series(["a"]), np.array([[1.0, 2.0, 0.0]]), ["x", "ethnic_y"])
    assert top.rows() == [("a", 1, "x", 1.0)]


def test_batches_change_nothing_and_match_pred_contrib(booster_and_inputs) -> None:
    booster, inputs = booster_and_inputs
    whole = explain_cohort(inputs, booster, batch_rows=10_000)
    assert whole.equals(explain_cohort(inputs, booster, batch_rows=37))
    assert whole.height == 3 * inputs.height
    assert "ethnicity_code" not in set(whole["feature"])
    direct = booster.predict(inputs.select(NAMES).to_pandas(), pred_contrib=True)
    first = whole.filter(pl.col("person_id") == "P0000")
    for feature, contribution in first.select("feature", "contribution").iter_rows():
        assert contribution == direct[0, NAMES.index(feature)]


def _project(tmp_path: Path, booster: lgb.Booster, inputs: pl.DataFrame) -> Paths:
    paths = Paths.at(tmp_path)
    write_parquet(inputs.sample(fraction=1.0, shuffle=True, seed=2), paths.features /
                  "features.parquet", sort_by="age")  # fmt: skip
    scores = inputs.head(300).select(
        "person_id",
        pl.lit("test").alias("split"),
        pl.lit(0, dtype=pl.Int8).alias("outcome"),
        pl.lit(0.1).alias("risk_score"),
    )
    write_parquet(scores, paths.scores / f"{TARGET}.parquet", sort_by="person_id")
    (paths.models / TARGET).mkdir(parents=True)
    booster.save_model(str(paths.models / TARGET / "model.txt"))
    return paths


def test_run_explains_the_scored_cohort_sorted_and_byte_stable(tmp_path, booster_and_inputs):
    paths = _project(tmp_path, *booster_and_inputs)
    explain.run(paths, target=TARGET)
    out = tmp_path / contract.EXPLANATIONS_DIR / f"{TARGET}.parquet"
    first = out.read_bytes()
    table = pl.read_parquet(out)
    assert table.schema == pl.Schema(contract.EXPLANATIONS_SCHEMA)
    assert table["person_id"].n_unique() == 300  # the scored cohort, not every feature row
    assert table.equals(table.sort("person_id", "position"))
    explain.run(paths, target=TARGET)
    assert out.read_bytes() == first


def test_run_refuses_missing_inputs(tmp_path, booster_and_inputs) -> None:
    booster, inputs = booster_and_inputs
    paths = _project(tmp_path, booster, inputs)
    write_parquet(inputs.tail(50), paths.features / "features.parquet", sort_by="person_id")
    with pytest.raises(ContractError, match="300 people scored for t but 0 feature rows"):
        explain.run(paths, target=TARGET)
    write_parquet(inputs.drop("has_copd"), paths.features / "features.parquet", sort_by="age")
    with pytest.raises(ContractError, match=r"missing model input column.*has_copd"):
        explain.run(paths, target=TARGET)
    (paths.models / TARGET / "model.txt").unlink()
    with pytest.raises(StageError, match="model of t not found"):
        explain.run(paths, target=TARGET)


def test_docstring_examples() -> None:
    assert doctest.testmod(explain).failed == 0
