"""The OMOP -> contract mapping, as DuckDB SQL (one builder per OMOP table; docs/omop.md).

Every event builder returns a *classified* query: one row per source row with a ``status``
(``mapped``, or the reason it is left out), so the same SQL gives the data-quality counts and,
filtered to ``mapped``, the contract's events. Nothing is inferred: a field the source lacks is
null, a concept outside the contract's code systems is counted, not guessed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HOSPITAL_EVENT_TYPES",
    "MAPPED",
    "VOCABULARY_CODE_SYSTEMS",
    "EventDomain",
    "cohort_sql",
    "domain_sql",
    "procedure_sql",
    "visit_sql",
]

MAPPED: Final = "mapped"
"""The status of a source row written to the contract."""

VOCABULARY_CODE_SYSTEMS: Final = {
    "SNOMED": "snomed_ct",
    "dm+d": "dmd",
    "ICD10": "icd10",
    "OPCS4": "opcs4",
}
"""OMOP ``vocabulary_id`` -> the contract's code system. Other vocabularies (RxNorm, LOINC,
ICD10CM, CVX ...) have no code system in the contract: their rows are counted, not mapped."""

HOSPITAL_EVENT_TYPES: Final = (
    "ae_attendance",
    "emergency_admission",
    "elective_admission",
    "outpatient",
)
EMERGENCY_ADMITTED_FROM: Final = (8870, 9203, 262)
"""``admitted_from_concept_id`` values that make an inpatient stay an emergency admission:
Emergency Room - Hospital, Emergency Room Visit, Emergency Room and Inpatient Visit."""

NO_DATE: Final = "date missing"
UNKNOWN_PERSON: Final = "person not in the cohort"
OUTSIDE: Final = "outside the observation period at the index date"
UNKNOWN_CONCEPT: Final = "unknown concept (0 or not in the concept table)"
UNMAPPED_VOCABULARY: Final = "vocabulary not in the contract"


@dataclass(frozen=True)
class EventDomain:
    """An OMOP clinical table mapped row for row to one event type."""

    table: str
    event_type: str
    date_column: str
    concept_column: str
    source_concept_column: str
    value_column: str | None = None


DOMAINS: Final = (
    EventDomain(
        "condition_occurrence",
        "diagnosis",
        "condition_start_date",
        "condition_concept_id",
        "condition_source_concept_id",
    ),
    EventDomain(
        "drug_exposure",
        "prescription",
        "drug_exposure_start_date",
        "drug_concept_id",
        "drug_source_concept_id",
    ),
    EventDomain(
        "measurement",
        "measurement",
        "measurement_date",
        "measurement_concept_id",
        "measurement_source_concept_id",
        value_column="value_as_number",
    ),
)
"""The tables mapped one row to one event (visits and procedures have their own builders)."""


def _date(index_date: dt.date) -> str:
    return f"DATE '{index_date.isoformat()}'"


def _column(columns: frozenset[str], name: str, alias: str, sql_type: str = "VARCHAR") -> str:
    """``alias.name`` cast to ``sql_type``, or a typed null when the source lacks the column."""
    if name in columns:
        return f"TRY_CAST({alias}.{name} AS {sql_type})"
    return f"CAST(NULL AS {sql_type})"


def _birth_date(person: frozenset[str]) -> str:
    """Date of birth: ``birth_datetime``, else year / month / day with a missing month taken
    as July and a missing day as the 1st (the middle of the year)."""
    month = f"COALESCE({_column(person, 'month_of_birth', 'p', 'INTEGER')}, 7)"
    day = f"COALESCE({_column(person, 'day_of_birth', 'p', 'INTEGER')}, 1)"
    built = (
        f"make_date(TRY_CAST(p.year_of_birth AS INTEGER), {month}, 1) + CAST({day} - 1 AS INTEGER)"
    )
    return f"COALESCE({_column(person, 'birth_datetime', 'p', 'DATE')}, {built})"


def _person_joins(tables: dict[str, frozenset[str]]) -> tuple[str, str, str]:
    """Joins for LSOA and practice, and their expressions (null where the source has none)."""
    person = tables["person"]
    joins, lsoa, practice = "", "CAST(NULL AS VARCHAR)", _column(person, "care_site_id", "p")
    if tables.get("location") and "location_id" in person:
        joins += (
            " LEFT JOIN location l ON CAST(l.location_id AS VARCHAR)"
            " = CAST(p.location_id AS VARCHAR)"
        )
        lsoa = (
            "CASE WHEN regexp_full_match(trim(l.location_source_value), 'E01[0-9]{6}')"
            " THEN trim(l.location_source_value) END"
        )
    if "care_site_id" in tables.get("provider", frozenset()) and "provider_id" in person:
        joins += (
            " LEFT JOIN provider pr ON CAST(pr.provider_id AS VARCHAR)"
            " = CAST(p.provider_id AS VARCHAR)"
        )
        practice = f"COALESCE({practice}, CAST(pr.care_site_id AS VARCHAR))"
    return joins, lsoa, practice


def _ethnicity(person: frozenset[str]) -> tuple[str, str]:
    """Joins to the NHS ethnic category map on the ethnicity, then race, source value."""
    joins, found = "", []
    for k, name in enumerate(("ethnicity_source_value", "race_source_value")):
        if name in person:
            joins += f" LEFT JOIN _ethnicity e{k} ON e{k}.key = upper(trim(p.{name}))"
            found.append(f"e{k}.ethnicity")
    return joins, (f"COALESCE({', '.join(found)})" if found else "CAST(NULL AS VARCHAR)")


def cohort_sql(
    tables: dict[str, frozenset[str]], *, index_date: dt.date, min_follow_up_months: int
) -> str:
    """One row per OMOP person: contract fields, the observation period holding the index date,
    and a ``status`` (``mapped`` = in the cohort)."""
    index = _date(index_date)
    joins, lsoa, practice = _person_joins(tables)
    ethnicity_joins, ethnicity = _ethnicity(tables["person"])
    return f"""
    WITH at_index AS (
        SELECT CAST(person_id AS VARCHAR) AS omop_id,
               TRY_CAST(observation_period_start_date AS DATE) AS obs_start,
               TRY_CAST(observation_period_end_date AS DATE) AS obs_end
        FROM observation_period
        WHERE obs_start <= {index} AND obs_end >= {index}
        QUALIFY row_number() OVER (PARTITION BY omop_id ORDER BY obs_start, obs_end DESC) = 1
    ), people AS (
        SELECT CAST(p.person_id AS VARCHAR) AS omop_id,
               {_birth_date(tables["person"])} AS birth_date,
               CASE TRY_CAST(p.gender_concept_id AS BIGINT)
                    WHEN 8507 THEN 'M' WHEN 8532 THEN 'F' ELSE 'U' END AS sex,
               {ethnicity} AS ethnicity, {lsoa} AS lsoa, {practice} AS practice_id
        FROM person p {joins} {ethnicity_joins}
    )
    SELECT people.*, a.obs_start, a.obs_end,
           date_sub('year', people.birth_date, {index}) AS age,
           CASE WHEN a.omop_id IS NULL THEN 'not observed at the index date'
                WHEN a.obs_end < {index} + INTERVAL {min_follow_up_months} MONTH
                    THEN 'observed less than {min_follow_up_months} months after the index date'
                WHEN people.birth_date IS NULL THEN 'year of birth missing'
                WHEN people.birth_date > {index} THEN 'born after the index date'
                WHEN age > 110 THEN 'older than 110 at the index date'
                ELSE '{MAPPED}' END AS status
    FROM people LEFT JOIN at_index a USING (omop_id)
    """


def _concept_joins(columns: frozenset[str], domain: EventDomain) -> tuple[str, str, str, str]:
    """Joins resolving the standard, then the source, concept to a contract code system.

    Returns the joins and the expressions of code, code system and vocabulary.
    """
    joins = (
        f" LEFT JOIN _concept s ON s.concept_id = "
        f"{_column(columns, domain.concept_column, 't', 'BIGINT')}"
    )
    code, system, vocabulary = "s.concept_code", "s.code_system", "s.vocabulary_id"
    if domain.source_concept_column in columns:
        joins += (
            f" LEFT JOIN _concept r ON r.concept_id = "
            f"TRY_CAST(t.{domain.source_concept_column} AS BIGINT)"
        )
        code = "CASE WHEN s.code_system IS NOT NULL THEN s.concept_code ELSE r.concept_code END"
        system = "COALESCE(s.code_system, r.code_system)"
        vocabulary = "COALESCE(s.vocabulary_id, r.vocabulary_id)"
    return joins, code, system, vocabulary


def _status(concept_found: str, *, date: str, system: str) -> str:
    """The status of an event row (the first failing rule wins); ``date`` and ``system`` are
    the row's date and code system expressions (the cohort is joined as ``c``)."""
    return f"""CASE WHEN c.person_id IS NULL THEN '{UNKNOWN_PERSON}'
                WHEN {date} IS NULL THEN '{NO_DATE}'
                WHEN {date} < c.obs_start OR {date} > c.obs_end THEN '{OUTSIDE}'
                WHEN NOT ({concept_found}) THEN '{UNKNOWN_CONCEPT}'
                WHEN ({system}) IS NULL THEN '{UNMAPPED_VOCABULARY}'
                ELSE '{MAPPED}' END"""


