"""Convert an OMOP CDM database into the contract's tables, streaming.

DuckDB runs the mapping (:mod:`pipeline.omop.mapping`) and hands Arrow record batches to a
parquet writer, so no table is ever held as Python objects; large sorts spill to disk. The
conversion writes ``areas``, ``practices``, ``people``, ``events/part-NNNNN.parquet`` (events over
the whole observation period at the index date, before AND after it) and no ``outcomes``: they
are derived from the events after the index date. ``omop_mapping.json`` beside them counts every
source row left out, by table and reason (exact counts: it stays under ``data/``).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PopulationParams
from pipeline.io import ROW_GROUP_SIZE, Paths, atomic_dir, dumps_json
from pipeline.omop import mapping
from pipeline.omop.source import OmopSourceError, connect, table_columns

__all__ = ["EVENTS_ARROW_SCHEMA", "MAPPING_FILE", "convert", "import_omop"]

DATA_DIR: Final = Path(__file__).resolve().parent
VISIT_MAP: Final = DATA_DIR / "visit_concepts.csv"
ETHNICITY_MAP: Final = DATA_DIR / "nhs_ethnic_category.csv"
LSOA_IMD: Final = DATA_DIR / "lsoa_imd2019.csv"
LSOA_IMD_COLUMNS: Final = "'lsoa11_code': 'VARCHAR', 'imd_rank': 'INTEGER', 'imd_decile': 'TINYINT'"
MAPPING_FILE: Final = "omop_mapping.json"
PART_ROWS: Final = 4_000_000
"""Events per parquet part (several row groups each)."""
BATCH_ROWS: Final = 262_144
BUCKET_PEOPLE: Final = 100_000
"""People whose events are sorted together: each OMOP table is written bucket by bucket, so the
sort's memory stays flat whatever the population."""

REQUIRED: Final = {
    "person": ("person_id", "gender_concept_id", "year_of_birth"),
    "observation_period": (
        "person_id",
        "observation_period_start_date",
        "observation_period_end_date",
    ),
    "concept": ("concept_id", "concept_code", "vocabulary_id"),
    "visit_occurrence": (
        "person_id",
        "visit_concept_id",
        "visit_start_date",
        "visit_occurrence_id",
    ),
    "condition_occurrence": ("person_id", "condition_concept_id", "condition_start_date"),
    "drug_exposure": ("person_id", "drug_concept_id", "drug_exposure_start_date"),
    "measurement": ("person_id", "measurement_concept_id", "measurement_date"),
    "procedure_occurrence": ("person_id", "procedure_concept_id", "procedure_date"),
    "location": ("location_id", "location_source_value"),
    "care_site": ("care_site_id",),
    "provider": ("provider_id",),
}
"""Columns without which a table is treated as absent (and reported so)."""
MANDATORY: Final = ("person", "observation_period", "concept")

EVENTS_ARROW_SCHEMA: Final = pa.schema(
    [
        ("person_id", pa.string()),
        ("date", pa.date32()),
        ("event_type", pa.string()),
        ("code", pa.string()),
        ("value", pa.float64()),
        ("code_system", pa.string()),
    ]
)
EVENT_TABLES: Final = (
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "procedure_occurrence",
)


