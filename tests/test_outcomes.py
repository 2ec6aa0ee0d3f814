"""Outcomes derived from events (pipeline/outcomes.py): cohort rules, follow-up window, codelist
matching, supplied vs derived, and what validate says about it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from pipeline import contract, outcomes
from pipeline.codelists import Codelists, load_codelists
from pipeline.config import Params, TargetParams, parse_params
from pipeline.errors import ContractError
from pipeline.io import Paths, read_json
from pipeline.validate import run as validate_run
from tests.fixture_params import fixture_raw

D = dt.date
INDEX = D(2025, 4, 1)

PEOPLE = pl.DataFrame(
    {
        "person_id": ["P1", "P2", "P3", "P4", "P5", "P6"],
        "sex": ["F", "M", "F", "M", "F", "M"],
        "age": [40, 60, 17, 70, 85, 50],
        "ethnicity": ["A", None, "H", "M", "Z", "A"],
        "area_id": ["A1"] * 6,
        "practice_id": ["G1"] * 6,
    },
    schema=contract.PEOPLE_SCHEMA,
)
_EVENTS = [
    # P1: an emergency admission the day after the index date, a GI bleed (X-padded ICD-10)
    ("P1", D(2025, 4, 2), "emergency_admission", "K922X", None, None),
    # P2: an A&E attendance on the last day of a 12-month follow-up; prior CHD in SNOMED CT
    ("P2", D(2026, 4, 1), "ae_attendance", "R07", None, None),
    ("P2", D(2020, 1, 1), "diagnosis", "10273003", None, "snomed_ct"),
    # P3: under 18; an admission inside the window
    ("P3", D(2025, 6, 1), "emergency_admission", "J18", None, None),
    # P4: an admission on the index date (not follow-up) and one a day after the window
    ("P4", D(2025, 4, 1), "emergency_admission", "J18", None, None),
    ("P4", D(2026, 4, 2), "emergency_admission", "J18", None, None),
    # P5: a myocardial infarction in SNOMED CT in the GP record; a dotted GI bleed as outpatient
    ("P5", D(2027, 1, 1), "diagnosis", "1089471000000109", None, "snomed_ct"),
    ("P5", D(2025, 9, 1), "outpatient", "K25.0", None, None),
    # P6: nothing after the index date; an implausible reading would not count either
    ("P6", D(2024, 1, 1), "gp_consultation", "face_to_face", None, None),
    ("P6", D(2030, 1, 1), "measurement", "bmi", 6.9, None),
]
EVENTS = pl.DataFrame(
    _EVENTS,
    schema={**contract.EVENTS_SCHEMA, **contract.EVENTS_OPTIONAL_SCHEMA},
    orient="row",
)


@pytest.fixture(scope="module")
def codelists() -> Codelists:
    return load_codelists()


def target(**fields: object) -> TargetParams:
    return TargetParams.model_validate({"follow_up_months": 12, **fields})


def derived(target_params: TargetParams, codelists: Codelists) -> dict[str, int]:
    table = outcomes.derive_target(
        "t",
        target_params,
        PEOPLE.lazy(),
        contract.clean_events(EVENTS.lazy(), PEOPLE.lazy(), index_date=INDEX),
        index_date=INDEX,
        codelists=codelists,
    ).collect()
    assert table.schema == pl.Schema(contract.OUTCOMES_SCHEMA)
    assert set(table["target"]) == {"t"}
    return dict(zip(table["person_id"], table["value"], strict=True))


def test_any_emergency_admission_in_the_window(codelists: Codelists) -> None:
    admission = target(
        outcome="emergency_admission", derive={"event_types": ["emergency_admission"]}
    )
    # P3 is under 18; P4's admissions are on the index date and a day after the window
    assert derived(admission, codelists) == {"P1": 1, "P2": 0, "P4": 0, "P5": 0, "P6": 0}


def test_any_emergency_care_visit_counts_the_last_day_of_follow_up(codelists: Codelists) -> None:
    visit = target(
        outcome="er_visit",
        min_age=0,
        derive={"event_types": ["ae_attendance", "emergency_admission"]},
    )
    cases = derived(visit, codelists)
    assert cases["P2"] == 1  # A&E on 2026-04-01, the last day of 12 months
    assert cases["P3"] == 1 and cases["P4"] == 0


def test_a_codelist_outcome_over_several_event_types(codelists: Codelists) -> None:
    gi_bleed = target(
        outcome="gi_bleed",
        min_age=0,
        follow_up_months=24,
        derive={
            "event_types": ["diagnosis", "emergency_admission", "outpatient"],
            "concepts": ["gi_bleed"],
        },
    )
    cases = derived(gi_bleed, codelists)
    assert cases == {"P1": 1, "P2": 0, "P3": 0, "P4": 0, "P5": 1, "P6": 0}  # K922X, K25.0


def test_prior_conditions_by_codelist_leave_the_cohort(codelists: Codelists) -> None:
    cvd = target(
        outcome="cvd_event",
        follow_up_months=60,
        min_age=25,
        max_age=84,
        exclude_prior=["cvd"],
        derive={"event_types": ["diagnosis", "emergency_admission"], "concepts": ["cvd_event"]},
    )
    cases = derived(cvd, codelists)
    assert "P2" not in cases  # prior CHD (SNOMED CT)
    assert "P5" not in cases  # 85: over the age limit
    assert cases == {"P1": 0, "P4": 0, "P6": 0}
    older = cvd.model_copy(update={"max_age": 110})
    assert derived(older, codelists)["P5"] == 1  # MI coded in SNOMED CT in the GP record


def test_an_unknown_concept_is_refused_naming_the_key(codelists: Codelists) -> None:
    bad = target(outcome="x", derive={"event_types": ["diagnosis"], "concepts": ["gi_bled"]})
    with pytest.raises(ContractError, match=r"targets\.t\.derive\.concepts: .*gi_bled"):
        derived(bad, codelists)


def test_follow_up_must_be_covered_by_the_extract() -> None:
    end = outcomes.follow_up_end(INDEX, 12)
    assert end == D(2026, 4, 1)
    outcomes.check_follow_up("t", end, extract_end=D(2026, 4, 1), last_event=None)
    with pytest.raises(ContractError, match=r"targets\.t: .*2026-04-01.*2026-03-31"):
        outcomes.check_follow_up("t", end, extract_end=D(2026, 3, 31), last_event=None)
    with pytest.raises(ContractError, match="last event in the extract is dated 2025-05-01"):
        outcomes.check_follow_up("t", end, extract_end=None, last_event=D(2025, 5, 1))
    outcomes.check_follow_up("t", end, extract_end=None, last_event=D(2026, 5, 1))


def _write(folder: Path, *, with_outcomes: bool) -> Path:
    folder.mkdir(parents=True)
    pl.DataFrame(
        {
            "area_id": ["A1"],
            "icb_code": ["QHM"],
            "icb_name": ["North East and North Cumbria"],
            "region": ["North East and Yorkshire"],
            "imd_decile": [3],
            "rural_urban": ["urban"],
        },
        schema=contract.AREAS_SCHEMA,
    ).write_parquet(folder / "areas.parquet")
    pl.DataFrame(
        {"practice_id": ["G1"], "icb_code": ["QHM"]}, schema=contract.PRACTICES_SCHEMA
    ).write_parquet(folder / "practices.parquet")
    PEOPLE.write_parquet(folder / "people.parquet")
    EVENTS.write_parquet(folder / "events.parquet")
    if with_outcomes:
        pl.DataFrame(
            {"person_id": ["P1", "P2"], "target": ["emergency_admission_12m"] * 2, "value": [0, 1]},
            schema=contract.OUTCOMES_SCHEMA,
        ).write_parquet(folder / "outcomes.parquet")
    return folder


def _params(**validation: object) -> Params:
    raw = fixture_raw()
    raw["population"]["source"] = "extract"
    raw["population"]["extract_dir"] = "extract"
    raw["validation"].update(validation)
    return parse_params(raw)


def test_a_supplied_table_is_used_and_otherwise_outcomes_are_derived(
    tmp_path: Path, codelists: Codelists
) -> None:
    params = _params(extract_end="2030-12-31")
    options = {"index_date": INDEX, "extract_end": D(2030, 12, 31), "codelists": codelists}
    name = "emergency_admission_12m"
    supplied = _write(tmp_path / "supplied", with_outcomes=True)
    table, source = outcomes.target_outcomes(supplied, name, params.targets[name], **options)
    assert source == "supplied"
    assert table.collect()["value"].to_list() == [0, 1]
    # a target without rows in the supplied table is derived (here cvd_event_5y)
    _, other = outcomes.target_outcomes(
        supplied, "cvd_event_5y", params.targets["cvd_event_5y"], **options
    )
    assert other == "derived"
    bare = _write(tmp_path / "bare", with_outcomes=False)
    table, source = outcomes.target_outcomes(bare, name, params.targets[name], **options)
    assert source == "derived"
    assert dict(table.collect().select("person_id", "value").iter_rows()) == {
        "P1": 1,
        "P2": 0,
        "P4": 0,
        "P5": 0,
        "P6": 0,
    }


def test_without_a_definition_or_rows_the_target_is_refused(tmp_path: Path) -> None:
    bare = _write(tmp_path / "bare", with_outcomes=False)
    plain = target(outcome="emergency_admission")
    with pytest.raises(ContractError, match=r"no rows for target 't'.*targets\.t\.derive"):
        outcomes.target_outcomes(
            bare, "t", plain, index_date=INDEX, extract_end=None, codelists=load_codelists()
        )


def test_validate_says_which_outcomes_were_used(tmp_path: Path) -> None:
    folder = _write(tmp_path / "extract", with_outcomes=False)
    validate_run(_params(extract_end="2030-12-31"), Paths.at(tmp_path), extract=folder)
    report = read_json(tmp_path / "reports" / "data_quality.json")
    found = report["outcomes"]["emergency_admission_12m"]
    assert found["source"] == "derived"
    assert found["definition"].startswith("emergency_admission_12m: derived from events")
    assert found["n"] == "*" and found["n_events"] == "*"  # 5 people, 1 event: suppressed
    assert "outcomes" not in report["tables"]


def test_a_short_extract_is_refused_for_a_derived_outcome(tmp_path: Path) -> None:
    folder = _write(tmp_path / "extract", with_outcomes=False)
    with pytest.raises(ContractError, match=r"targets\.cvd_event_5y: its follow-up runs to 2030"):
        validate_run(_params(extract_end="2030-01-01"), Paths.at(tmp_path), extract=folder)
    assert not (tmp_path / "reports" / "data_quality.json").exists()


def test_synthetic_world_keeps_its_outcome_names() -> None:
    raw = fixture_raw()
    raw["targets"]["emergency_admission_12m"]["outcome"] = "gi_bleed"
    with pytest.raises(ValueError, match=r"targets\.emergency_admission_12m\.outcome"):
        parse_params(raw)
    raw["population"] |= {"source": "extract", "extract_dir": "x"}
    assert parse_params(raw).targets["emergency_admission_12m"].outcome == "gi_bleed"