def domain_sql(columns: frozenset[str], domain: EventDomain) -> str:
    """Classified events of a one-row-one-event table (conditions, drugs, measurements).

    Carries ``visit_id`` (the row's visit, or null) for the visits' primary diagnosis.
    """
    joins, code, system, vocabulary = _concept_joins(columns, domain)
    value = (
        _column(columns, domain.value_column, "t", "DOUBLE")
        if domain.value_column
        else "CAST(NULL AS DOUBLE)"
    )
    found = "s.concept_id IS NOT NULL" + (" OR r.concept_id IS NOT NULL" if " r " in joins else "")
    date = f"TRY_CAST(t.{domain.date_column} AS DATE)"
    return f"""
    SELECT c.person_id, c.bucket, {date} AS date,
           '{domain.event_type}' AS event_type, {code} AS code, {value} AS value,
           {system} AS code_system, {vocabulary} AS vocabulary,
           {_column(columns, "visit_occurrence_id", "t")} AS visit_id,
           {_status(found, date=date, system=system)} AS status
    FROM {domain.table} t
    LEFT JOIN _cohort c ON c.omop_id = CAST(t.person_id AS VARCHAR)
    {joins}
    """


def visit_sql(columns: frozenset[str], *, cdm_version: str) -> str:
    """Classified visits: event type from the visit concept map (an inpatient stay admitted from
    the emergency department is an emergency admission); code: the visit's first mapped
    diagnosis (``_visit_dx``), else the map's fallback code."""
    admitted = "admitted_from_concept_id" if cdm_version == "5.4" else "admitting_source_concept_id"
    hospital = ", ".join(f"'{name}'" for name in HOSPITAL_EVENT_TYPES)
    emergency = ", ".join(str(concept) for concept in EMERGENCY_ADMITTED_FROM)
    date = "TRY_CAST(t.visit_start_date AS DATE)"
    return f"""
    SELECT c.person_id, c.bucket, {date} AS date,
           CASE WHEN m.event_type = 'elective_admission'
                     AND {_column(columns, admitted, "t", "BIGINT")} IN ({emergency})
                THEN 'emergency_admission' ELSE m.event_type END AS event_type,
           CASE WHEN m.event_type IN ({hospital}) AND d.code IS NOT NULL THEN d.code
                ELSE m.fallback_code END AS code,
           CAST(NULL AS DOUBLE) AS value,
           CASE WHEN m.event_type IN ({hospital}) AND d.code IS NOT NULL THEN d.code_system
                ELSE m.fallback_code_system END AS code_system,
           CAST(TRY_CAST(t.visit_concept_id AS BIGINT) AS VARCHAR) AS vocabulary,
           CAST(t.visit_occurrence_id AS VARCHAR) AS visit_id,
           {_status("m.event_type IS NOT NULL", date=date, system="m.fallback_code_system")}
               AS status
    FROM visit_occurrence t
    LEFT JOIN _cohort c ON c.omop_id = CAST(t.person_id AS VARCHAR)
    LEFT JOIN _visit_map m ON m.visit_concept_id = TRY_CAST(t.visit_concept_id AS BIGINT)
    LEFT JOIN _visit_dx d ON d.visit_id = CAST(t.visit_occurrence_id AS VARCHAR)
    """


