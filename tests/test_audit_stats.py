"""Gradients (SII/RII, WHO HEAT) and label-choice pieces on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.audit import gradients, label_choice


def test_sii_rii_of_an_exact_linear_gradient() -> None:
    # equal-sized deciles, value falls linearly from most (x~0) to least deprived (x~1)
    population = np.full(10, 1_000.0)
    rank = (np.arange(10) + 0.5) / 10
    values = 0.30 - 0.20 * rank
    sii, rii = gradients.slope_index(values, population)
    assert sii == pytest.approx(-0.20)
    assert rii == pytest.approx(0.10 / 0.30)  # least deprived end / most deprived end


def test_sii_uses_population_weighted_rank_midpoints() -> None:
    population = np.array([100.0, 300.0])
    values = np.array([0.5, 0.1])
    sii, _ = gradients.slope_index(values, population)
    # midpoints 0.125 and 0.625: the slope through the two points
    assert sii == pytest.approx((0.1 - 0.5) / (0.625 - 0.125))


def test_heat_measures_by_hand() -> None:
    values = np.array([0.2, 0.1, 0.4])
    population = np.array([50.0, 30.0, 20.0])
    out = gradients.heat_measures(
        values, population, direction="favourable", eligible=np.array([True, True, True])
    )
    share = population / population.sum()
    mu = float(np.sum(share * values))
    assert out["mean"] == pytest.approx(mu)
    assert out["between_group_variance"] == pytest.approx(np.sum(share * (values - mu) ** 2))
    assert out["mean_difference_from_best"] == pytest.approx(np.sum(share * (0.4 - values)))
    ratio = values / mu
    assert out["theil_index"] == pytest.approx(np.sum(share * ratio * np.log(ratio)))
    assert out["population_attributable_fraction"] == pytest.approx((0.4 - mu) / mu)
    adverse = gradients.heat_measures(
        values, population, direction="adverse", eligible=np.array([True, False, True])
    )
    assert adverse["best"] == pytest.approx(0.2)  # lowest among eligible groups


def test_deprivation_gradient_has_monte_carlo_ci_around_estimate() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    decile = rng.integers(1, 11, n)
    outcome = rng.random(n) < 0.25 - 0.015 * decile
    cohort = pl.DataFrame(
        {
            "imd_decile": decile.astype(str),
            "outcome": outcome.astype(np.int8),
            "selected": rng.random(n) < 0.05,
            "risk_score": rng.random(n) * 0.2,
            "outcome_case": outcome,
        }
    )
    table = gradients.deprivation_gradients(
        cohort, case="outcome_case", n_monte_carlo=500, rng=rng, confidence=0.95
    )
    sii = table.filter((pl.col("indicator") == "outcome_rate") & (pl.col("measure") == "sii"))
    value, low, high = sii.row(0)[3:6]
    # true SII: from decile 1 to 10 the rate falls by 0.135 over a rank span of 0.9
    assert low < value < high
    assert low < -0.135 / 0.9 < high


def test_need_gap_same_score_recovers_a_planted_ratio() -> None:
    rng = np.random.default_rng(1)
    n = 30_000
    group = rng.choice(["ref", "low"], n)
    need = rng.gamma(2.0, 1.0, n)
    # "low" is scored on under-recorded need: at the same score they need 1/0.8 = 1.25x more
    score = np.where(group == "low", need * 0.8, need)
    cohort = pl.DataFrame({"g": group, "risk_score": score, "true_need": need})
    cohort = label_choice.add_score_percentile(cohort, n_bins=50)
    curve = label_choice.need_by_percentile(cohort, "g", "true_need")
    gap = label_choice.need_gap_same_score(curve, reference="ref", confidence=0.95).sort("group")
    low = gap.filter(pl.col("group") == "low").row(0, named=True)
    assert low["need_ratio"] == pytest.approx(1.25, abs=0.03)
    assert low["need_ratio_ci_low"] > 1.0
    ref = gap.filter(pl.col("group") == "ref").row(0, named=True)
    assert ref["need_gap"] == 0.0 and ref["need_ratio_ci_low"] is None


def test_selection_shares_same_capacity_under_each_ranking() -> None:
    cohort = pl.DataFrame(
        {
            "g": ["a", "a", "b", "b", "b", "a"],
            "risk_score": [0.9, 0.8, 0.1, 0.2, 0.3, 0.05],
            "true_need": [1.0, 1.0, 5.0, 4.0, 0.0, 0.0],
            "selected": [True, True, False, False, False, False],
            "risk_rank": [1, 2, 5, 4, 3, 6],
        }
    )
    shares = label_choice.selection_shares(
        cohort, "g", rankings={"risk_score": "risk_score", "true_need": "true_need"}, unit=None
    )
    assert shares["n_selected_by_risk_score"].to_list() == [2, 0]
    assert shares["n_selected_by_true_need"].to_list() == [0, 2]
    assert shares["share_by_true_need"].to_list() == [0.0, 1.0]
