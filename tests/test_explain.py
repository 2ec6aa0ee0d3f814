"""pipeline.explain: each person's top LightGBM contributions (outreach explains the selected)."""

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
        assert contribution == pytest.approx(direct[0, NAMES.index(feature)], rel=1e-12, abs=1e-15)


def _awkward_booster(rounds: int, **params: object) -> tuple[lgb.Booster, np.ndarray]:
    """A model with numeric and categorical splits, missing values and zeros, on coarse values
    (many rows share a tree's path) and one continuous feature."""
    rng = np.random.default_rng(11)
    n = 3_000
    x = rng.integers(-3, 4, size=(n, 12)).astype(np.float64)
    x[:, 1] = rng.integers(0, 8, n)  # categorical
    x[rng.random(n) < 0.15, 2] = np.nan
    x[:, 4] = rng.normal(size=n)
    logit = (
        x[:, 0] + np.isin(x[:, 1], [2, 5]) + np.nan_to_num(x[:, 2]) - x[:, 3] + x[:, 4:].sum(1) / 4
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 8, "min_data_in_leaf": 5, "min_data_per_group": 5,
         "cat_smooth": 1, "num_threads": 1, "deterministic": True, "seed": 1, "verbose": -1,
         **params},
        lgb.Dataset(x, label=label, categorical_feature=[1]),
        num_boost_round=rounds,
    )  # fmt: skip
    return booster, x


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_contributions_per_shared_path_equal_lightgbm(zero_as_missing: bool, monkeypatch) -> None:
    booster, x = _awkward_booster(30, zero_as_missing=zero_as_missing)
    paths = explain.tree_paths(booster)
    assert paths.categorical == {1}
    codes = explain._model_codes(x, paths)
    shared = [len(explain._path_groups(codes, splits)[0]) for splits in paths.trees]
    assert np.median(shared) < len(x) / 10  # rows do share paths: the groups are tested
    direct = booster.predict(x, pred_contrib=True)[:, :-1]
    computed = explain.contributions(x, booster, paths)
    np.testing.assert_allclose(computed, direct, rtol=1e-12, atol=1e-14)
    # a row's values do not depend on the rows explained with it
    assert np.array_equal(explain.contributions(x[17:18], booster, paths)[0], computed[17])
    assert np.array_equal(explain.contributions(x[::-1], booster, paths)[::-1], computed)
    # path keys renumbered before they overflow: the same values
    monkeypatch.setattr(explain, "_KEY_LIMIT", 50)
    assert np.array_equal(explain.contributions(x, booster, paths), computed)


def test_one_tree_contributions_are_lightgbms_bits() -> None:
    booster, x = _awkward_booster(1)
    direct = booster.predict(x, pred_contrib=True)[:, :-1]
    assert np.array_equal(explain.contributions(x, booster, explain.tree_paths(booster)), direct)


def test_missing_model_inputs_are_named(booster_and_inputs) -> None:
    booster, inputs = booster_and_inputs
    with pytest.raises(ContractError, match=r"missing model input column\(s\) has_copd"):
        explain_cohort(inputs.drop("has_copd"), booster)


def test_load_booster_reads_the_saved_model(tmp_path: Path, booster_and_inputs) -> None:
    booster, inputs = booster_and_inputs
    path = tmp_path / "models" / TARGET / "model.txt"
    with pytest.raises(StageError, match=r"model not found at .*model\.txt; run the train stage"):
        explain.load_booster(path)
    path.parent.mkdir(parents=True)
    booster.save_model(str(path))
    loaded = explain.load_booster(path)
    assert loaded.feature_name() == NAMES
    assert explain_cohort(inputs, loaded).equals(explain_cohort(inputs, booster))


def test_load_explainer_keeps_a_model_until_its_file_changes(
    tmp_path: Path, booster_and_inputs
) -> None:
    booster, inputs = booster_and_inputs
    path = tmp_path / "model.txt"
    with pytest.raises(StageError, match=r"model not found at .*model\.txt; run the train stage"):
        explain.load_explainer(path)
    booster.save_model(str(path))
    loaded, paths = explain.load_explainer(path)
    assert explain.load_explainer(path)[0] is loaded  # parsed once per process
    assert len(paths.trees) == booster.num_trees()
    assert explain_cohort(inputs, loaded, paths=paths).equals(explain_cohort(inputs, booster))
    retrained, _ = _awkward_booster(2)
    path.unlink()
    retrained.save_model(str(path))
    reloaded, paths = explain.load_explainer(path)
    assert reloaded is not loaded and len(paths.trees) == 2


def test_docstring_examples() -> None:
    assert doctest.testmod(explain).failed == 0
