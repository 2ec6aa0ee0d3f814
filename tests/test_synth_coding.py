"""The synthetic record is coded like a real one: codes drawn from the shipped codelists (SNOMED CT
diagnoses, dm+d / BNF medicines, HES ICD-10 episodes, SNOMED CT measurements), skewed code
frequencies, realistic noise, and practices sized as in England."""

from __future__ import annotations

import datetime as dt
import doctest
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import contract
from pipeline.codelists import code_valid_expr, load_codelists
from pipeline.config import parse_params
from pipeline.features import concept_expr, measurement_expr, recorded_conditions, recorded_events
from pipeline.synth import coding as coding_module
from pipeline.synth import geography as geography_module
from pipeline.synth.coding import (
    LEGACY_READ_CODES,
    MEASUREMENT_SNOMED,
    MOST_USED,
    SYMPTOM_CODES,
    default_coding,
)
from pipeline.synth.conditions import CONDITION_ORDER
from pipeline.synth.events import DRUGS, medicine_groups
from pipeline.synth.geography import (
    LIST_SIZE_RANGE,
    MIN_PRACTICES_PER_ICB,
    build_geography,
    locate,
)
from tests.simworld import generate_synthetic_chunk

INDEX = dt.date(2025, 4, 1)
N = 20_000


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    params = parse_params(
        {
            "seed": 3,
            "index_date": INDEX.isoformat(),
            "population": {"n_people": N, "chunk_size": N, "area_size": 400},
            "targets": {
                "emergency_admission_12m": {
                    "outcome": "emergency_admission",
                    "follow_up_months": 12,
                    "min_age": 18,
                },
            },
        }
    )
    frames = generate_synthetic_chunk(params, geography_seed=1)
    people, cond = frames["arrays"]
    return {"events": frames["events"], "people": people, "cond": cond}


def test_doctests() -> None:
    assert doctest.testmod(coding_module, raise_on_error=True).attempted >= 2
    assert doctest.testmod(geography_module, raise_on_error=True).attempted >= 1


def test_every_pool_code_is_valid_in_its_system_except_the_planted_legacy_codes() -> None:
    coding = default_coding()
    frame = pl.DataFrame({"code": coding.codes, "system": coding.systems}).with_columns(
        valid=code_valid_expr(pl.col("code"), pl.col("system"))
    )
    invalid = set(frame.filter(~pl.col("valid"))["code"])
    assert invalid == set(LEGACY_READ_CODES)
    assert len(coding.codes) < 1 << 16  # packed into the sort key


def test_features_recover_every_recorded_condition_and_smoking(world: dict[str, Any]) -> None:
    """Features match codes through the codelists only: every recorded condition of the world is
    found from its SNOMED CT code, and nothing else (noise codes are in no list)."""
    events = recorded_events(world["events"].lazy(), index_date=INDEX)
    found = recorded_conditions(events, codelists=load_codelists()).collect()
    person = found["person_id"].str.slice(1).cast(pl.Int64).to_numpy() - 1
    cond = world["cond"]
    for condition in CONDITION_ORDER:
        has = np.zeros(N, dtype=bool)
        has[person] = found[f"has_{condition}"].fill_null(0).to_numpy() == 1
        assert (has == cond[f"rec_{condition}"]).all(), condition
    smoking = np.zeros(N, dtype=bool)
    smoking[person] = found["smoking_recorded"].fill_null(0).to_numpy() == 1
    assert (smoking == cond["rec_smoker"]).all()


def test_features_find_every_measurement_and_medicine_through_the_lists(
    world: dict[str, Any],
) -> None:
    codelists = load_codelists()
    events = recorded_events(world["events"].lazy(), index_date=INDEX)
    names = list(MEASUREMENT_SNOMED)
    found = (
        events.filter(pl.col("event_type") == "measurement")
        .select(measurement_expr(codelists, names).alias("name"), "code")
        .collect()
    )
    expected = {code: name for name, codes in MEASUREMENT_SNOMED.items() for code in codes}
    assert found["name"].to_list() == [expected[code] for code in found["code"]]
    rx = (
        events.filter(pl.col("event_type") == "prescription")
        .select(concept_expr(codelists, group).alias(group) for group in medicine_groups())
        .collect()
    )
    assert rx.select(pl.any_horizontal(pl.all())).to_series().all()  # each in a medicine group
    assert all(rx[group].any() for group in medicine_groups())


def test_each_event_type_carries_its_real_code_system(world: dict[str, Any]) -> None:
    systems = (
        world["events"]
        .group_by("event_type", "code_system")
        .len()
        .filter(pl.col("len") > 0)
        .group_by("event_type")
        .agg(pl.col("code_system").unique().sort())
    )
    by_type = dict(zip(systems["event_type"], systems["code_system"].to_list(), strict=True))
    assert by_type["diagnosis"] == ["snomed_ct"]
    assert by_type["measurement"] == ["snomed_ct"]
    assert by_type["gp_consultation"] == ["local"]
    assert by_type["prescription"] == ["bnf", "dmd"]
    for hospital in ("ae_attendance", "emergency_admission", "elective_admission", "outpatient"):
        assert by_type[hospital] == ["icd10"], hospital


