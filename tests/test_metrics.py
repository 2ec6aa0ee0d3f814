"""pipeline.metrics: the one bootstrap, interval, ranking and calibration used by train and the
audit - checked against sklearn / statsmodels, and train vs audit on the same people."""

from __future__ import annotations

import doctest

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline import metrics
from pipeline.audit import cells as cells_mod
from pipeline.train import evaluation


def _people(n: int, *, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    score = np.round(rng.beta(1.3, 7, n), 3).clip(0.001, 0.999)  # rounded: many ties
    outcome = (rng.random(n) < np.clip(score * np.where(group == "a", 1.4, 0.9), 0, 1)).astype(
        np.int8
    )
    frame = pl.DataFrame({"person_id": np.arange(n), "dim": group, "risk_score": score})
    return frame.with_columns(
        pl.Series("outcome", outcome),
        (pl.col("risk_score").rank("ordinal", descending=True) <= n // 10).alias("selected"),
    )


def test_doctests() -> None:
    assert doctest.testmod(metrics, raise_on_error=True).attempted >= 2


def test_ranking_metrics_per_group_equal_sklearn_with_weights() -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    score = np.round(rng.random(n), 2)
    y = (rng.random(n) < score).astype(float)
    group = rng.integers(0, 3, n)
    weights = rng.poisson(1.0, (2, n)).astype(float)
    auroc, ap = metrics.ranking_metrics(weights, y, metrics.rank_index(score, group=group))
    assert auroc.shape == ap.shape == (2, 3)
    for row in range(2):
        for code in range(3):
            rows = group == code
            kwargs = {"sample_weight": weights[row, rows]}
            expected_auroc = roc_auc_score(y[rows], score[rows], **kwargs)
            expected_ap = average_precision_score(y[rows], score[rows], **kwargs)
            assert auroc[row, code] == pytest.approx(expected_auroc, abs=1e-12)
            assert ap[row, code] == pytest.approx(expected_ap, abs=1e-12)


def test_ranking_metrics_are_nan_without_both_outcomes() -> None:
    auroc, ap = metrics.ranking_metrics(
        np.ones((1, 3)), np.zeros(3), metrics.rank_index(np.array([0.1, 0.2, 0.3]))
    )
    assert np.isnan(auroc).all() and np.isnan(ap).all()


def test_logistic_recalibration_per_group_equals_statsmodels() -> None:
    people = _people(3_000, seed=2)
    index = metrics.rank_index(
        people["risk_score"].to_numpy(), group=people["dim"].rank("dense").to_numpy() - 1
    )
    y = people["outcome"].to_numpy()
    events, non_events = metrics.unit_sums(np.ones((1, people.height)), y, index)
    lp = metrics.logit(index.unit_score)
    groups = {"unit_group": index.unit_group, "group_starts": index.group_starts}
    _, slope = metrics.logistic_recalibration(events, events + non_events, lp, **groups)
    intercept = metrics.calibration_in_the_large(events, events + non_events, lp, **groups)
    for code, label in enumerate(["a", "b", "c"]):
        rows = people.filter(pl.col("dim") == label)
        x = metrics.logit(rows["risk_score"].to_numpy())
        outcome = rows["outcome"].to_numpy()
        binomial = sm.families.Binomial()
        fitted = sm.GLM(outcome, sm.add_constant(x), family=binomial).fit()
        offset = sm.GLM(outcome, np.ones((x.size, 1)), family=binomial, offset=x).fit()
        assert slope[0, code] == pytest.approx(fitted.params[1], rel=1e-8)
        assert intercept[0, code] == pytest.approx(offset.params[0], rel=1e-8, abs=1e-10)


def test_train_and_audit_agree_on_the_same_people() -> None:
    people = _people(4_000, seed=3)
    binned, resolution = cells_mod.add_score_bins(people, score_bins=1_000)
    assert resolution == "exact"
    cells = cells_mod.build_cells(binned, "dim", bin_score=cells_mod.bin_scores(binned))
    audit = cells_mod.cell_metrics(cells)
    for code, label in enumerate(cells.groups):
        rows = people.filter(pl.col("dim") == label)
        train = evaluation.metric_sets(
            np.ones((1, rows.height)),
            rows["outcome"].to_numpy(),
            rows["risk_score"].to_numpy(),
            rows["selected"].to_numpy(),
        )
        for name in ("auroc", "brier", "oe_ratio", "calibration_slope"):
            assert audit[name][0, code] == pytest.approx(train[name][0], rel=1e-9), name
        assert audit["tpr"][0, code] == pytest.approx(train["sensitivity_at_capacity"][0])
        assert audit["ppv"][0, code] == pytest.approx(train["ppv_at_capacity"][0])


def test_cell_counts_as_weights_equal_the_people_they_stand_for() -> None:
    people = _people(3_000, seed=4)
    cells = people.group_by("risk_score", "outcome", "selected").agg(pl.len().alias("count"))
    on_people = evaluation.metric_sets(
        np.ones((1, people.height)),
        people["outcome"].to_numpy(),
        people["risk_score"].to_numpy(),
        people["selected"].to_numpy(),
    )
    on_cells = evaluation.metric_sets(
        cells["count"].to_numpy().astype(float)[None, :],
        cells["outcome"].to_numpy(),
        cells["risk_score"].to_numpy(),
        cells["selected"].to_numpy(),
        ece_edges=metrics.ece_bin_edges(people["risk_score"].to_numpy()),
    )
    for name, value in on_people.items():
        assert on_cells[name][0] == pytest.approx(value[0], rel=1e-9), name


def test_poisson_bootstrap_is_seeded_and_does_not_depend_on_the_chunk_size_or_threads() -> None:
    base = np.array([1.0, 4.0, 0.0, 12.0])

    def total(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {"total": weights.sum(axis=1), "first": weights[:, 0]}

    draws = [
        metrics.poisson_bootstrap(
            total, base, n_resamples=500, rng=np.random.default_rng(7), chunk=chunk, threads=threads
        )
        for chunk, threads in ((500, 1), (64, 1), (1, 1), (64, 2), (7, 3))
    ]
    for other in draws[1:]:
        np.testing.assert_array_equal(other["total"], draws[0]["total"])
    assert draws[0]["total"].shape == (500,)
    assert draws[0]["total"].mean() == pytest.approx(base.sum(), rel=0.05)
    assert draws[0]["total"].var() == pytest.approx(base.sum(), rel=0.2)  # Poisson: var = mean


def test_spawned_poisson_bootstrap_does_not_depend_on_threads() -> None:
    def total(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {"total": weights.sum(axis=1), "first": weights[:, 0]}

    people = np.ones(1_000)
    draws = [
        metrics.poisson_bootstrap(
            total,
            people,
            n_resamples=300,
            rng=np.random.default_rng(7),
            chunk=16,
            threads=threads,
            spawn=True,
        )
        for threads in (1, 2, 3)
    ]
    for other in draws[1:]:
        np.testing.assert_array_equal(other["total"], draws[0]["total"])
        np.testing.assert_array_equal(other["first"], draws[0]["first"])
    assert draws[0]["total"].shape == (300,)
    assert draws[0]["total"].mean() == pytest.approx(people.sum(), rel=0.01)
    assert draws[0]["total"].var() == pytest.approx(people.sum(), rel=0.2)  # Poisson: var = mean


def test_poisson_counts_are_poisson_weights_as_integers() -> None:
    """The same draws as the float64 weights, for people (one rate) and cells (counts)."""
    for base in (np.ones(1_000), np.array([1.0, 4.0, 0.0, 12.0])):
        counts = metrics.poisson_counts(base, n_resamples=5, rng=np.random.default_rng(1))
        assert np.issubdtype(counts.dtype, np.integer)
        np.testing.assert_array_equal(
            counts, metrics.poisson_weights(base, n_resamples=5, rng=np.random.default_rng(1))
        )


@pytest.mark.parametrize("decimals", [None, 2])
def test_sorted_ranking_metrics_equal_ranking_metrics(decimals: int | None) -> None:
    rng = np.random.default_rng(4)
    score = rng.beta(1, 8, 5_000)
    score = score if decimals is None else np.round(score, decimals)  # 2 decimals: ties
    y = (rng.random(score.size) < score).astype(float)
    weights = np.vstack([np.ones(score.size), rng.poisson(1.0, (3, score.size))])
    auroc, ap = metrics.ranking_metrics(weights, y, metrics.rank_index(score))
    order = np.argsort(score, kind="stable")
    ranks = metrics.event_ranks(score[order], y[order])
    sorted_auroc, sorted_ap = metrics.sorted_ranking_metrics(weights[:, order], ranks)
    np.testing.assert_array_equal(sorted_auroc, auroc[:, 0])  # exact integer sums
    np.testing.assert_allclose(sorted_ap, ap[:, 0], rtol=1e-13)
    none = metrics.event_ranks(score[order], np.zeros(score.size))
    assert np.isnan(metrics.sorted_ranking_metrics(weights[:, order], none)).all()


def test_percentile_interval_needs_enough_finite_draws_and_shifts() -> None:
    draws = np.column_stack([np.arange(101.0), np.r_[np.arange(40.0), np.full(61, np.nan)]])
    low, high = metrics.percentile_interval(draws, confidence=0.9, shift=np.array([1.0, 0.0]))
    assert low[0] == pytest.approx(6.0) and high[0] == pytest.approx(96.0)
    assert np.isnan(low[1]) and np.isnan(high[1])  # 40 of 101 draws finite: no interval
    empty_low, _ = metrics.percentile_interval(np.empty((0, 2)))
    assert np.isnan(empty_low).all()


def test_wilson_interval_equals_the_score_formula() -> None:
    successes = np.array([0, 1, 7, 50, 99, 100, 3])
    trials = np.array([100, 100, 40, 100, 100, 100, 0])
    low, high = metrics.wilson_interval(successes, trials, confidence=0.95)
    z = metrics.z_value(0.95)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = successes / trials
        centre = (share + z**2 / (2 * trials)) / (1 + z**2 / trials)
        half = z * np.sqrt(share * (1 - share) / trials + z**2 / (4 * trials**2))
        half = half / (1 + z**2 / trials)
    np.testing.assert_allclose(low[:-1], (centre - half)[:-1], atol=1e-12)
    np.testing.assert_allclose(high[:-1], (centre + half)[:-1], atol=1e-12)
    assert np.isnan(low[-1]) and np.isnan(high[-1])
