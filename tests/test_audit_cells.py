"""Cells engine: MetricFrame on weighted cells equals fairlearn's row-level MetricFrame."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from sklearn.metrics import roc_auc_score

from benchmarks.peer_metrics import metric_frame
from pipeline.audit import cells as cells_mod
from pipeline.metrics import percentile_interval, wilson_interval


def _people(n: int, *, decimals: int | None, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1])
    score = rng.beta(1.2, 8, n)
    if decimals is not None:
        score = np.round(score, decimals).clip(0.001, 0.999)
    lift = np.where(group == "a", 1.6, 1.0)
    outcome = (rng.random(n) < np.clip(score * lift, 0, 1)).astype(np.int8)
    frame = pl.DataFrame(
        {"person_id": [f"P{i:05d}" for i in range(n)], "dim": group, "risk_score": score}
    ).with_columns(pl.Series("outcome", outcome))
    return frame.with_columns(
        (pl.col("risk_score").rank("ordinal", descending=True) <= int(0.1 * n)).alias("selected")
    )


def _cells(frame: pl.DataFrame, *, score_bins: int = 1000) -> tuple[pl.DataFrame, object, str]:
    binned, resolution = cells_mod.add_score_bins(frame, score_bins=score_bins)
    cells = cells_mod.build_cells(binned, "dim", bin_score=cells_mod.bin_scores(binned))
    return binned, cells, resolution


def test_cells_metric_frame_equals_fairlearn_row_level_metric_frame() -> None:
    people = _people(3_000, decimals=3)
    _, cells, resolution = _cells(people)
    assert resolution == "exact"
    assert len(cells.count) < people.height / 2  # really collapsed
    on_cells = cells_mod.cells_metric_frame(cells)
    on_rows = metric_frame(  # fairlearn's / sklearn's own metric functions, one row per person
        people["outcome"].to_numpy(),
        people["selected"].to_numpy(),
        people["risk_score"].to_numpy(),
        people["dim"].to_numpy(),
    )
    assert list(on_cells.index) == ["a", "b", "c", "d"]
    for metric in ("n", *cells_mod.METRICS):
        np.testing.assert_allclose(
            on_cells[metric].to_numpy(), on_rows.loc[on_cells.index, metric].to_numpy(), rtol=1e-12
        )
    # and the vectorised engine used for the bootstrap gives the same numbers
    engine = cells_mod.cell_metrics(cells)
    for metric in cells_mod.METRICS:
        np.testing.assert_allclose(engine[metric][0], on_cells[metric].to_numpy(), rtol=1e-10)


def test_binned_scores_move_auroc_only_slightly() -> None:
    people = _people(4_000, decimals=None, seed=2)
    _, cells, resolution = _cells(people, score_bins=200)
    assert resolution == "binned"
    on_cells = cells_mod.cells_metric_frame(cells)
    for group in on_cells.index:
        rows = people.filter(pl.col("dim") == group)
        exact = roc_auc_score(rows["outcome"].to_numpy(), rows["risk_score"].to_numpy())
        assert on_cells.loc[group, "auroc"] == pytest.approx(exact, abs=0.01)


def test_calibration_slope_matches_statsmodels_logistic_regression() -> None:
    people = _people(2_000, decimals=3, seed=3)
    _, cells, _ = _cells(people)
    slope = cells_mod.cell_metrics(cells)["calibration_slope"][0]
    for index, group in enumerate(cells.groups):
        rows = people.filter(pl.col("dim") == group)
        score = rows["risk_score"].to_numpy()
        logit = np.log(score / (1 - score))
        fit = sm.GLM(
            rows["outcome"].to_numpy(), sm.add_constant(logit), family=sm.families.Binomial()
        )
        assert slope[index] == pytest.approx(fit.fit().params[1], rel=1e-6)


def test_bootstrap_is_seeded_and_covers_the_estimate() -> None:
    people = _people(3_000, decimals=3, seed=4)
    _, cells, _ = _cells(people)
    first = cells_mod.bootstrap_metrics(cells, n_bootstrap=200, rng=np.random.default_rng(9))
    second = cells_mod.bootstrap_metrics(cells, n_bootstrap=200, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(first["auroc"], second["auroc"])
    point = cells_mod.cell_metrics(cells)
    low, high = percentile_interval(first["auroc"])
    assert np.all(low < point["auroc"][0]) and np.all(point["auroc"][0] < high)
    # a bootstrap SE of a proportion close to the binomial SE
    tpr = point["tpr"][0]
    binomial_se = np.sqrt(tpr * (1 - tpr) / point["n_events"][0])
    np.testing.assert_allclose(first["tpr"].std(axis=0), binomial_se, rtol=0.3)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(np.array([0, 10, 5]), np.array([10, 10, 0]))
    assert low[0] == 0.0 and high[0] == pytest.approx(0.2775, abs=1e-4)
    assert low[1] == pytest.approx(0.7225, abs=1e-4) and high[1] == pytest.approx(1.0)
    assert np.isnan(low[2]) and np.isnan(high[2])


def test_audit_dimension_flags_a_real_gap_and_marks_small_groups() -> None:
    people = _people(6_000, decimals=3, seed=5)
    _, cells, _ = _cells(people)
    table = cells_mod.audit_dimension(
        cells,
        preferred_reference=None,
        n_bootstrap=200,
        bootstrap_bins=50,
        rng=np.random.default_rng(0),
        confidence=0.95,
        min_group_size=700,
        min_group_events=10,
    )
    assert set(table["reference_group"]) == {"a"}  # the largest group
    oe = table.filter(pl.col("metric") == "oe_ratio").sort("group")
    # group a's outcomes are 1.6x its scores: every other group's O/E ratio is ~1/1.6
    others = oe.filter(pl.col("group") != "a")
    assert others["ratio"].max() < 0.8
    # O/E is judged against 1, not against the reference group: a (O/E ~1.6) is the candidate
    assert (oe["comparator"] == "1 (calibration)").all()
    assert oe.filter(pl.col("group") == "a")["flag"].item()
    assert oe.filter(pl.col("group") == "a")["value"].item() > 1.3
    assert not others.filter(pl.col("group") != "d")["flag"].any()
    # d is small (n < 700): marked, kept
    small = table.filter(pl.col("group") == "d")
    assert small.height == len(cells_mod.METRICS)
    assert not small["stable"].any()
    # only TPR and O/E can be flagged; a metric's own denominator (events) gates it
    assert set(table.filter(pl.col("flag"))["metric"]) <= {"tpr", "oe_ratio"}
    gated = cells_mod.audit_dimension(
        cells,
        preferred_reference=None,
        n_bootstrap=50,
        bootstrap_bins=50,
        rng=np.random.default_rng(0),
        confidence=0.95,
        min_group_size=700,
        min_group_events=100_000,
    )
    assert not gated["flag"].any()
    assert (table.filter(pl.col("metric") == "tpr")["ci_method"] == "wilson").all()
