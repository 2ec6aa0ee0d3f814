"""OMOP adapter: each mapped table on a tiny hand-built CDM (tests/omop_fixture.py), absent
optional tables, unknown concepts counted (not fatal), the three storage forms, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from omop_fixture import INDEX, OPTIONAL, build_duckdb, export_folder

from pipeline.config import ParamsError, parse_params
from pipeline.contract import AREAS_SCHEMA, EVENTS_SCHEMA, PEOPLE_SCHEMA, PRACTICES_SCHEMA
from pipeline.omop import MAPPING_FILE, OmopSourceError, convert
from pipeline.omop import adapter as convert_module
from pipeline.omop.mapping import (
    NOT_IN_HOSPITAL_VISIT,
    OUTSIDE,
    UNKNOWN_CONCEPT,
    UNKNOWN_PERSON,
    UNMAPPED_VOCABULARY,
)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_duckdb(tmp_path_factory.mktemp("omop") / "cdm.duckdb")


@pytest.fixture(scope="module")
def converted(database: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("contract")
    convert(database, out, index_date=INDEX)
    return out


def _events(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "events" / "*.parquet")


def _report(out: Path) -> dict[str, Any]:
    import json

    return json.loads((out / MAPPING_FILE).read_text())


def _rows(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in frame.iter_rows()]


def test_person_sex_age_ethnicity_and_cohort(converted: Path) -> None:
    people = pl.read_parquet(converted / "people.parquet")
    assert people.schema == pl.Schema(PEOPLE_SCHEMA)
    assert _rows(people) == [
        ("1", "M", 69, None, "E01000001", "10"),
        ("2", "F", 59, "H", None, "11"),
        ("3", "U", 19, None, None, None),
    ]
    people_report = _report(converted)["people"]
    assert people_report == {
        "rows": 6,
        "mapped": 3,
        "excluded": {
            "born after the index date": 1,
            "not observed at the index date": 1,
            "year of birth missing": 1,
        },
    }


def test_observation_period_follow_up_requirement(database: Path, tmp_path: Path) -> None:
    convert(database, tmp_path, index_date=INDEX, min_follow_up_months=12)
    people = pl.read_parquet(tmp_path / "people.parquet")
    assert people["person_id"].to_list() == ["1", "2"]  # 3 leaves observation in March 2020
    assert (
        _report(tmp_path)["people"]["excluded"]["observed less than 12 months after the index date"]
        == 1
    )


def test_visit_occurrence_event_types_and_codes(converted: Path) -> None:
    events = _events(converted).filter(pl.col("event_type") != "diagnosis")
    visits = events.filter(
        pl.col("code").is_in(["4525004", "74474003", "32485007", "face_to_face"])
    )
    assert _rows(visits.sort("date")) == [
        ("2", INDEX.replace(2019, 2, 1), "elective_admission", "32485007", None, "snomed_ct"),
        ("2", INDEX.replace(2019, 3, 1), "gp_consultation", "face_to_face", None, "local"),
        ("1", INDEX.replace(2019, 5, 1), "ae_attendance", "4525004", None, "snomed_ct"),
        ("1", INDEX.replace(2020, 6, 1), "emergency_admission", "74474003", None, "snomed_ct"),
    ]
    counts = _report(converted)["events"]["visit_occurrence"]
    assert counts["mapped"] == 4
    assert counts["excluded"] == {UNKNOWN_CONCEPT: 1, UNKNOWN_PERSON: 1, OUTSIDE: 1}


def test_condition_occurrence_through_concept_codes(converted: Path) -> None:
    diagnoses = _events(converted).filter(pl.col("event_type") == "diagnosis")
    assert _rows(diagnoses.select("person_id", "code", "code_system")) == [
        ("1", "74474003", "snomed_ct"),
        ("2", "K92.2", "icd10"),  # the standard concept is ICD10CM; its source concept ICD10
    ]
    counts = _report(converted)["events"]["condition_occurrence"]
    assert counts["excluded"] == {
        UNKNOWN_CONCEPT: 1,
        UNMAPPED_VOCABULARY: 1,
        OUTSIDE: 1,
        UNKNOWN_PERSON: 1,
    }
    assert counts["unmapped_vocabularies"] == {"ICD10CM": 1}


def test_drug_exposure_maps_dmd_and_counts_rxnorm(converted: Path) -> None:
    drugs = _events(converted).filter(pl.col("event_type") == "prescription")
    assert _rows(drugs.select("person_id", "code", "code_system")) == [
        ("2", "42109611000001109", "dmd")
    ]
    assert _report(converted)["events"]["drug_exposure"]["unmapped_vocabularies"] == {"RxNorm": 1}


def test_measurement_carries_value_and_counts_loinc(converted: Path) -> None:
    measurements = _events(converted).filter(pl.col("event_type") == "measurement")
    assert _rows(measurements.select("code", "value", "code_system")) == [
        ("271649006", 142.0, "snomed_ct")
    ]
    assert _report(converted)["events"]["measurement"]["unmapped_vocabularies"] == {"LOINC": 1}


def test_procedure_occurrence_on_its_hospital_visit(converted: Path) -> None:
    procedures = _events(converted).filter(pl.col("code") == "80146002")
    assert _rows(procedures.select("person_id", "event_type")) == [("1", "emergency_admission")]
    counts = _report(converted)["events"]["procedure_occurrence"]
    assert counts["excluded"] == {NOT_IN_HOSPITAL_VISIT: 2}


def test_location_lsoa_to_imd_decile(converted: Path) -> None:
    areas = pl.read_parquet(converted / "areas.parquet")
    assert areas.schema == pl.Schema(AREAS_SCHEMA)
    assert _rows(areas) == [("E01000001", None, None, None, 9, None)]
    fields = _report(converted)["fields"]
    assert (fields["with_lsoa"], fields["with_imd_decile"], fields["with_ethnicity"]) == (1, 1, 1)
    assert set(fields["unavailable"]) == {"icb_code", "region", "rural_urban"}


def test_care_site_and_provider_give_the_practice(converted: Path) -> None:
    practices = pl.read_parquet(converted / "practices.parquet")
    assert practices.schema == pl.Schema(PRACTICES_SCHEMA)
    assert _rows(practices) == [("10", None), ("11", None)]


def test_events_follow_the_contract_schema_and_span_the_index_date(converted: Path) -> None:
    events = _events(converted)
    assert events.schema == pl.Schema({**EVENTS_SCHEMA, "code_system": pl.String})
    assert events["date"].min() < INDEX < events["date"].max()  # pre- and post-index
    assert not (converted / "outcomes.parquet").exists()
    assert not (converted / "outcomes").exists()


def test_every_source_row_is_written_or_counted(database: Path, converted: Path) -> None:
    import duckdb

    report = _report(converted)
    con = duckdb.connect(str(database), read_only=True)
    for table, counts in report["events"].items():
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        assert counts["rows"] == rows == counts["mapped"] + sum(counts["excluded"].values())
    con.close()
    assert len(_events(converted)) == sum(c["mapped"] for c in report["events"].values())


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_folder_of_tables_converts_like_the_database(
    database: Path, converted: Path, tmp_path: Path, fmt: str
) -> None:
    folder = export_folder(database, tmp_path / "cdm", fmt=fmt)  # type: ignore[arg-type]
    out = tmp_path / "out"
    out.mkdir()
    convert(folder, out, index_date=INDEX)
    for table in ("people", "areas", "practices"):
        assert pl.read_parquet(out / f"{table}.parquet").equals(
            pl.read_parquet(converted / f"{table}.parquet")
        )
    assert _events(out).equals(_events(converted))
    assert _report(out)["events"] == _report(converted)["events"]


def test_absent_optional_tables_are_reported_not_fatal(tmp_path: Path) -> None:
    database = build_duckdb(tmp_path / "bare.duckdb", omit=OPTIONAL)
    out = tmp_path / "out"
    out.mkdir()
    report = convert(database, out, index_date=INDEX)
    assert {table: report["tables"][table] for table in OPTIONAL} == dict.fromkeys(
        OPTIONAL, "absent"
    )
    assert len(pl.read_parquet(out / "people.parquet")) == 3
    assert _events(out).is_empty()
    assert pl.read_parquet(out / "areas.parquet").is_empty()
    assert report["fields"]["with_practice"] == 1  # care_site_id of person 1; no provider table


def test_a_table_without_its_columns_is_treated_as_absent(tmp_path: Path) -> None:
    import duckdb

    database = build_duckdb(tmp_path / "cdm.duckdb", omit=("location",))
    con = duckdb.connect(str(database))
    con.execute("CREATE TABLE location AS SELECT 'LOCATION_ID' AS column0")  # Eunomia's empties
    con.close()
    out = tmp_path / "out"
    out.mkdir()
    report = convert(database, out, index_date=INDEX)
    assert report["tables"]["location"].startswith("present without location_id")
    assert pl.read_parquet(out / "people.parquet")["area_id"].null_count() == 3


def test_a_missing_required_table_stops_naming_it(tmp_path: Path) -> None:
    database = build_duckdb(tmp_path / "cdm.duckdb", omit=("observation_period",))
    with pytest.raises(OmopSourceError, match="observation_period"):
        convert(database, tmp_path, index_date=INDEX)


def test_a_missing_source_or_schema_is_named(database: Path, tmp_path: Path) -> None:
    with pytest.raises(OmopSourceError, match="does not exist"):
        convert(tmp_path / "nowhere.duckdb", tmp_path, index_date=INDEX)
    with pytest.raises(OmopSourceError, match="cdm_schema: no schema 'cdm'"):
        convert(database, tmp_path, index_date=INDEX, cdm_schema="cdm")


def test_the_source_file_is_not_modified(database: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    convert(database, tmp_path, index_date=INDEX)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_output_is_deterministic_and_split_into_parts(
    database: Path, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert_module, "PART_ROWS", 2)
    monkeypatch.setattr(convert_module, "BATCH_ROWS", 2)
    monkeypatch.setattr(convert_module, "BUCKET_PEOPLE", 1)  # each person's events sorted alone
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        out.mkdir()
        convert(database, out, index_date=INDEX)
    digests = [
        {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.parquet"))} for out in outs
    ]
    assert digests[0] == digests[1]
    assert len(list((outs[0] / "events").glob("*.parquet"))) > 3
    keys = ["person_id", "date", "event_type", "code_system", "code"]
    for part in (outs[0] / "events").glob("*.parquet"):  # parts never mix two OMOP tables
        rows = pl.read_parquet(part)
        assert rows.equals(rows.sort(keys))
    assert _events(outs[0]).sort(keys).equals(_events(converted).sort(keys))


def test_params_require_the_omop_settings() -> None:
    from fixture_params import fixture_raw

    raw = fixture_raw()
    raw["population"]["source"] = "omop"
    with pytest.raises(ParamsError, match="omop"):
        parse_params(raw)
    raw["population"]["omop"] = {"path": "cdm.duckdb", "cdm_version": "5.3"}
    params = parse_params(raw)
    assert params.population.omop is not None
    assert params.population.omop.cdm_version == "5.3"
    raw["population"]["omop"]["cdm_version"] = "6.0"
    with pytest.raises(ParamsError, match="cdm_version"):
        parse_params(raw)


def test_synthesize_stage_converts_an_omop_source(database: Path, tmp_path: Path) -> None:
    from fixture_params import fixture_raw

    from pipeline.io import Paths, read_json
    from pipeline.synth import run

    raw = fixture_raw()
    raw["index_date"] = INDEX.isoformat()
    raw["population"] = {"source": "omop", "omop": {"path": str(database)}}
    paths = Paths.at(tmp_path / "project")
    run(parse_params(raw), paths)
    assert sorted(p.name for p in paths.population.iterdir()) == [
        "areas.parquet",
        "events",
        MAPPING_FILE,
        "people.parquet",
        "practices.parquet",
    ]
    assert list(paths.truth.iterdir()) == []
    assert read_json(paths.reports / "synthetic_calibration.json")["source"] == "extract"
    assert len(pl.read_parquet(paths.population / "people.parquet")) == 3


def test_a_failed_conversion_leaves_the_previous_population(database: Path, tmp_path: Path) -> None:
    from fixture_params import fixture_raw

    from pipeline.io import Paths
    from pipeline.synth import run

    raw = fixture_raw()
    raw["population"] = {"source": "omop", "omop": {"path": str(database), "cdm_schema": "cdm"}}
    paths = Paths.at(tmp_path / "project")
    paths.population.mkdir(parents=True)
    (paths.population / "people.parquet").write_bytes(b"previous")
    with pytest.raises(OmopSourceError, match="cdm_schema"):
        run(parse_params(raw), paths)
    assert [p.name for p in paths.population.iterdir()] == ["people.parquet"]
    assert (paths.population / "people.parquet").read_bytes() == b"previous"
