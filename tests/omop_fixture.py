"""A tiny hand-built OMOP CDM v5.4 database: every mapped table, with known edge cases.

Index date 2020-01-01. People 1-3 enter the cohort; 4 is born after the index date, 5 is not
observed at it, 6 has no year of birth; observation_period also names a person 99 who is not in
``person``. Each clinical table holds a row of each case the mapping distinguishes (see the
comments), so the tests can state the exact result of each.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import duckdb

from pipeline.omop.source import OMOP_TABLES

INDEX = dt.date(2020, 1, 1)

TABLES = {
    "concept": (
        "concept_id BIGINT, concept_name VARCHAR, vocabulary_id VARCHAR, concept_code VARCHAR",
        [
            (0, "No matching concept", "None", "No matching concept"),
            (192671, "Gastrointestinal hemorrhage", "SNOMED", "74474003"),
            (201826, "Type 2 diabetes mellitus", "SNOMED", "44054006"),
            (45576876, "Gastrointestinal hemorrhage, unspecified", "ICD10CM", "K92.2"),
            (35207668, "Gastrointestinal haemorrhage, unspecified", "ICD10", "K92.2"),
            (1118084, "celecoxib", "RxNorm", "140587"),
            (36000001, "Paracetamol 500mg tablets", "dm+d", "42109611000001109"),
            (3004249, "Systolic blood pressure", "LOINC", "8480-6"),
            (4152194, "Systolic blood pressure", "SNOMED", "271649006"),
            (4301351, "Appendectomy", "SNOMED", "80146002"),
        ],
    ),
    "person": (
        "person_id BIGINT, gender_concept_id BIGINT, year_of_birth INTEGER, month_of_birth INTEGER,"
        " day_of_birth INTEGER, birth_datetime DATE, location_id BIGINT, care_site_id BIGINT,"
        " provider_id BIGINT, race_source_value VARCHAR, ethnicity_source_value VARCHAR",
        [
            # born 1950-03-15: 69 at the index date; LSOA E01000001 (IMD decile 9); practice 10
            (1, 8507, 1950, 3, 15, None, 1, 10, None, "white", "english"),
            # year only (taken as 1960-07-01): 59; NHS ethnic category H; practice via provider
            (2, 8532, 1960, None, None, None, None, None, 5, None, "H"),
            # unknown gender; birth_datetime 2000-06-01 wins over the year; a postcode, no LSOA
            (3, 0, 1999, 1, 1, dt.date(2000, 6, 1), 2, None, None, None, None),
            (4, 8532, 2021, 1, 1, None, None, None, None, None, None),  # born after the index
            (5, 8507, 1970, 1, 1, None, None, None, None, None, None),  # not observed at index
            (6, 8507, None, None, None, None, None, None, None, None, None),  # no year of birth
        ],
    ),
    "observation_period": (
        "observation_period_id BIGINT, person_id BIGINT, observation_period_start_date DATE,"
        " observation_period_end_date DATE, period_type_concept_id BIGINT",
        [
            (1, 1, dt.date(2010, 1, 1), dt.date(2023, 1, 1), 0),
            (2, 2, dt.date(2010, 1, 1), dt.date(2023, 1, 1), 0),
            (3, 3, dt.date(2010, 1, 1), dt.date(2020, 3, 1), 0),
            (4, 4, dt.date(2010, 1, 1), dt.date(2023, 1, 1), 0),  # a data error: before birth
            (5, 5, dt.date(2010, 1, 1), dt.date(2018, 1, 1), 0),
            (6, 6, dt.date(2010, 1, 1), dt.date(2023, 1, 1), 0),
            (7, 99, dt.date(2010, 1, 1), dt.date(2023, 1, 1), 0),
        ],
    ),
    "visit_occurrence": (
        "visit_occurrence_id BIGINT, person_id BIGINT, visit_concept_id BIGINT,"
        " visit_start_date DATE, admitted_from_concept_id BIGINT",
        [
            (100, 1, 9203, dt.date(2019, 5, 1), None),  # ER: ae_attendance, fallback code
            (101, 1, 9201, dt.date(2020, 6, 1), 8870),  # inpatient from ER: emergency, its dx
            (102, 2, 9201, dt.date(2019, 2, 1), None),  # inpatient: elective, fallback code
            (103, 2, 581477, dt.date(2019, 3, 1), None),  # office visit: GP face to face
            (104, 2, 12345, dt.date(2019, 4, 1), None),  # unknown visit concept
            (105, 5, 9201, dt.date(2015, 1, 1), None),  # person not in the cohort
            (106, 1, 9201, dt.date(2005, 1, 1), None),  # before the observation period
        ],
    ),
    "condition_occurrence": (
        "condition_occurrence_id BIGINT, person_id BIGINT, condition_concept_id BIGINT,"
        " condition_source_concept_id BIGINT, condition_start_date DATE,"
        " visit_occurrence_id BIGINT",
        [
            (1, 1, 192671, 0, dt.date(2020, 6, 1), 101),  # SNOMED, in visit 101
            (2, 1, 0, 0, dt.date(2019, 1, 1), None),  # unknown concept
            (3, 2, 45576876, 35207668, dt.date(2019, 2, 5), None),  # ICD10CM -> source ICD10
            (4, 2, 45576876, 0, dt.date(2019, 2, 6), None),  # ICD10CM only: unmapped
            (5, 2, 201826, 0, dt.date(2009, 1, 1), None),  # before the observation period
            (6, 99, 201826, 0, dt.date(2019, 1, 1), None),  # person not in the cohort
        ],
    ),
    "drug_exposure": (
        "drug_exposure_id BIGINT, person_id BIGINT, drug_concept_id BIGINT,"
        " drug_source_concept_id BIGINT, drug_exposure_start_date DATE",
        [
            (1, 1, 1118084, 0, dt.date(2019, 6, 1)),  # RxNorm only: unmapped
            (2, 2, 1118084, 36000001, dt.date(2019, 6, 2)),  # dm+d source concept
        ],
    ),
    "measurement": (
        "measurement_id BIGINT, person_id BIGINT, measurement_concept_id BIGINT,"
        " measurement_source_concept_id BIGINT, measurement_date DATE, value_as_number DOUBLE,"
        " unit_concept_id BIGINT",
        [
            (1, 1, 4152194, 0, dt.date(2019, 7, 1), 142.0, 8876),  # SNOMED systolic BP
            (2, 1, 3004249, 0, dt.date(2019, 7, 1), 141.0, 8876),  # LOINC: unmapped
        ],
    ),
    "procedure_occurrence": (
        "procedure_occurrence_id BIGINT, person_id BIGINT, procedure_concept_id BIGINT,"
        " procedure_source_concept_id BIGINT, procedure_date DATE, visit_occurrence_id BIGINT",
        [
            (1, 1, 4301351, 0, dt.date(2020, 6, 2), 101),  # in emergency admission 101
            (2, 2, 4301351, 0, dt.date(2019, 3, 1), 103),  # in a GP visit: not mapped
            (3, 2, 4301351, 0, dt.date(2019, 3, 2), None),  # no visit: not mapped
        ],
    ),
    "location": (
        "location_id BIGINT, location_source_value VARCHAR",
        [(1, "E01000001"), (2, "SW1A 1AA")],
    ),
    "care_site": ("care_site_id BIGINT, care_site_name VARCHAR", [(10, "A"), (11, "B")]),
    "provider": ("provider_id BIGINT, care_site_id BIGINT", [(5, 11)]),
}

OPTIONAL = tuple(
    table for table in OMOP_TABLES if table not in ("person", "observation_period", "concept")
)


def build_duckdb(path: Path, *, omit: tuple[str, ...] = ()) -> Path:
    """Write the tiny CDM (less the tables in ``omit``) to a DuckDB file at ``path``."""
    con = duckdb.connect(str(path))
    try:
        for table, (columns, rows) in TABLES.items():
            if table in omit:
                continue
            con.execute(f"CREATE TABLE {table} ({columns})")
            if rows:
                marks = ", ".join("?" for _ in rows[0])
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    finally:
        con.close()
    return path


def export_folder(database: Path, folder: Path, *, fmt: Literal["parquet", "csv"]) -> Path:
    """The same tables as one parquet or CSV file each, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(database), read_only=True)
    try:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall()]
        for table in tables:
            options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER"
            con.execute(f"COPY {table} TO '{folder / f'{table}.{fmt}'}' ({options})")
    finally:
        con.close()
    return folder
