"""Outcomes of each policy's contacts (pipeline.impact): events averted and the SII change."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline import impact
from pipeline.audit.gradients import slope_index
from pipeline.config import ImpactParams, parse_params
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.errors import ParamsError

PARAMS = ImpactParams(
    uptake_by_imd_quintile={1: 0.4, 2: 0.4, 3: 0.5, 4: 0.5, 5: 0.5},
    uptake_default=0.45,
    relative_risk_reduction=0.2,
    n_bootstrap=100,
)


def _world(n_per_quintile: int = 2_000) -> pl.DataFrame:
    """Risk falls from quintile 1 (0.30) to 5 (0.10); policy ``deprived`` contacts the first
    fifth of quintiles 1-2, ``affluent`` of quintiles 4-5 (same list size)."""
    rng = np.random.default_rng(4)
    quintile = np.repeat(np.arange(1, 6), n_per_quintile)
    risk = np.clip(0.35 - 0.05 * quintile + rng.normal(0, 0.02, quintile.size), 0.01, 0.99)
    position = np.tile(np.arange(n_per_quintile), 5)
    picked = position < n_per_quintile // 5
    return pl.DataFrame(
        {
            "imd_quintile": quintile.astype(str),
            "ethnicity_group": rng.choice(["White", "Asian", "Black"], quintile.size),
            "true_need": risk,
            "risk_score": risk * 0.9,
            "selected_deprived": picked & (quintile <= 2),
            "selected_affluent": picked & (quintile >= 4),
        }
    )


def test_sii_is_the_fingertips_slope_index() -> None:
    values = np.array([30.0, 22.0, 20.0, 15.0, 9.0])
    population = np.array([900.0, 1_100.0, 1_000.0, 950.0, 1_050.0])
    expected, _ = slope_index(values, population)
    assert impact.sii(values, population) == pytest.approx(float(expected))
    resampled = impact.sii(np.stack([values, values]), np.stack([population, population * 2]))
    np.testing.assert_allclose(resampled, [expected, expected])


def test_averted_is_uptake_times_rrr_times_true_risk_of_the_selected() -> None:
    world = _world(10)
    frame = impact.averted_frame(
        world, policies=("deprived",), basis="true risk", impact=PARAMS
    ).with_columns(world["selected_deprived"], world["true_need"])
    expected = np.where(frame["selected_deprived"], frame["uptake"] * 0.2 * frame["true_need"], 0.0)
    np.testing.assert_allclose(frame["averted_deprived"], expected)
    assert frame.filter(pl.col("imd_quintile") == "1")["uptake"].unique().to_list() == [0.4]
    predicted = impact.averted_frame(
        world, policies=("deprived",), basis="calibrated predicted risk", impact=PARAMS
    )
    np.testing.assert_allclose(predicted["averted_deprived"], 0.9 * frame["averted_deprived"])


def test_targeting_the_deprived_end_narrows_the_gap_and_the_affluent_end_widens_it() -> None:
    tables = impact.impact_tables(
        _world(), basis="true risk", impact=PARAMS, rng=np.random.default_rng(1), confidence=0.95
    )
    gradient = {row["policy"]: row for row in tables["impact_gradient"].iter_rows(named=True)}
    deprived, affluent = gradient["deprived"], gradient["affluent"]
    assert deprived["sii_before"] < 0  # outcomes worse at the deprived end
    assert deprived["narrows"] and not deprived["widens"]
    assert affluent["widens"] and not affluent["narrows"]
    assert deprived["gap_change_ci_low"] <= deprived["gap_change"] <= deprived["gap_change_ci_high"]
    groups = tables["impact"]
    overall = groups.filter(pl.col("dimension") == "overall")
    by_quintile = groups.filter(pl.col("dimension") == "imd_quintile")
    for policy in ("deprived", "affluent"):
        total = overall.filter(pl.col("policy") == policy)["events_averted"].item()
        parts = by_quintile.filter(pl.col("policy") == policy)["events_averted"].sum()
        assert total == pytest.approx(parts)
    # 400 people x 0.4 uptake x 0.2 x (0.30 in Q1 + 0.25 in Q2): 17.6
    averted = overall.filter(pl.col("policy") == "deprived")["events_averted"].item()
    assert averted == pytest.approx(17.6, rel=0.02)


def test_the_sign_of_the_change_does_not_depend_on_the_assumed_effect() -> None:
    changes = []
    for rrr in (0.05, 0.4):
        params = PARAMS.model_copy(update={"relative_risk_reduction": rrr})
        tables = impact.impact_tables(
            _world(),
            basis="true risk",
            impact=params,
            rng=np.random.default_rng(1),
            confidence=0.95,
        )
        changes.append(tables["impact_gradient"].sort("policy")["gap_change"].to_numpy())
    np.testing.assert_array_equal(np.sign(changes[0]), np.sign(changes[1]))
    np.testing.assert_allclose(changes[1], 8 * changes[0], rtol=1e-6)


def test_published_like_counts_with_complementary_suppression() -> None:
    raw = pl.DataFrame(
        {
            "policy": ["risk"] * 4,
            "dimension": ["overall", "ethnicity_group", "ethnicity_group", "ethnicity_group"],
            "group": ["All", "Asian", "Black", "White"],
            "n": [1_000, 100, 200, 700],
            "n_selected": [50, 10, 10, 30],
            "expected_events": [100.2, 12.4, 20.6, 67.2],
            "events_averted": [24.6, 3.2, 5.1, 16.3],
            "events_averted_ci_low": [20.1, 1.0, 3.0, 12.0],
            "events_averted_ci_high": [29.0, 6.0, 7.0, 21.0],
        }
    )
    published = impact.publish_impact(raw, rule=Rule()).sort("group")
    rows = {row["group"]: row for row in published.iter_rows(named=True)}
    assert rows["All"]["n_events_averted"] == "25" and rows["All"]["n_expected_events"] == "100"
    assert rows["All"]["rate_before"] == pytest.approx(100.0)  # 100 / 1,000 published
    assert rows["All"]["rate_after"] == pytest.approx(75.0)
    # Asian (3) and Black (5) averted are 1-7: both hidden, with their intervals and rates
    for group in ("Asian", "Black"):
        assert rows[group]["n_events_averted"] == SUPPRESSED and rows[group]["suppressed"]
        assert rows[group]["rate_after"] is None and rows[group]["n_events_averted_ci_low"] is None
    assert rows["White"]["n_events_averted"] == "15" and not rows["White"]["suppressed"]
    gradient = pl.DataFrame({"policy": ["risk"], "risk_basis": ["true risk"], "sii_before": [-5.0]})
    quintiles = published.with_columns(pl.lit("imd_quintile").alias("dimension"))
    withheld = impact.publish_gradient(gradient, quintiles)
    assert withheld["sii_before"].to_list() == [None] and withheld["suppressed"].to_list() == [True]
    shown = impact.publish_gradient(gradient, quintiles.filter(~pl.col("suppressed")))
    assert shown["sii_before"].to_list() == [-5.0]


def test_uptake_params_need_every_quintile() -> None:
    with pytest.raises(ParamsError, match="uptake missing for IMD quintile"):
        parse_params(
            {
                "targets": {"t": {"outcome": "cvd_event", "follow_up_months": 60}},
                "impact": {"uptake_by_imd_quintile": {1: 0.4, 2: 0.4}},
            }
        )
    params = parse_params(
        {
            "targets": {"t": {"outcome": "cvd_event", "follow_up_months": 60}},
            "impact": {
                "uptake_by_imd_quintile": {"1": 0.3, "2": 0.3, "3": 0.3, "4": 0.3, "5": 0.3}
            },
        }
    )
    assert params.impact.uptake_by_imd_quintile[1] == 0.3


def test_pooled_cells_keep_the_point_estimates_exact() -> None:
    world = _world(500)
    policies = ("deprived", "affluent")
    frame = impact.averted_frame(world, policies=policies, basis="true risk", impact=PARAMS)
    cells = impact.resampling_cells(frame, policies=policies)
    assert cells.height < frame.height / 5 and cells["base"].sum() == frame.height
    for column in ("risk", "averted_deprived", "averted_affluent"):
        total = (cells[column] * cells["base"]).sum()
        assert total == pytest.approx(frame[column].sum(), rel=1e-12), column
    chosen = cells.filter(pl.col("selected_deprived"))["base"].sum()
    assert chosen == world["selected_deprived"].sum()


def test_uptake_by_ethnic_group_combines_with_the_quintile_on_the_log_odds_scale() -> None:
    params = PARAMS.model_copy(update={"uptake_by_ethnicity_group": {"Asian": 0.6, "Black": 0.3}})
    frame = impact.averted_frame(
        _world(), policies=("deprived",), basis="true risk", impact=params
    ).unique(["imd_quintile", "ethnicity_group"])

    def logit(p: float) -> float:
        return float(np.log(p / (1.0 - p)))

    for row in frame.iter_rows(named=True):
        quintile = PARAMS.uptake_by_imd_quintile[int(row["imd_quintile"])]  # type: ignore[index]
        group = {"Asian": 0.6, "Black": 0.3}.get(row["ethnicity_group"])
        expected = (
            quintile
            if group is None
            else 1.0 / (1.0 + np.exp(-(logit(quintile) + logit(group) - logit(0.45))))
        )
        assert row["uptake"] == pytest.approx(expected)
    # a group above the national uptake takes up more in every quintile, one below less
    by_group = frame.group_by("imd_quintile", "ethnicity_group").agg(pl.col("uptake").first())
    wide = by_group.pivot("ethnicity_group", index="imd_quintile", values="uptake")
    assert (wide["Asian"] > wide["White"]).all() and (wide["Black"] < wide["White"]).all()
    # the default (no ethnic-group uptake) leaves the quintile's uptake alone
    plain = impact.averted_frame(_world(), policies=("deprived",), basis="true risk", impact=PARAMS)
    assert plain.group_by("imd_quintile").agg(pl.col("uptake").n_unique())["uptake"].max() == 1


def test_ethnic_group_uptake_needs_a_proper_anchor_and_known_groups() -> None:
    with pytest.raises(ParamsError, match="uptake_default must be strictly between 0 and 1"):
        parse_params(
            {"impact": {"uptake_default": 1.0, "uptake_by_ethnicity_group": {"Asian": 0.6}}}
        )
    with pytest.raises(ParamsError, match="uptake_by_ethnicity_group"):
        parse_params({"impact": {"uptake_by_ethnicity_group": {"Martian": 0.6}}})
