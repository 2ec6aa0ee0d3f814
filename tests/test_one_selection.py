"""One selection (#13 item 6): train metrics, the audit, the label-choice audit, the audit's
mitigation policies and the outreach lists select exactly the same people at an operating
point, including through large ties in the score."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import seeds, selection
from pipeline.audit import cohort as audit_cohort
from pipeline.audit import equal_opportunity_thresholds as audit_equal_opportunity
from pipeline.audit import label_choice, mitigation
from pipeline.config import OperatingPointParams, OutreachParams
from pipeline.outreach.lists import select_outreach
from pipeline.outreach.policies import policy_priority, prioritise
from pipeline.train import scoring
from tests import simworld

KEY = b"test-key-for-one-selection"
SEED = 20261123
PLUS: tuple[str, ...] = ("Black", "Asian")


@pytest.fixture(scope="module")
def world() -> dict[str, pl.DataFrame]:
    built = simworld.simulate_world(4_000, seed=9)
    # scores rounded to 2 decimals: hundreds of people tie at the cut, as after isotonic
    # calibration; ranked as the train stage ranks them
    scored = built["scores"].select("person_id", "split", "outcome", pl.col("risk_score").round(2))
    need = built["truth"].select("person_id", pl.col("true_need").round(1).alias("need_score"))
    return {
        "scores": scoring.rank_scores(scored, root_seed=SEED),
        "features": built["features"],
        "need": need,
    }


def _ids(frame: pl.DataFrame, flag: str = "selected") -> set[str]:
    return set(frame.filter(pl.col(flag))["person_id"].to_list())


def _outreach(
    world: dict[str, pl.DataFrame], policy: str, mode: selection.CapacityMode, capacity: float
) -> set[str]:
    cohort = (
        world["scores"]
        .join(
            world["features"].select(
                "person_id", "icb_code", "practice_id", "imd_quintile", "ethnicity_group"
            ),
            on="person_id",
        )
        .lazy()
    )
    params = OutreachParams(
        policy=policy,  # type: ignore[arg-type]
        capacity_mode=mode,
        capacity=capacity,
        plus_groups=PLUS,  # type: ignore[arg-type]
    )
    prioritised = policy_priority(
        cohort, policy=params.policy, outreach=params, need=world["need"].lazy()
    )
    sizes = selection.list_sizes(prioritised, capacity_mode=mode, capacity=capacity, key="k")
    chosen = select_outreach(prioritised, sizes, capacity_mode=mode, key=KEY)
    return set(chosen["person_id"].to_list())


@pytest.mark.parametrize(("mode", "capacity"), [("share", 0.05), ("per_icb", 7)])
def test_every_stage_selects_the_same_people(
    world: dict[str, pl.DataFrame], mode: selection.CapacityMode, capacity: float
) -> None:
    scores, features = world["scores"], world["features"]

    trained = scores.hstack(
        scores.select("person_id").join(features, on="person_id", how="left").select("icb_code")
    )
    by_train = scoring.selected_at_capacity(trained, capacity_mode=mode, capacity=capacity)
    train_ids = set(trained.filter(by_train)["person_id"].to_list())

    sensitive = features.drop("split", "recorded_measure")
    cohort = audit_cohort.build_cohort(
        scores.lazy(),
        sensitive.lazy(),
        dimensions=("imd_quintile", "ethnicity_group"),
        capacity_mode=mode,
        capacity=capacity,
        split="all",
    ).join(world["need"], on="person_id", how="left")
    audit_ids = _ids(cohort)

    unit = selection.unit_column(mode)
    shares = label_choice.selection_shares(
        cohort, "imd_quintile", rankings={"risk_score": "risk_score"}, unit=unit
    )
    by_group = cohort.filter(pl.col("selected")).group_by("imd_quintile").len()
    assert dict(zip(shares["group"], shares["n_selected_by_risk_score"], strict=True)) == dict(
        zip(by_group["imd_quintile"], by_group["len"], strict=True)
    )
    like = cohort.filter(
        selection.select_like(pl.col("risk_score"), selected=pl.col("selected"), unit=unit)
    )
    policies = mitigation.policy_selections(
        cohort,
        thresholds=None,
        core20_uplift=1.5,
        plus_uplift=1.25,
        plus_groups=PLUS,
        unit=unit,
    )

    expected = _outreach(world, "risk", mode, capacity)
    assert len(expected) > 100
    # the cut falls inside ties: some people at a selected score are not selected
    tied = cohort.filter(
        pl.col("risk_score").is_in(cohort.filter("selected")["risk_score"].implode())
    )
    assert tied.filter(~pl.col("selected")).height > 0
    assert train_ids == audit_ids == _ids(like) == _ids(policies, "selected_risk") == expected
    for audit_policy, outreach_policy in (
        ("core20plus5", "core20plus5"),
        ("need_based", "need_adjusted"),
    ):
        chosen = _ids(policies, f"selected_{audit_policy}")
        assert chosen == _outreach(world, outreach_policy, mode, capacity), audit_policy
        assert chosen != expected, audit_policy  # the policy does change who is selected


@pytest.mark.parametrize(("mode", "capacity"), [("share", 0.05), ("per_icb", 7)])
def test_equal_opportunity_is_fitted_once_and_selects_the_same_people(
    world: dict[str, pl.DataFrame], mode: selection.CapacityMode, capacity: float
) -> None:
    """The audit's equal-opportunity policy and the outreach stage's fit the same thresholds
    (one function, the same seeded stream) and so select the same people."""
    scores, features = world["scores"], world["features"]
    cohort = audit_cohort.build_cohort(
        scores.lazy(),
        features.drop("split", "recorded_measure").lazy(),
        dimensions=("imd_quintile", "ethnicity_group"),
        capacity_mode=mode,
        capacity=capacity,
        split="all",
    ).join(world["need"], on="person_id", how="left")
    audit_fit = audit_equal_opportunity(
        cohort,
        operating_point=OperatingPointParams(capacity_mode=mode, capacity=capacity),
        rng=seeds.rng("equal_opportunity", "t", root=SEED),
    )
    params = OutreachParams(policy="equal_opportunity", capacity_mode=mode, capacity=capacity)
    outreach_cohort = scores.join(
        features.select("person_id", "icb_code", "practice_id", "imd_quintile", "ethnicity_group"),
        on="person_id",
    )
    prioritised, outreach_fit = prioritise(
        outreach_cohort, outreach=params, rng=seeds.rng("equal_opportunity", "t", root=SEED)
    )
    assert audit_fit is not None and audit_fit == outreach_fit
    assert len(set(audit_fit.values())) > 1  # the thresholds do differ by quintile

    unit = selection.unit_column(mode)
    chosen = mitigation.policy_selections(
        cohort,
        thresholds=audit_fit,
        core20_uplift=1.5,
        plus_uplift=1.25,
        plus_groups=PLUS,
        unit=unit,
    )
    sizes = selection.list_sizes(prioritised, capacity_mode=mode, capacity=capacity, key="k")
    listed = select_outreach(prioritised, sizes, capacity_mode=mode, key=KEY)
    audit_ids = _ids(chosen, "selected_equal_opportunity")
    assert audit_ids == set(listed["person_id"].to_list())
    assert audit_ids != _ids(chosen, "selected_risk")
