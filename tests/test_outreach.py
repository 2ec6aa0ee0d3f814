"""Stage outreach: capacity, policies, pseudonyms, reasons, determinism and the summary."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from pipeline import contract, selection
from pipeline import features as feature_stage
from pipeline.config import OutreachParams, Params, parse_params
from pipeline.errors import ContractError, ParamsError, StageError
from pipeline.io import Paths, write_parquet
from pipeline.outreach import (
    OUTREACH_COLUMNS,
    equal_opportunity_thresholds,
    feature_glossary,
    lists,
    policy_priority,
    reasons,
    run,
    select_outreach,
)
from pipeline.outreach import summary as summary_mod
from pipeline.outreach.reasons import attach_reasons, feature_values, word_reasons
from pipeline.pseudonyms import pseudonymise
from tests.manifests import write_manifest

KEY = b"test-secret-not-for-real-use"
ICBS = {"QHM": "North East and Yorkshire", "QMJ": "London", "QT6": "South West"}
FEATURES = [
    "age",
    "imd_decile",
    "n_emergency_admission_12m",
    "has_diabetes",
    "latest_hba1c",
    "hba1c_missing",
    "has_copd",
    "latest_sbp",
    "practice_prevalence_diabetes",
    "ethnicity_code",
]
TARGET = "emergency_admission_12m"


def _population(n: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    icb = rng.choice(list(ICBS), n)
    practice = np.char.add(icb.astype(str), rng.integers(1, 3, n).astype(str))
    diabetes = (rng.random(n) < 0.15).astype(np.int8)
    hba1c = np.where(diabetes == 1, rng.normal(64, 8, n), rng.normal(38, 4, n)).round(0)
    hba1c_missing = (rng.random(n) < 0.3).astype(np.int8)
    frame = pl.DataFrame(
        {
            "person_id": [f"P{i:05d}" for i in range(n)],
            "split": rng.choice(["train", "validation", "test"], n, p=[0.6, 0.2, 0.2]),
            "icb_code": icb,
            "practice_id": practice,
            "region": [ICBS[code] for code in icb],
            "imd_decile": rng.integers(1, 11, n).astype(np.int8),
            "ethnicity_group": rng.choice(list(contract.BROAD_ETHNIC_GROUPS), n),
            "age": rng.integers(18, 95, n).astype(np.int16),
            "sex": rng.choice(["F", "M"], n),
            "n_emergency_admission_12m": rng.poisson(0.3, n).astype(np.int32),
            "has_diabetes": diabetes,
            "latest_hba1c": np.where(hba1c_missing == 1, np.nan, hba1c),
            "hba1c_missing": hba1c_missing,
            "has_copd": (rng.random(n) < 0.05).astype(np.int8),
            "latest_sbp": rng.normal(135, 15, n).round(0),
        }
    ).with_columns(
        pl.col("latest_hba1c").fill_nan(None),
        contract.imd_quintile_expr(pl.col("imd_decile")).alias("imd_quintile"),
        pl.col("ethnicity_group")
        .replace_strict(
            {group: i for i, group in enumerate(contract.BROAD_ETHNIC_GROUPS)},
            return_dtype=pl.Int8,
        )
        .alias("ethnicity_code"),
    )
    frame = frame.with_columns(
        pl.col("has_diabetes").mean().over("practice_id").alias("practice_prevalence_diabetes")
    )
    logit = (
        -3.0
        + 0.03 * (frame["age"].to_numpy() - 50)
        + 0.9 * frame["n_emergency_admission_12m"].to_numpy()
        + 0.8 * frame["has_diabetes"].to_numpy()
        + 1.0 * frame["has_copd"].to_numpy()
        - 0.08 * frame["imd_decile"].to_numpy()
    )
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return frame.with_columns(pl.Series("outcome", outcome))


def _train(frame: pl.DataFrame) -> lgb.Booster:
    data = lgb.Dataset(
        frame.select(FEATURES).to_numpy(),
        label=frame["outcome"].to_numpy(),
        feature_name=FEATURES,
        params={"verbose": -1},
    )
    return lgb.train(
        {
            "objective": "binary",
            "num_leaves": 7,
            "learning_rate": 0.2,
            "min_data_in_leaf": 20,
            "num_threads": 1,
            "deterministic": True,
            "seed": 1,
            "verbose": -1,
        },
        data,
        num_boost_round=15,
    )


def _scores(frame: pl.DataFrame, booster: lgb.Booster) -> pl.DataFrame:
    risk = booster.predict(frame.select(FEATURES).to_numpy())
    n = frame.height
    scored = frame.select("person_id", "split", "outcome").with_columns(
        pl.Series("risk_score", risk)
    )
    ranked = scored.with_columns(
        pl.col("risk_score").rank("ordinal", descending=True).cast(pl.Int64).alias("risk_rank")
    )
    return ranked.with_columns(
        (10 - ((pl.col("risk_rank") - 1) * 10 // n)).cast(pl.Int8).alias("risk_decile"),
        pl.when(pl.col("risk_rank") <= n * 0.05)
        .then(pl.lit("very high"))
        .when(pl.col("risk_rank") <= n * 0.20)
        .then(pl.lit("high"))
        .when(pl.col("risk_rank") <= n * 0.5)
        .then(pl.lit("moderate"))
        .otherwise(pl.lit("low"))
        .alias("risk_tier"),
    ).select(list(contract.SCORES_SCHEMA))


def make_world(n_people: int = 1_500) -> dict[str, Any]:
    """A small population, a model trained on it and its scores (the outreach tests' world)."""
    population = _population(n_people)
    booster = _train(population)
    return {"population": population, "booster": booster, "scores": _scores(population, booster)}


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    return make_world()


def _params(tmp_path: Path, **outreach: Any) -> Params:
    raw = {
        "targets": {
            TARGET: {"outcome": "emergency_admission", "follow_up_months": 12},
        },
        "outreach": {"secret_file": str(tmp_path / "no-such-key"), **outreach},
    }
    return parse_params(raw)


def _real_entries() -> dict[str, contract.FeatureEntry]:
    """The default params' manifest entries (the wording the real lists use)."""
    params = _params(Path("."))
    manifest = feature_stage.build_manifest(
        params.features, index_date=params.index_date, seed=params.seed
    )
    return manifest.entries


def _project(tmp_path: Path, world: dict[str, Any], *, truth: bool = True) -> Paths:
    """Features, manifest, scores and model (and truth) of the world."""
    paths = Paths.at(tmp_path)
    population: pl.DataFrame = world["population"]
    table = population.select(
        "person_id",
        "split",
        "practice_id",
        "icb_code",
        "imd_quintile",
        "ethnicity_group",
        "region",
        "sex",
        *FEATURES,
    )
    write_parquet(table, paths.features / "features.parquet", sort_by="person_id")
    write_manifest(table, paths.features / "manifest.json", inputs=FEATURES)
    write_parquet(world["scores"], paths.scores / f"{TARGET}.parquet", sort_by="person_id")
    (paths.models / TARGET).mkdir(parents=True)
    world["booster"].save_model(str(paths.models / TARGET / "model.txt"))
    if truth:
        need = population.select(
            "person_id",
            pl.lit(TARGET).alias("target"),
            (pl.col("has_diabetes") + pl.col("has_copd") + pl.col("n_emergency_admission_12m"))
            .cast(pl.Float64)
            .alias("true_need"),
        )
        # another target's need, the reverse order: the summary must read its own target's
        other = need.with_columns(pl.lit("other_target").alias("target"), -pl.col("true_need"))
        write_parquet(pl.concat([need, other]), paths.truth / "oracle.parquet", sort_by="person_id")
    return paths


def _cohort(world: dict[str, Any]) -> pl.LazyFrame:
    return (
        world["scores"]
        .join(
            world["population"].select(
                "person_id", "practice_id", "icb_code", "imd_quintile", "ethnicity_group", "region"
            ),
            on="person_id",
        )
        .lazy()
    )


# --- Capacity and params ---


def test_capacity_share_per_icb_and_per_practice(world: dict[str, Any]) -> None:
    cohort = _cohort(world)
    share = selection.list_sizes(
        cohort, capacity_mode="share", capacity=0.1, key="outreach.capacity"
    )
    assert share["list_size"].to_list() == [150]
    per_icb = selection.list_sizes(
        cohort, capacity_mode="per_icb", capacity=20, key="outreach.capacity"
    )
    assert per_icb["unit"].to_list() == sorted(ICBS)
    assert set(per_icb["list_size"].to_list()) == {20}
    per_practice = selection.list_sizes(
        cohort, capacity_mode="per_practice", capacity=5, key="outreach.capacity"
    )
    assert per_practice.height == 6


@pytest.mark.parametrize(
    ("mode", "capacity", "message"),
    [
        ("share", 0.0001, "selects nobody"),
        ("per_icb", 10_000, "above the eligible cohort"),
        ("per_practice", 5_000, "above the eligible cohort"),
    ],
)
def test_capacity_out_of_range_names_the_key(world, mode, capacity, message) -> None:
    with pytest.raises(ParamsError, match=rf"outreach\.capacity.*{message}"):
        selection.list_sizes(
            _cohort(world), capacity_mode=mode, capacity=capacity, key="outreach.capacity"
        )


@pytest.mark.parametrize(
    ("outreach", "key"),
    [
        ({"capacity": 0}, "outreach.capacity"),
        ({"capacity": -3, "capacity_mode": "per_icb"}, "outreach.capacity"),
        ({"capacity": 1.5}, "outreach"),
        ({"policy": "loudest_voice"}, "outreach.policy"),
        ({"capacity_mode": "per_street"}, "outreach.capacity_mode"),
    ],
)
def test_bad_outreach_params_fail_naming_the_key(tmp_path, outreach, key) -> None:
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        _params(tmp_path, **outreach)


def test_unknown_target_or_missing_secret_fails_before_any_work(
    tmp_path: Path, world, monkeypatch
) -> None:
    paths = _project(tmp_path, world)
    monkeypatch.delenv("PHM_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ParamsError, match=r"outreach\.targets: unknown target 'nope'"):
        run(_params(tmp_path, targets=["nope"]), paths)
    with pytest.raises(StageError, match="PHM_PSEUDONYM_KEY"):
        run(_params(tmp_path), paths)
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    with pytest.raises(ParamsError, match=r"outreach\.capacity"):
        run(_params(tmp_path, capacity_mode="per_icb", capacity=100_000), paths)
    assert not paths.outreach.exists()
    assert not (paths.reports / "outreach_summary.json").exists()


# --- Policies and selection ---


def test_ties_are_broken_by_risk_rank_not_pseudonym_and_ranks_are_per_icb() -> None:
    n = 40
    risk_rank = np.random.default_rng(2).permutation(n) + 1
    cohort = pl.DataFrame(
        {
            "person_id": [f"P{i:03d}" for i in range(n)],
            "priority": [0.5] * n,
            "risk_score": [0.5] * n,
            "risk_rank": risk_rank,
            "icb_code": ["QHM", "QMJ"] * (n // 2),
            "practice_id": ["A", "B"] * (n // 2),
        }
    ).lazy()
    capacity = selection.list_sizes(
        cohort, capacity_mode="share", capacity=0.25, key="outreach.capacity"
    )
    chosen = select_outreach(cohort, capacity, capacity_mode="share", key=KEY)
    expected = pseudonymise(pl.Series([f"P{i:03d}" for i in np.argsort(risk_rank)[:10]]), KEY)
    assert sorted(chosen["pseudonym"].to_list()) == sorted(expected.to_list())
    for _, group in chosen.group_by("icb_code"):
        assert group.sort("rank")["rank"].to_list() == list(range(1, group.height + 1))
        assert group.sort("rank")["risk_rank"].is_sorted()


def test_per_icb_capacity_takes_the_top_of_each_icb(world) -> None:
    prioritised = policy_priority(_cohort(world), policy="risk", outreach=OutreachParams())
    capacity = selection.list_sizes(
        prioritised, capacity_mode="per_icb", capacity=12, key="outreach.capacity"
    )
    chosen = select_outreach(prioritised, capacity, capacity_mode="per_icb", key=KEY)
    assert chosen.group_by("icb_code").len()["len"].to_list() == [12, 12, 12]
    everyone = prioritised.collect()
    for code, group in chosen.group_by("icb_code"):
        floor = group["risk_score"].min()
        above = everyone.filter((pl.col("icb_code") == code[0]) & (pl.col("risk_score") > floor))
        assert above.height < 12  # nobody with a higher score was left out


def test_core20plus5_uplift_moves_core20_and_plus_people_up() -> None:
    cohort = pl.DataFrame(
        {
            "person_id": ["a", "b", "c", "d"],
            "risk_score": [0.30, 0.25, 0.22, 0.20],
            "imd_quintile": [3, 1, 5, 1],
            "ethnicity_group": ["White", "White", "Black", "Asian"],
        }
    ).lazy()
    params = OutreachParams(policy="core20plus5", core20_uplift=1.5, plus_uplift=1.25)
    ranked = policy_priority(cohort, policy="core20plus5", outreach=params).collect()
    priority = dict(zip(ranked["person_id"], ranked["priority"], strict=True))
    assert priority["b"] == pytest.approx(0.375)
    assert priority["c"] == pytest.approx(0.275)
    assert priority["d"] == pytest.approx(0.20 * 1.5 * 1.25)
    assert sorted(priority, key=priority.get, reverse=True) == ["d", "b", "a", "c"]


def test_need_adjusted_ranks_by_need_score() -> None:
    cohort = pl.DataFrame({"person_id": ["a", "b", "c"], "risk_score": [0.9, 0.5, 0.1]}).lazy()
    need = pl.DataFrame({"person_id": ["a", "b", "c"], "need_score": [1.0, 3.0, 2.0]}).lazy()
    ranked = policy_priority(cohort, policy="need_adjusted", outreach=OutreachParams(), need=need)
    assert ranked.sort("priority", descending=True).collect()["person_id"].to_list() == [
        "b",
        "c",
        "a",
    ]


def test_equal_opportunity_thresholds_are_deterministic_and_scale_priority(world) -> None:
    validation = (
        _cohort(world)
        .filter(pl.col("split") == "validation")
        .select("risk_score", "outcome", "imd_quintile")
        .collect()
    )
    first = equal_opportunity_thresholds(validation, cut_score=0.2, rng=np.random.default_rng(7))
    assert first == equal_opportunity_thresholds(
        validation.reverse(), cut_score=0.2, rng=np.random.default_rng(7)
    )
    assert sorted(first) == ["1", "2", "3", "4", "5"]
    assert all(0 < value < 1 for value in first.values())
    ranked = policy_priority(
        _cohort(world), policy="equal_opportunity", outreach=OutreachParams(), thresholds=first
    ).collect()
    row = ranked.row(0, named=True)
    threshold = first[str(row["imd_quintile"])]
    assert row["priority"] == pytest.approx(row["risk_score"] / threshold)


def test_equal_opportunity_needs_events_in_every_quintile() -> None:
    validation = pl.DataFrame(
        {"risk_score": [0.1, 0.2, 0.3, 0.4], "outcome": [0, 1, 0, 0], "imd_quintile": [1, 1, 2, 2]}
    )
    with pytest.raises(StageError, match="imd_quintile"):
        equal_opportunity_thresholds(validation, rng=np.random.default_rng(0))


# --- Reasons ---


def _explanations(rows: list[tuple[str, int, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=contract.EXPLANATIONS_SCHEMA, orient="row")


def test_glossary_words_come_from_the_manifest_kind_and_unit() -> None:
    real = _real_entries()
    names = ["latest_hba1c", "days_since_hba1c", "n_diagnosis_12m", "rural", "practice_list_size"]
    glossary = feature_glossary([real[name] for name in names])
    assert glossary.rows() == [
        ("latest_hba1c", "measurement", "latest HbA1c (mmol/mol)", "latest HbA1c (mmol/mol)",
         "HbA1c", "mmol/mol", "latest HbA1c (mmol/mol): no", "diabetes", False),
        ("days_since_hba1c", "days", "days since the latest HbA1c reading",
         "days since the latest HbA1c reading", "HbA1c reading", "days",
         "days since the latest HbA1c reading: no", "diabetes", False),
        ("n_diagnosis_12m", "count", "diagnoses recorded in the last 12 months",
         "diagnosis recorded in the last 12 months", "diagnoses recorded in the last 12 months",
         None, "diagnoses recorded in the last 12 months: no", None, False),
        ("rural", "flag", "lives in a rural area", "lives in a rural area",
         "lives in a rural area", None, "lives in an urban area", None, True),
        ("practice_list_size", "numeric", "registered patients at the GP practice",
         "registered patients at the GP practice", "registered patients at the GP practice",
         "patients", "registered patients at the GP practice: no", None, True),
    ]  # fmt: skip
    # A unit the manifest gives is used as given (no guessing from the name or description).
    entry = real["latest_sbp"].model_copy(update={"unit": "kPa"})
    assert feature_glossary([entry])["unit"].to_list() == ["kPa"]


def test_reasons_in_plain_words_never_context() -> None:
    names = ["age", "sex_female", "n_emergency_admission_12m", "has_diabetes", "latest_hba1c",
             "practice_list_size"]  # fmt: skip
    glossary = feature_glossary([_real_entries()[name] for name in names])
    people = pl.DataFrame(
        {
            "person_id": ["a", "b", "c"],
            "age": [80, 70, 60],
            "sex_female": [0, 0, 1],
            "n_emergency_admission_12m": [2, 1, 0],
            "has_diabetes": [1, 0, 0],
            "latest_hba1c": [64.0, None, 40.0],
            "practice_list_size": [8000, 8000, 6500],
        }
    )
    explanations = _explanations(
        [
            ("a", 1, "age", 1.2),  # age and sex are context: never a reason
            ("a", 2, "n_emergency_admission_12m", 0.9),
            ("a", 3, "sex_female", 0.6),
            ("a", 4, "has_diabetes", 0.5),
            ("a", 5, "latest_hba1c", 0.3),
            ("b", 1, "latest_hba1c", 0.4),
            ("b", 2, "n_emergency_admission_12m", 0.1),
            ("b", 3, "has_diabetes", -0.1),
            ("c", 1, "practice_list_size", 0.2),  # practice figures are context too
            ("c", 2, "has_diabetes", 0.0),
            ("c", 3, "latest_hba1c", -0.3),
        ]
    )
    worded = word_reasons(explanations, feature_values(explanations, people), glossary).sort(
        "person_id"
    )
    assert worded.rows() == [
        ("a", "2 emergency admissions in the last 12 months", "diabetes recorded",
         "HbA1c 64 mmol/mol", "urgent_care"),
        # Only positive contributions are reasons.
        ("b", "no HbA1c recorded", "1 emergency admission in the last 12 months", None,
         "diabetes"),
    ]  # fmt: skip


def test_actions_know_what_is_recorded(tmp_path) -> None:
    names = ["has_hypertension", "latest_sbp", "sbp_missing", "has_diabetes", "latest_hba1c",
             "practice_list_size"]  # fmt: skip
    glossary = feature_glossary([_real_entries()[name] for name in names])
    people = pl.DataFrame(
        {
            "person_id": ["a", "b", "c", "d", "e"],
            "has_hypertension": [1, 0, 0, 1, 0],
            "latest_sbp": [150.0, 150.0, None, 130.0, 120.0],
            "sbp_missing": [0, 0, 1, 0, 0],
            "has_diabetes": [0, 0, 0, 1, 0],
            "latest_hba1c": [40.0, 40.0, 40.0, 70.0, 45.0],
            "practice_list_size": [100, 200, 300, 400, 500],
        }
    )
    explanations = _explanations(
        [
            ("a", 1, "latest_sbp", 0.5),
            ("b", 1, "latest_sbp", 0.5),
            ("c", 1, "sbp_missing", 0.5),
            ("d", 1, "latest_hba1c", 0.5),
            ("e", 1, "practice_list_size", 0.5),
        ]
    )
    selected = pl.DataFrame({"person_id": ["e", "d", "c", "b", "a"]})
    got = attach_reasons(
        selected, explanations.lazy(), people.lazy(), glossary, area="hypertension"
    )
    assert got.select("person_id", "conditions_recorded", "suggested_action").rows() == [
        # No reason names an area: the target's default area, still knowing what is recorded.
        ("e", "", "blood pressure check (hypertension case-finding)"),
        ("d", "hypertension, diabetes", "diabetes review (HbA1c control, annual care processes)"),
        ("c", "", "blood pressure check (hypertension case-finding)"),
        ("b", "", "blood pressure check (hypertension case-finding)"),
        ("a", "hypertension", "hypertension review (blood pressure control to target)"),
    ]


def test_attach_reasons_keeps_order_and_falls_back_to_the_default_area(tmp_path) -> None:
    names = ["has_diabetes", "practice_list_size"]
    glossary = feature_glossary([_real_entries()[name] for name in names])
    people = pl.DataFrame(
        {"person_id": ["a", "b"], "has_diabetes": [1, 0], "practice_list_size": [100, 200]}
    )
    explanations = _explanations(
        [("a", 1, "has_diabetes", 0.2), ("b", 1, "practice_list_size", 0.1)]
    )
    selected = pl.DataFrame({"person_id": ["b", "a"], "rank": [1, 2]})
    got = attach_reasons(selected, explanations.lazy(), people.lazy(), glossary, area="urgent_care")
    assert got.select("person_id", "rank", "reason_1", "suggested_action").rows() == [
        ("b", 1, None, "proactive care review (multidisciplinary case management)"),
        ("a", 2, "diabetes recorded", "diabetes review (HbA1c control, annual care processes)"),
    ]
    with pytest.raises(ContractError, match="1 of 3 selected people have no explanations"):
        attach_reasons(
            pl.DataFrame({"person_id": ["a", "b", "z"]}),
            explanations.lazy(),
            people.lazy(),
            glossary,
            area="urgent_care",
        )
    with pytest.raises(ContractError, match="no entry for explained feature 'has_diabetes'"):
        attach_reasons(
            selected, explanations.lazy(), people.lazy(), glossary.tail(1), area="urgent_care"
        )


def _list(rows: list[tuple[str, int, float, str]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=["pseudonym", "rank", "risk_score", "action"], orient="row")
    return frame.with_columns(
        pl.lit("P1").alias("practice_id"),
        pl.lit("QHM").alias("icb_code"),
        pl.lit(70, dtype=pl.Int16).alias("age"),
        pl.lit("F").alias("sex"),
        pl.lit("").alias("conditions_recorded"),
        pl.lit("A: first 20% of the list").alias("list_tier"),
        pl.lit("why").alias("reason_1"),
        pl.lit(None, pl.String).alias("reason_2"),
        pl.lit(None, pl.String).alias("reason_3"),
        pl.col("action").alias("suggested_action"),
    ).select(OUTREACH_COLUMNS)


def test_merged_list_has_each_person_once_with_each_targets_rank() -> None:
    cvd = _list([("x", 1, 0.3, "bp check"), ("y", 2, 0.2, "bp check")])
    admissions = _list([("y", 1, 0.4, "care review"), ("z", 2, 0.1, "care review")])
    merged = lists.merge_lists({"cvd": cvd, "adm": admissions})
    assert merged.select("pseudonym", "rank", "n_lists", "cvd_rank", "adm_rank").rows() == [
        ("y", 1, 2, 2, 1),  # best rank 1 on either list, and on both lists: first
        ("x", 2, 1, 1, None),
        ("z", 3, 1, None, 2),
    ]
    assert merged["suggested_actions"].to_list() == [
        "bp check; care review",
        "bp check",
        "care review",
    ]
    assert merged.columns[:7] == ["pseudonym", "practice_id", "icb_code", "rank", "age", "sex",
                                  "conditions_recorded"]  # fmt: skip


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([{"name": "A", "up_to": 0.5}], "last tier must end at 1.0"),
        ([{"name": "A", "up_to": 0.6}, {"name": "B", "up_to": 0.4}, {"name": "C", "up_to": 1.0}],
         "must rise strictly"),
        ([{"name": "A", "up_to": 0.5}, {"name": "A", "up_to": 1.0}], "names must differ"),
    ],
)  # fmt: skip
def test_tiers_must_cover_the_list(tmp_path, tiers, message) -> None:
    with pytest.raises(ParamsError, match=message):
        _params(tmp_path, tiers=tiers)


def test_tiers_band_each_icb_list_by_rank() -> None:
    frame = pl.DataFrame({"icb_code": ["A"] * 10 + ["B"] * 3, "rank": [*range(1, 11), 1, 2, 3]})
    tiers = OutreachParams().tiers
    got = frame.with_columns(lists.tier_expr(tiers))["list_tier"].str.slice(0, 1).to_list()
    assert got == ["A", "A", "B", "B", "B", "C", "C", "C", "C", "C", "A", "B", "C"]


# --- The stage end to end ---


def _disclosure_problems(node: Any, path: str = "") -> list[str]:
    problems = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            is_count = key == "n" or key.startswith("n_") or key.endswith("_count")
            if is_count and not (
                value is None or value == "*" or (isinstance(value, int) and value % 5 == 0)
            ):
                problems.append(f"{here}={value!r}")
            problems += _disclosure_problems(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            problems += _disclosure_problems(value, f"{path}[{index}]")
    return problems


def test_stage_writes_lists_and_summary_byte_identically(tmp_path: Path, world, monkeypatch):
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world)
    params = _params(tmp_path, capacity=0.1)
    run(params, paths)
    files = sorted(p for p in paths.outreach.rglob("*") if p.is_file())
    assert {p.relative_to(paths.outreach).as_posix() for p in files} == {
        f"{TARGET}.parquet",
        *[f"{TARGET}/{code}.csv" for code in ICBS],
        "merged.parquet",
        *[f"merged/{code}.csv" for code in ICBS],
        "data_dictionary.csv",
    }
    first = {p: p.read_bytes() for p in [*files, paths.reports / "outreach_summary.json"]}
    run(params, paths)
    assert {p: p.read_bytes() for p in first} == first
    assert not (tmp_path / "data" / ".cache").exists()

    table = pl.read_parquet(paths.outreach / f"{TARGET}.parquet")
    assert tuple(table.columns) == OUTREACH_COLUMNS
    assert table.height == 150
    assert table["reason_1"].null_count() == 0
    csv = pl.read_csv(paths.outreach / TARGET / "QMJ.csv")
    assert tuple(csv.columns) == OUTREACH_COLUMNS
    assert csv["rank"].to_list() == list(range(1, csv.height + 1))
    assert set(csv["icb_code"]) == {"QMJ"}
    # Tiers are bands of each ICB's list (20% / 30% / 50% by default), not one label for all.
    tiers = csv["list_tier"].value_counts().sort("list_tier")["count"].to_list()
    assert len(tiers) == 3 and tiers[0] == round(csv.height * 0.2)
    assert set(csv["sex"]) <= {"F", "M"} and csv["age"].min() >= 18  # context columns
    dictionary = pl.read_csv(paths.outreach / "data_dictionary.csv")
    described = set(dictionary.filter(pl.col("file") == "<target>.csv")["column"])
    assert described == set(OUTREACH_COLUMNS)
    merged = pl.read_csv(paths.outreach / "merged" / "QMJ.csv")
    assert merged.height == csv.height and merged["pseudonym"].is_unique().all()
    rows = "".join(p.read_text() for p in first if p.suffix == ".csv") + table.write_csv()
    summary_text = (paths.reports / "outreach_summary.json").read_text()
    assert "P00" not in rows + summary_text  # no raw person_id anywhere
    for word in [*contract.BROAD_ETHNIC_GROUPS, "ethnic"]:
        assert word not in rows  # no ethnicity on the lists
    pseudonyms = pseudonymise(world["population"]["person_id"], KEY)
    assert set(table["pseudonym"]).issubset(set(pseudonyms))

    summary = json.loads((paths.reports / "outreach_summary.json").read_text())
    assert _disclosure_problems(summary) == []
    block = summary["targets"][TARGET]
    assert block["n_selected"] == 150
    assert set(block["lists"]) == set(ICBS)
    assert {row["group"] for row in block["make_up"]["imd_quintile"]} == {"1", "2", "3", "4", "5"}
    assert block["true_need"]["n_need_list"] == 150
    assert isinstance(block["expected_events"]["n_expected_events_reached"], int)
    assert "n_events_reached" in block["test_split"]
    assert summary["truth_available"] is True


def test_the_need_list_uses_the_targets_own_true_need() -> None:
    oracle = pl.DataFrame(
        {
            "person_id": ["a", "b", "c", "a", "b", "c"],
            "target": ["cvd", "cvd", "cvd", "ea", "ea", "ea"],
            "true_need": [0.9, 0.1, 0.2, 0.1, 0.9, 0.8],
        }
    )
    cohort = pl.DataFrame({"person_id": ["a", "b", "c"], "selected": [True, False, False]})
    capacity = pl.DataFrame({"unit": ["all"], "list_size": [1]})
    chosen = {
        target: summary_mod.with_need_list(
            cohort,
            summary_mod.target_true_need(oracle, target),
            capacity=capacity,
            capacity_mode="share",
        )
        .filter(pl.col("need_list"))["person_id"]
        .to_list()
        for target in ("cvd", "ea")
    }
    assert chosen == {"cvd": ["a"], "ea": ["b"]}
    with pytest.raises(ContractError, match="no true_need for target 'diabetes'"):
        summary_mod.target_true_need(oracle, "diabetes")


def test_the_need_list_is_the_most_in_need_per_unit_ties_by_person_id() -> None:
    rng = np.random.default_rng(7)
    n = 3_000
    cohort = pl.DataFrame(
        {
            "person_id": rng.permutation(n).astype(np.int64),
            "icb_code": rng.choice(["A", "B", "C"], n),
        }
    )
    need = rng.choice([0.1, 0.2, 0.5, 0.9], n)  # heavy ties
    truth = pl.DataFrame({"person_id": np.arange(n, dtype=np.int64), "true_need": need})
    truth = truth.with_columns(  # some people without a recorded need
        pl.when(pl.col("person_id") % 17 == 0).then(None).otherwise("true_need").alias("true_need")
    )
    capacity = pl.DataFrame({"unit": ["A", "B", "C"], "list_size": [40, 900, 2_000]})
    listed = summary_mod.with_need_list(cohort, truth, capacity=capacity, capacity_mode="per_icb")
    # the definition: per unit, the first list_size people by (need, person_id), highest first
    expected = listed.select(
        pl.struct(pl.col("true_need").fill_null(-math.inf), "person_id")
        .rank("ordinal", descending=True)
        .over("unit")
        <= pl.col("list_size")
    ).to_series()
    assert listed["need_list"].to_list() == expected.to_list()
    assert listed.group_by("unit").agg(pl.col("need_list").sum()).sort("unit")[
        "need_list"
    ].to_list() == [40, 900, min(2_000, int((cohort["icb_code"] == "C").sum()))]


def test_a_wider_list_keeps_each_persons_reasons(tmp_path: Path, world, monkeypatch) -> None:
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world)
    run(_params(tmp_path, capacity=0.05), paths)
    narrow = pl.read_parquet(paths.outreach / f"{TARGET}.parquet")
    run(_params(tmp_path, capacity=0.1), paths)
    wide = pl.read_parquet(paths.outreach / f"{TARGET}.parquet")
    words = ["pseudonym", "reason_1", "reason_2", "reason_3", "suggested_action"]
    assert (
        narrow.select(words)
        .join(wide.select(words), on=words, how="anti", nulls_equal=True)
        .is_empty()
    )


def test_stage_needs_the_model_its_inputs_and_a_valid_manifest(tmp_path: Path, world, monkeypatch):
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world)
    manifest = paths.features / "manifest.json"
    valid = manifest.read_text()
    manifest.write_text(json.dumps({"features": [{"name": "age", "description": "age"}]}))
    with pytest.raises(ContractError, match="not a valid feature manifest"):
        run(_params(tmp_path), paths)
    manifest.write_text(valid)
    table = pl.read_parquet(paths.features / "features.parquet")
    write_parquet(
        table.drop("latest_sbp"), paths.features / "features.parquet", sort_by="person_id"
    )
    with pytest.raises(ContractError, match=r"features\.parquet: missing column\(s\) latest_sbp"):
        run(_params(tmp_path), paths)
    assert not paths.outreach.exists()  # checked before any list is built
    (paths.models / TARGET / "model.txt").unlink()
    with pytest.raises(StageError, match="model of emergency_admission_12m not found"):
        run(_params(tmp_path), paths)


def test_stage_without_truth_and_with_another_policy(tmp_path: Path, world, monkeypatch):
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world, truth=False)
    run(_params(tmp_path, capacity_mode="per_practice", capacity=10, policy="core20plus5"), paths)
    summary = json.loads((paths.reports / "outreach_summary.json").read_text())
    block = summary["targets"][TARGET]
    assert block["true_need"] is None
    assert block["policy_detail"]["core20_uplift"] == 1.5
    assert pl.read_parquet(paths.outreach / f"{TARGET}.parquet").height == 60


def test_need_adjusted_without_need_scores_is_a_stage_error(tmp_path, world, monkeypatch):
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world)
    with pytest.raises(StageError, match="need scores"):
        run(_params(tmp_path, policy="need_adjusted"), paths)


def test_need_adjusted_reads_the_audit_need_scores(tmp_path, world, monkeypatch):
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world, truth=False)
    population: pl.DataFrame = world["population"]
    need = population.select(
        "person_id",
        (pl.col("has_copd") * 10 + pl.col("age") / 100 + pl.int_range(pl.len()) * 1e-7).alias(
            "need_score"
        ),
    )
    write_parquet(
        need, paths.scores / contract.NEED_SCORES_DIR / f"{TARGET}.parquet", sort_by="person_id"
    )
    run(_params(tmp_path, policy="need_adjusted", capacity=0.02), paths)
    listed = pl.read_parquet(paths.outreach / f"{TARGET}.parquet")
    neediest = need.sort("need_score", descending=True).head(30)
    want = set(pseudonymise(neediest["person_id"], KEY))
    assert set(listed["pseudonym"]) == want


def test_equal_opportunity_stage_reports_its_thresholds(tmp_path, world, monkeypatch) -> None:
    monkeypatch.setenv("PHM_PSEUDONYM_KEY", KEY.decode())
    paths = _project(tmp_path, world, truth=False)
    run(_params(tmp_path, policy="equal_opportunity", capacity=0.1), paths)
    summary = json.loads((paths.reports / "outreach_summary.json").read_text())
    detail = summary["targets"][TARGET]["policy_detail"]
    assert sorted(detail["imd_quintile_thresholds"]) == ["1", "2", "3", "4", "5"]


def test_docstring_examples() -> None:
    assert doctest.testmod(reasons).failed == 0
