"""Comparators, flag rules and multiplicity (issue 13 items 2-4): funnel plots for
geographies, calibration against 1, equal opportunity against a usable reference, and
Benjamini-Hochberg within each dimension."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline.audit import flags, funnel
from pipeline.config import parse_params
from tests import simworld

DIMENSIONS = ["imd_quintile", "region", "icb_code", "ethnicity_group", "sex", "age_band"]


# --- pure pieces ------------------------------------------------------------------------------


def test_bh_q_values_match_the_step_up_rule_and_keep_missing() -> None:
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    q = flags.bh_q_values(p)
    # sorted p 0.01, 0.03, 0.04, 0.2 (m = 4): q = min over k >= i of p_k m / k
    assert q[0] == pytest.approx(0.04)
    assert q[3] == pytest.approx(0.04 * 4 / 3)
    assert q[1] == pytest.approx(0.04 * 4 / 3)
    assert q[4] == pytest.approx(0.2)
    assert math.isnan(q[2])


def test_p_from_interval_recovers_a_normal_test() -> None:
    # log ratio 0.2 with se 0.1: z = 2
    low, high = np.exp(0.2 - 1.959964 * 0.1), np.exp(0.2 + 1.959964 * 0.1)
    p = flags.p_from_interval(
        np.array([math.exp(0.2)]), np.array([low]), np.array([high]), confidence=0.95
    )
    assert p[0] == pytest.approx(0.0455, abs=1e-3)
    assert np.isnan(flags.p_from_interval(np.ones(1), np.zeros(1), np.ones(1), confidence=0.95))[0]


def test_not_recorded_and_undefined_groups_are_never_a_reference() -> None:
    groups = ("Asian", "Not recorded", "White")
    sizes = np.array([100.0, 900.0, 500.0])
    assert flags.preferred_reference(groups, sizes, None) == "White"
    # the preferred reference has no one selected: the largest usable group takes over
    values = np.array([0.1, 0.2, 0.0])
    assert groups[flags.reference_index(groups, sizes, values, preferred="White")] == "Asian"
    assert not flags.may_be_reference("Not recorded, IMD 1")


def _funnel_frame(observed: list[float], expected: list[float]) -> pl.DataFrame:
    n = len(observed)
    return pl.DataFrame(
        {
            "dimension": ["icb_code"] * n,
            "group": [f"Q{i:02d}" for i in range(n)],
            "metric": ["tpr"] * n,
            "observed": observed,
            "expected": expected,
            "variance": expected,  # Poisson: k = 1
        }
    )


def test_equal_opportunity_is_flagged_only_when_a_group_is_reached_less() -> None:
    rows = pl.DataFrame(
        {
            "dimension": ["imd_quintile", "imd_quintile", "age_band", "sex", "sex", "sex"],
            "metric": ["tpr", "tpr", "tpr", "oe_ratio", "oe_ratio", "oe_ratio"],
            "ratio": [0.6, 1.9, 0.3, None, None, None],
            "value": [0.1, 0.4, 0.05, 1.3, 0.8, 1.05],
            "ci_low": [0.05, 0.3, 0.01, 1.15, 0.7, 0.9],
            "ci_high": [0.15, 0.5, 0.1, 1.45, 0.88, 1.2],
        }
    )
    material = rows.select(
        flags.material_expr(fair_low=0.8, oe_material=1.1, risk_factor_dimensions=("age_band",))
    ).to_series()
    # fewer cases reached: flagged; more reached: context; age (a risk factor): never;
    # calibration both ways (either mis-ranks the group), not when the interval holds 1
    assert material.to_list() == [True, False, False, True, True, False]


def test_funnel_limits_follow_the_expected_count_without_overdispersion() -> None:
    expected = [100.0, 400.0, 25.0, 100.0, 100.0]
    frame = funnel.funnel_statistics(_funnel_frame([100.0, 410.0, 24.0, 95.0, 104.0], expected))
    assert not frame["overdispersed"].any() and (frame["tau2"] == 0).all()
    first = frame.row(0, named=True)
    assert first["limit_95_high"] == pytest.approx(1 + 1.959964 / 10, abs=1e-4)
    assert first["limit_998_high"] == pytest.approx(1 + 3.090232 / 10, abs=1e-4)
    assert frame["ratio"][1] == pytest.approx(410 / 400)


def test_funnel_overdispersion_widens_limits_and_calms_the_extremes() -> None:
    rng = np.random.default_rng(3)
    expected = rng.uniform(50, 500, 40)
    true_ratio = np.exp(rng.normal(0, 0.25, 40))  # real between-area variation
    observed = rng.poisson(expected * true_ratio).astype(float)
    frame = funnel.funnel_statistics(_funnel_frame(list(observed), list(expected)))
    assert frame["overdispersed"].all() and frame["tau2"][0] > 0.01
    naive = (observed / expected - 1) / np.sqrt(1 / expected)
    assert np.abs(frame["z_score"].to_numpy()).max() < np.abs(naive).max()


def test_a_suppressed_point_is_left_out_of_the_funnel() -> None:
    frame = funnel.funnel_statistics(
        _funnel_frame([100.0, None, 30.0, 98.0], [100.0, 5.0, 25.0, 101.0])  # type: ignore[list-item]
    )
    hidden = frame.row(1, named=True)
    assert hidden["ratio"] is None and hidden["z_score"] is None and hidden["p_value"] is None


# --- the audit on simulated worlds ------------------------------------------------------------


def _audited(world: dict[str, pl.DataFrame], **audit: object) -> dict[str, pl.DataFrame]:
    params = parse_params(
        {
            "targets": {"sim_target": {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {
                "dimensions": DIMENSIONS,
                "n_bootstrap": 200,
                "n_monte_carlo": 200,
                "split": "all",
                **audit,
            },
        }
    )
    return simworld.audit_world(world, params)[2]


def _under_predicted(world: dict[str, pl.DataFrame], group: str, factor: float) -> dict:
    """The same world whose model under-predicts ``group``'s risk by ``factor`` (O/E ~ factor)."""
    ethnic = world["features"].select("person_id", "ethnicity_group")
    scores = (
        world["scores"]
        .join(ethnic, on="person_id", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("ethnicity_group") == group)
            .then(pl.col("risk_score") / factor)
            .otherwise("risk_score")
            .alias("risk_score")
        )
        .with_columns(
            pl.col("risk_score").rank("ordinal", descending=True).cast(pl.Int64).alias("risk_rank")
        )
        .drop("ethnicity_group")
    )
    return world | {"scores": scores}