def test_hospital_diagnoses_are_coded_as_hes_carries_them(world: dict[str, Any]) -> None:
    hospital = world["events"].filter(pl.col("code_system") == "icd10")["code"]
    assert hospital.str.contains(r"^[A-Z][0-9]{2}[0-9X]$").all()  # 4 characters, no dot
    assert {"I10X", "I489"} & set(hospital)  # X-padded categories and subdivisions both occur


def test_medicines_are_dmd_where_a_dmd_list_is_shipped(world: dict[str, Any]) -> None:
    codelists = load_codelists()
    rx = world["events"].filter(pl.col("event_type") == "prescription")
    dmd = set(rx.filter(pl.col("code_system") == "dmd")["code"])
    shipped_dmd = set(codelists.codes.filter(pl.col("system") == "dmd")["code"])
    assert dmd and dmd <= shipped_dmd
    groups = {group for drugs in DRUGS.values() for group, _ in drugs}
    with_dmd = {g for g in groups if "dmd" in set(codelists.codes_of(g)["system"])}
    assert with_dmd == {"diabetes_drugs", "antidepressants", "antipsychotics"}


def test_diagnosis_codes_have_skewed_frequencies(world: dict[str, Any]) -> None:
    """Several codes per condition, the generic one most often (Zipf-like, not uniform)."""
    coding = default_coding()
    diagnoses = world["events"].filter(pl.col("event_type") == "diagnosis")
    for condition in ("hypertension", "diabetes", "asthma", "depression"):
        pool = set(coding.codes[i] for i in coding.pools[f"diagnosis:{condition}"].index)
        counts = diagnoses.filter(pl.col("code").is_in(pool))["code"].value_counts(sort=True)
        assert counts.height >= 5, condition
        top = counts["count"].to_numpy()
        assert counts["code"][0] == MOST_USED[condition][0], condition
        assert 0.12 <= top[0] / top.sum() <= 0.4, condition  # uniform would be < 0.02
        assert top[0] >= 3 * top[4], condition


def test_noise_at_realistic_low_rates(world: dict[str, Any]) -> None:
    events = world["events"]
    n = events.height
    legacy = events.filter(pl.col("code").is_in(LEGACY_READ_CODES)).height
    symptoms = events.filter(pl.col("code").is_in(SYMPTOM_CODES)).height
    low, high = (
        contract.MEASUREMENT_CODES["sbp"][1],
        contract.MEASUREMENT_CODES["sbp"][2],
    )
    sbp = events.filter(pl.col("code") == "271649006")["value"]
    implausible = ((sbp < low) | (sbp > high)).sum()
    duplicates = n - events.unique().height
    assert 0 < legacy < 0.002 * n
    assert 0.01 * n < symptoms < 0.15 * n  # most GP coding is in no codelist
    assert 0 < implausible < 0.005 * sbp.len()
    assert 0.001 * n < duplicates < 0.02 * n


def test_practices_sized_as_in_england_at_full_scale() -> None:
    """At 20M people practices have England's list sizes (NHS Digital July 2020: 2.9% under
    2,000 patients, 3.9% over 20,000)."""
    geo = build_geography(
        20_000_000, area_size=1600, practice_size=8000, rng=np.random.default_rng(2)
    )
    sizes = np.diff(np.concatenate([[0], geo.practice_end]))
    assert 0.01 <= (sizes < 2_000).mean() <= 0.06
    assert 0.02 <= (sizes > 20_000).mean() <= 0.07
    assert 7_000 <= sizes.mean() <= 9_000
    assert sizes.min() >= 0.7 * LIST_SIZE_RANGE[0]


def test_many_practices_per_icb_at_the_default_size() -> None:
    """200k people: every ICB keeps MIN_PRACTICES_PER_ICB practices of unequal size, each a
    contiguous run of its ICB's people (nobody is left without a practice)."""
    n = 200_000
    geo = build_geography(n, area_size=1600, practice_size=8000, rng=np.random.default_rng(2))
    assert (geo.icb_practices == MIN_PRACTICES_PER_ICB).all()
    sizes = np.diff(np.concatenate([[0], geo.practice_end]))
    assert sizes.min() >= 1 and sizes.sum() == n
    assert np.percentile(sizes, 90) > 2.5 * np.percentile(sizes, 10)
    area, practice = locate(geo, np.arange(n))
    practice_icb = np.repeat(np.arange(len(geo.icb_practices)), geo.icb_practices)
    assert (practice_icb[practice] == geo.area_icb[area]).all()
    assert (np.diff(practice) >= 0).all()