def inspect_tables(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """The usable tables with their columns, and the state of every table read.

    A table lacking a required column (Eunomia stores its empty tables as a header row of
    ``column0``, ``column1`` ...) is treated as absent. A mandatory table missing stops the
    conversion with an error naming it.
    """
    tables: dict[str, frozenset[str]] = {}
    state: dict[str, str] = {}
    for table, required in REQUIRED.items():
        columns = table_columns(con, table)
        missing = [name for name in required if name not in columns]
        if not columns:
            state[table] = "absent"
        elif missing:
            state[table] = f"present without {', '.join(missing)}: treated as absent"
        else:
            state[table] = "read"
            tables[table] = columns
    broken = [f"{table} ({state[table]})" for table in MANDATORY if table not in tables]
    if broken:
        raise OmopSourceError(
            "the OMOP source lacks required tables: " + "; ".join(broken) + " (docs/omop.md)"
        )
    return tables, state


def _csv(path: Path, columns: str) -> str:
    quoted = str(path).replace("'", "''")
    return f"read_csv('{quoted}', header = true, columns = {{{columns}}})"


def load_maps(con: duckdb.DuckDBPyConnection) -> None:
    """The shipped lookups and the concept table, as temporary tables of the connection."""
    vocabularies = ", ".join(
        f"('{vocabulary}', '{system}')"
        for vocabulary, system in mapping.VOCABULARY_CODE_SYSTEMS.items()
    )
    visit_columns = (
        "'visit_concept_id': 'BIGINT', 'concept_name': 'VARCHAR', 'event_type': 'VARCHAR', "
        "'fallback_code': 'VARCHAR', 'fallback_code_system': 'VARCHAR'"
    )
    statements = [
        f"CREATE TEMP TABLE _vocabulary AS SELECT * FROM (VALUES {vocabularies}) "
        f"AS v(vocabulary_id, code_system)",
        "CREATE TEMP TABLE _concept AS SELECT TRY_CAST(k.concept_id AS BIGINT) AS concept_id, "
        "trim(CAST(k.concept_code AS VARCHAR)) AS concept_code, "
        "CAST(k.vocabulary_id AS VARCHAR) AS vocabulary_id, v.code_system FROM concept k "
        "LEFT JOIN _vocabulary v ON v.vocabulary_id = CAST(k.vocabulary_id AS VARCHAR) "
        "WHERE TRY_CAST(k.concept_id AS BIGINT) <> 0",
        f"CREATE TEMP TABLE _visit_map AS SELECT * FROM {_csv(VISIT_MAP, visit_columns)}",
        "CREATE TEMP TABLE _ethnicity AS SELECT upper(trim(source_value)) AS key, ethnicity "
        "FROM " + _csv(ETHNICITY_MAP, "'source_value': 'VARCHAR', 'ethnicity': 'VARCHAR'"),
        "CREATE TEMP TABLE _lsoa_imd AS SELECT lsoa11_code, imd_decile FROM "
        + _csv(
            LSOA_IMD, "'lsoa11_code': 'VARCHAR', 'imd_rank': 'INTEGER', 'imd_decile': 'TINYINT'"
        ),
    ]
    for statement in statements:
        con.execute(statement)


def build_cohort(
    con: duckdb.DuckDBPyConnection,
    tables: dict[str, frozenset[str]],
    *,
    index_date: dt.date,
    min_follow_up_months: int,
) -> dict[str, int]:
    """``_cohort``: the people observed at the index date; returns people counted by status."""
    sql = mapping.cohort_sql(
        tables, index_date=index_date, min_follow_up_months=min_follow_up_months
    )
    con.execute(f"CREATE TEMP TABLE _person_status AS {sql}")
    con.execute(
        f"CREATE TEMP TABLE _cohort AS SELECT *, omop_id AS person_id, "
        f"(row_number() OVER (ORDER BY omop_id) - 1) // {BUCKET_PEOPLE} AS bucket "
        f"FROM _person_status WHERE status = '{mapping.MAPPED}'"
    )
    rows = con.execute("SELECT status, count(*) FROM _person_status GROUP BY ALL").fetchall()
    return {str(status): int(n) for status, n in rows}


def _write_query(con: duckdb.DuckDBPyConnection, sql: str, target: Path, schema: pa.Schema) -> int:
    """Stream a query's rows into one parquet file; returns the rows written."""
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    rows = 0
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(batch.cast(schema), row_group_size=ROW_GROUP_SIZE)
            rows += batch.num_rows
    return rows


def write_units(con: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, int]:
    """``people``, ``areas`` and ``practices`` of the cohort; returns their row counts."""
    queries = {
        "people": (
            "SELECT person_id, sex, CAST(age AS SMALLINT) AS age, ethnicity, lsoa AS area_id, "
            "practice_id FROM _cohort ORDER BY person_id"
        ),
        "areas": (
            "SELECT DISTINCT lsoa AS area_id, CAST(NULL AS VARCHAR) AS icb_code, "
            "CAST(NULL AS VARCHAR) AS icb_name, CAST(NULL AS VARCHAR) AS region, "
            "CAST(m.imd_decile AS TINYINT) AS imd_decile, CAST(NULL AS VARCHAR) AS rural_urban "
            "FROM _cohort c LEFT JOIN _lsoa_imd m ON m.lsoa11_code = c.lsoa "
            "WHERE lsoa IS NOT NULL ORDER BY area_id"
        ),
        "practices": (
            "SELECT DISTINCT practice_id, CAST(NULL AS VARCHAR) AS icb_code FROM _cohort "
            "WHERE practice_id IS NOT NULL ORDER BY practice_id"
        ),
    }
    counts = {}
    for table, sql in queries.items():
        schema = con.sql(sql).limit(0).to_arrow_table().schema
        counts[table] = _write_query(con, sql, out_dir / f"{table}.parquet", schema)
    return counts


def _classified(tables: dict[str, frozenset[str]], table: str, *, cdm_version: str) -> str:
    columns = tables[table]
    if table == "visit_occurrence":
        return mapping.visit_sql(columns, cdm_version=cdm_version)
    if table == "procedure_occurrence":
        return mapping.procedure_sql(columns)
    domain = next(domain for domain in mapping.DOMAINS if domain.table == table)
    return mapping.domain_sql(columns, domain)


def prepare_visits(
    con: duckdb.DuckDBPyConnection, tables: dict[str, frozenset[str]], *, cdm_version: str
) -> None:
    """``_visit_dx`` (each visit's first mapped diagnosis) and ``_hospital_visits`` (mapped
    hospital visits and their event type), empty when their tables are absent."""
    if "condition_occurrence" in tables:
        conditions = _classified(tables, "condition_occurrence", cdm_version=cdm_version)
        con.execute(
            f"CREATE TEMP TABLE _visit_dx AS SELECT visit_id, code, code_system FROM "
            f"({conditions}) WHERE status = '{mapping.MAPPED}' AND visit_id IS NOT NULL "
            f"QUALIFY row_number() OVER (PARTITION BY visit_id ORDER BY date, code) = 1"
        )
    else:
        con.execute(
            "CREATE TEMP TABLE _visit_dx(visit_id VARCHAR, code VARCHAR, code_system VARCHAR)"
        )
    hospital = ", ".join(f"'{name}'" for name in mapping.HOSPITAL_EVENT_TYPES)
    if "visit_occurrence" in tables:
        visits = _classified(tables, "visit_occurrence", cdm_version=cdm_version)
        con.execute(
            f"CREATE TEMP TABLE _hospital_visits AS SELECT visit_id, event_type FROM ({visits}) "
            f"WHERE status = '{mapping.MAPPED}' AND event_type IN ({hospital})"
        )
    else:
        con.execute("CREATE TEMP TABLE _hospital_visits(visit_id VARCHAR, event_type VARCHAR)")


def count_statuses(con: duckdb.DuckDBPyConnection, classified: str) -> dict[str, Any]:
    """Rows of a classified query: read, mapped, excluded by reason, and the unmapped
    vocabularies (the OMOP vocabulary_id, or the visit concept id of an unmapped visit)."""
    rows = con.execute(
        f"SELECT status, CASE WHEN status = '{mapping.UNMAPPED_VOCABULARY}' THEN vocabulary END, "
        f"count(*) FROM ({classified}) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    excluded: dict[str, int] = {}
    vocabularies: dict[str, int] = {}
    for status, vocabulary, n in rows:
        if status != mapping.MAPPED:
            excluded[status] = excluded.get(status, 0) + int(n)
        if vocabulary is not None:
            vocabularies[str(vocabulary)] = int(n)
    read = sum(int(n) for _, _, n in rows)
    return {
        "rows": read,
        "mapped": read - sum(excluded.values()),
        "excluded": excluded,
        "unmapped_vocabularies": vocabularies,
    }


def _event_batches(
    con: duckdb.DuckDBPyConnection, classified: str, *, buckets: int
) -> Iterator[pa.RecordBatch]:
    """The mapped events of a classified query, sorted, one bucket of people at a time.

    The source is read once into a DuckDB temporary table (buffer-managed: it spills to disk
    past the memory limit); each bucket is then sorted on its own, so the sort's memory stays
    flat whatever the population.
    """
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _events AS SELECT bucket, person_id, date, event_type, "
        f"code, value, code_system FROM ({classified}) WHERE status = '{mapping.MAPPED}'"
    )
    try:
        for bucket in range(buckets):
            sql = (
                f"SELECT person_id, date, event_type, code, value, code_system FROM _events "
                f"WHERE bucket = {bucket} "
                f"ORDER BY person_id, date, event_type, code_system, code, value"
            )
            for batch in con.sql(sql).to_arrow_reader(BATCH_ROWS):
                yield batch.cast(EVENTS_ARROW_SCHEMA)
    finally:
        con.execute("DROP TABLE IF EXISTS _events")


class _PartWriter:
    """Writes record batches into ``events/part-NNNNN.parquet``, a new part every
    :data:`PART_ROWS` rows (parts never mix two OMOP tables)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.parts, self.rows = folder, 0, 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self.rows >= PART_ROWS:
            self.close()
            path = self.folder / f"part-{self.parts:05d}.parquet"
            self._writer = pq.ParquetWriter(path, EVENTS_ARROW_SCHEMA, compression="zstd")
            self.parts, self.rows = self.parts + 1, 0
        self._writer.write_batch(batch, row_group_size=ROW_GROUP_SIZE)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_events(
    con: duckdb.DuckDBPyConnection,
    tables: dict[str, frozenset[str]],
    out_dir: Path,
    *,
    cdm_version: str,
) -> dict[str, dict[str, Any]]:
    """Every present clinical table's events into ``events/``; returns each table's counts."""
    folder = out_dir / "events"
    folder.mkdir()
    writer = _PartWriter(folder)
    counts: dict[str, dict[str, Any]] = {}
    buckets = int(con.execute("SELECT count(DISTINCT bucket) FROM _cohort").fetchall()[0][0])
    try:
        for table in EVENT_TABLES:
            if table not in tables:
                continue
            classified = _classified(tables, table, cdm_version=cdm_version)
            counts[table] = count_statuses(con, classified)
            for batch in _event_batches(con, classified, buckets=buckets):
                writer.write(batch)
            writer.close()
    finally:
        writer.close()
    if writer.parts == 0:  # no events at all: one empty part keeps the table readable
        pq.write_table(EVENTS_ARROW_SCHEMA.empty_table(), folder / "part-00000.parquet")
    return counts


def field_availability(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """People of the cohort with each equity field, and the fields OMOP cannot supply."""
    row = con.execute(
        "SELECT count(*), count(ethnicity), count(lsoa), count(m.imd_decile), count(practice_id), "
        "count(*) FILTER (WHERE sex = 'U'), max(obs_end) "
        "FROM _cohort c LEFT JOIN _lsoa_imd m ON m.lsoa11_code = c.lsoa"
    ).fetchall()[0]
    people, ethnicity, lsoa, imd, practice, unknown_sex, last = row
    return {
        "people": int(people),
        "with_ethnicity": int(ethnicity),
        "with_lsoa": int(lsoa),
        "with_imd_decile": int(imd),
        "with_practice": int(practice),
        "sex_unknown": int(unknown_sex),
        "last_observation_end": None if last is None else last.isoformat(),
        "unavailable": {
            "icb_code": "OMOP records no integrated care board",
            "region": "OMOP records no NHS region",
            "rural_urban": "OMOP records no rural-urban classification",
        },
    }


def convert(
    source: Path,
    out_dir: Path,
    *,
    index_date: dt.date,
    cdm_version: str = "5.4",
    cdm_schema: str = "main",
    min_follow_up_months: int = 0,
) -> dict[str, Any]:
    """Convert an OMOP CDM database into the contract's tables.

    Parameters
    ----------
    source
        A DuckDB file (opened read-only) or a folder of per-table parquet / CSV files.
    out_dir
        An empty folder for ``areas``, ``practices``, ``people``, ``events/`` and
        :data:`MAPPING_FILE` (the caller renames it into place on success).
    index_date
        Ages are taken at it; the cohort is the people observed at it.
    cdm_version, cdm_schema, min_follow_up_months
        As params ``population.omop``.

    Returns
    -------
    dict
        The mapping report (also written to ``out_dir / omop_mapping.json``): table states,
        people and event rows read, written and left out by reason, field availability.

    Raises
    ------
    OmopSourceError
        The source is missing, or lacks ``person``, ``observation_period`` or ``concept``.
    """
    with tempfile.TemporaryDirectory(prefix="omop-spill-") as spill:
        return _convert(
            connect(source, cdm_schema=cdm_schema, spill_dir=Path(spill)),
            out_dir,
            index_date=index_date,
            cdm_version=cdm_version,
            min_follow_up_months=min_follow_up_months,
        )


def _convert(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    *,
    index_date: dt.date,
    cdm_version: str,
    min_follow_up_months: int,
) -> dict[str, Any]:
    """:func:`convert` on an open connection (closed on return)."""
    try:
        tables, state = inspect_tables(con)
        load_maps(con)
        people = build_cohort(
            con, tables, index_date=index_date, min_follow_up_months=min_follow_up_months
        )
        units = write_units(con, out_dir)
        prepare_visits(con, tables, cdm_version=cdm_version)
        events = write_events(con, tables, out_dir, cdm_version=cdm_version)
        fields = field_availability(con)
    finally:
        con.close()
    report = {
        "cdm_version": cdm_version,
        "index_date": index_date.isoformat(),
        "tables": state,
        "people": {
            "rows": sum(people.values()),
            "mapped": people.get(mapping.MAPPED, 0),
            "excluded": {k: v for k, v in sorted(people.items()) if k != mapping.MAPPED},
        },
        "written": units,
        "events": events,
        "fields": fields,
    }
    (out_dir / MAPPING_FILE).write_text(dumps_json(report) + "\n")
    return report


def import_omop(
    population: PopulationParams, paths: Paths, *, index_date: dt.date
) -> dict[str, Any]:
    """Stage ``synthesize`` with ``population.source: omop``: convert the database into
    ``data/population/`` (swapped in atomically on success; ``data/truth/`` left empty) and
    return the calibration-report stub of a real extract."""
    omop = population.omop
    if omop is None:
        raise OmopSourceError("population.omop (with its path) is required when source is 'omop'")
    source = Path(omop.path)
    with atomic_dir(paths.population) as population_dir, atomic_dir(paths.truth) as truth_dir:
        for folder in (population_dir, truth_dir):
            folder.chmod(0o755)  # mkdtemp makes 0700; the data folders are shared
        convert(
            source if source.is_absolute() else paths.root / source,
            population_dir,
            index_date=index_date,
            cdm_version=omop.cdm_version,
            cdm_schema=omop.cdm_schema,
            min_follow_up_months=omop.min_follow_up_months,
        )
    return {
        "source": "extract",
        "note": f"OMOP CDM v{omop.cdm_version} database: no synthetic calibration, no truth",
    }