NOT_IN_HOSPITAL_VISIT: Final = "procedure outside a mapped hospital visit"


def procedure_sql(columns: frozenset[str]) -> str:
    """Classified procedures: each one an event of its hospital visit's type (the contract
    carries procedures on hospital events); a procedure outside a mapped hospital visit is
    counted, as the contract has no primary-care procedure event."""
    domain = EventDomain(
        "procedure_occurrence",
        "",
        "procedure_date",
        "procedure_concept_id",
        "procedure_source_concept_id",
    )
    joins, code, system, vocabulary = _concept_joins(columns, domain)
    found = "s.concept_id IS NOT NULL" + (" OR r.concept_id IS NOT NULL" if " r " in joins else "")
    visit = _column(columns, "visit_occurrence_id", "t")
    date = "TRY_CAST(t.procedure_date AS DATE)"
    status = _status(found, date=date, system=system)
    return f"""
    SELECT c.person_id, c.bucket, {date} AS date, v.event_type,
           {code} AS code, CAST(NULL AS DOUBLE) AS value, {system} AS code_system,
           {vocabulary} AS vocabulary, {visit} AS visit_id,
           CASE WHEN ({status}) = '{MAPPED}' AND v.event_type IS NULL
                THEN '{NOT_IN_HOSPITAL_VISIT}' ELSE {status} END AS status
    FROM procedure_occurrence t
    LEFT JOIN _cohort c ON c.omop_id = CAST(t.person_id AS VARCHAR)
    LEFT JOIN _hospital_visits v ON v.visit_id = {visit}
    {joins}
    """