@pytest.fixture(scope="module")
def null_world() -> dict[str, pl.DataFrame]:
    return simworld.simulate_world(
        60_000, under_recording=0.0, access=0.0, need_gradient=0.0, seed=21
    )


def test_a_planted_under_prediction_is_flagged_as_under_prediction(null_world) -> None:
    published = _audited(_under_predicted(null_world, "Mixed", 1.25))
    oe = published["group_metrics"].filter(
        (pl.col("dimension") == "ethnicity_group") & (pl.col("metric") == "oe_ratio")
    )
    mixed = oe.filter(pl.col("group") == "Mixed").row(0, named=True)
    assert 1.1 < mixed["value"] < 1.45
    assert mixed["comparator"] == "1 (calibration)"
    assert mixed["flagged"] and mixed["flag_reason"] == "under-prediction"
    assert mixed["q_value"] < 0.05
    # judged against 1, not against White: the others are not flagged
    assert oe.filter(pl.col("flagged"))["group"].to_list() == ["Mixed"]


def test_no_planted_difference_few_or_no_flags_after_fdr(null_world) -> None:
    published = _audited(null_world)
    metrics = published["group_metrics"].filter(pl.col("dimension") != "overall")
    compared = metrics.filter(pl.col("p_value").is_not_null())
    assert compared.height >= 100
    # (age really changes risk in this world, but calibration and reach hold within age too)
    assert metrics["flagged"].sum() <= max(1, round(0.05 * compared.height))
    assert not published["funnel"]["flagged"].any()


def test_geographies_are_judged_on_the_funnel_and_nothing_is_infinite(null_world) -> None:
    published = _audited(null_world)
    icb = published["group_metrics"].filter(pl.col("dimension") == "icb_code")
    assert icb["reference_group"].is_null().all() and not icb["is_reference"].any()
    tpr = icb.filter(pl.col("metric") == "tpr")
    assert (tpr["comparator"] == "population (funnel)").all()
    points = published["funnel"].filter(pl.col("dimension") == "icb_code")
    assert set(points["metric"]) == set(funnel.FUNNEL_METRICS)
    assert points.filter(pl.col("metric") == "tpr").height == len(simworld.ICBS)
    joined = tpr.join(points.filter(pl.col("metric") == "tpr"), on="group", suffix="_funnel")
    assert (joined["ratio"] == joined["ratio_funnel"]).all()
    assert (joined["flagged"] == joined["flagged_funnel"]).all()
    # the ratio is the published observed count over the expected count: nothing finer
    for row in points.filter(~pl.col("suppressed")).head(10).iter_rows(named=True):
        assert row["ratio"] == pytest.approx(int(row["n_observed"]) / row["expected"], rel=2e-3)
    for name, frame in published.items():
        for column, dtype in frame.schema.items():
            if dtype == pl.Float64:
                values = frame[column].drop_nulls()
                assert values.is_finite().all(), f"{name}.{column} holds inf or NaN"


def test_an_age_band_with_nobody_selected_is_never_the_reference() -> None:
    world = simworld.simulate_world(20_000, seed=4)
    young = world["features"].filter(pl.col("age_band") == "18-34")["person_id"]
    scores = (
        world["scores"]
        .with_columns(  # nobody aged 18-34 reaches the list
            pl.when(pl.col("person_id").is_in(young.implode()))
            .then(pl.col("risk_score") * 0.01)
            .otherwise("risk_score")
            .alias("risk_score")
        )
        .with_columns(pl.col("risk_score").rank("ordinal", descending=True).alias("risk_rank"))
    )
    published = _audited(
        world | {"scores": scores},
        reference_groups={"age_band": "18-34"},
        dimensions=["age_band"],
    )
    metrics = published["group_metrics"].filter(pl.col("dimension") == "age_band")
    selection = metrics.filter(pl.col("metric") == "selection_rate")
    assert selection.filter(pl.col("group") == "18-34")["value"].item() == 0.0
    reference = selection.filter(pl.col("is_reference")).row(0, named=True)
    assert reference["group"] != "18-34" and reference["value"] > 0
    # the preferred reference stays where its metric is defined and non-zero
    base = metrics.filter((pl.col("metric") == "base_rate") & pl.col("is_reference"))
    assert base["group"].item() == "18-34"
    assert metrics["ratio"].drop_nulls().is_finite().all()
