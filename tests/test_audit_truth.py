"""Checked against planted truth: small synthetic worlds with known recording/access bias.

The world (``tests/simworld.py``) under-records need in IMD quintiles 1-2 and for Black
and Asian people and lowers their recorded outcomes (access); at the same score quintile 1 then
has 1 / (1 - 0.25) = 1.33 times the true need of quintile 5, and Black/Asian people 1.25 times
that of White people. With every bias at 0 the score is the true risk for everyone.
"""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.audit import audit_summary
from pipeline.config import parse_params
from tests import simworld as simulate

DIMENSIONS = ["imd_quintile", "region", "ethnicity_group", "sex", "age_band"]


def _audit(*, under_recording: float, access: float, need_gradient: float = 1.0, seed: int):
    params = parse_params(
        {
            "targets": {"sim_target": {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {
                "dimensions": DIMENSIONS,
                "label_choice_dimensions": ["imd_quintile", "ethnicity_group", "region"],
                "n_bootstrap": 200,
                "n_monte_carlo": 400,
                "split": "all",
            },
        }
    )
    world = simulate.simulate_world(
        30_000,
        under_recording=under_recording,
        access=access,
        need_gradient=need_gradient,
        seed=seed,
    )
    cohort, tables, published = simulate.audit_world(world, params, with_truth=True)
    summary = audit_summary(
        tables,
        audit=params.audit,
        operating_point=params.operating_point,
        target="sim_target",
        n_people=cohort.height,
        group_metrics=published["group_metrics"],
        rule=params.disclosure,
    )
    # the flags that count are the published ones (materiality and the FDR are applied there)
    shown = {name: published[name] for name in ("group_metrics", "funnel")}
    return tables | shown, summary.model_dump()


def test_default_biases_name_the_planted_groups_and_size_the_effect() -> None:
    tables, payload = _audit(under_recording=1.0, access=1.0, seed=11)
    check = payload["planted_bias_check"]
    assert check["available"]
    named = {(g["dimension"], g["group"]) for g in check["disadvantaged_groups"]}
    planted = {(d, g) for d, groups in simulate.DISADVANTAGED.items() for g in groups}
    assert planted <= named
    # nothing else is named: no region, no unbiased ethnic group, no other quintile
    assert named - planted == set()
    ratios = {(g["dimension"], g["group"]): g for g in check["disadvantaged_groups"]}
    q1 = ratios[("imd_quintile", "1")]
    planted_q1 = 1 / (1 - simulate.PLANTED_IMD_UNDER_RECORDING)
    assert q1["need_ratio"] == pytest.approx(planted_q1, abs=0.06)
    assert q1["need_ratio_ci_low"] < planted_q1 < q1["need_ratio_ci_high"] + 0.03
    black = ratios[("ethnicity_group", "Black")]
    assert black["need_ratio"] == pytest.approx(
        1 / (1 - simulate.PLANTED_ETHNICITY_UNDER_RECORDING), abs=0.08
    )
    # with truth, ranking by true need would give quintile 1 a larger share of the selection
    shares = tables["selection_shares"].filter(
        (pl.col("dimension") == "imd_quintile") & (pl.col("group") == "1")
    )
    assert shares["share_by_true_need"][0] > shares["share_by_risk_score"][0]


def test_unbiased_world_flags_nothing_beyond_chance() -> None:
    tables, payload = _audit(under_recording=0.0, access=0.0, seed=12)
    check = payload["planted_bias_check"]
    assert check["comparisons"] >= 10
    assert len(check["disadvantaged_groups"]) <= round(0.05 * check["comparisons"])
    need = tables["need_gaps"].filter(~pl.col("is_reference"))
    assert (need["need_ratio"] - 1).abs().max() < 0.02  # no material gap anywhere
    # calibration holds in every group: no O/E disparity flagged
    metrics = tables["group_metrics"]
    assert not metrics.filter(pl.col("metric") == "oe_ratio")["flag"].any()


def test_fully_null_world_aequitas_flags_at_most_chance() -> None:
    # no bias and no need gradient: every group has the same risk, selection and error rates
    tables, payload = _audit(under_recording=0.0, access=0.0, need_gradient=0.0, seed=13)
    # (age really changes risk in this world, so age bands are not null comparisons)
    comparisons = tables["group_metrics"].filter(
        ~pl.col("is_reference")
        & ~pl.col("dimension").is_in(["overall", "age_band"])
        & pl.col("stable")
    )
    flagged = comparisons.filter(
        pl.col("metric").is_in(["selection_rate", "tpr", "fpr", "fnr", "ppv", "oe_ratio"])
    )
    assert flagged.height >= 60
    # about 1 in 20 at 95% (TPR, FNR and PPV of one group are correlated: allow 1.5x)
    assert flagged["flag"].sum() <= 0.075 * flagged.height
    assert payload["flagged_comparisons"] == int(tables["group_metrics"]["flag"].sum())
