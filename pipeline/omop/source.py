"""Open an OMOP CDM database with DuckDB: a DuckDB file, or a folder of parquet or CSV tables.

Every OMOP table becomes a name the mapping's SQL can query (``person``, ``concept`` ...),
whatever the storage; DuckDB resolves column names case-insensitively, so upper-case CDMs
(Eunomia's) and lower-case ones read alike. A file is opened read-only: the source is never
written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb

from pipeline.errors import PipelineError

__all__ = ["OMOP_TABLES", "OmopSourceError", "connect", "table_columns"]

OMOP_TABLES: Final = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "measurement",
    "procedure_occurrence",
    "location",
    "care_site",
    "provider",
    "concept",
)
"""The OMOP tables the adapter reads (docs/omop.md has the mapping of each)."""

MEMORY_LIMIT: Final = "1GB"
"""DuckDB's memory cap: larger sorts and joins spill to a temporary folder."""


class OmopSourceError(PipelineError):
    """The OMOP source cannot be read (missing path, missing required table or column)."""


def _table_reader(folder: Path, table: str) -> str | None:
    """The DuckDB table function reading one OMOP table of a folder, or None when absent.

    Looks for ``<table>.parquet``, ``<table>.csv``, then a folder ``<table>/`` of parquet or CSV
    parts (names matched case-insensitively, as OMOP exports come in either case).
    """
    by_name = {path.name.lower(): path for path in folder.iterdir()}
    for suffix, reader in ((".parquet", "read_parquet"), (".csv", "read_csv")):
        path = by_name.get(table + suffix)
        if path is not None and path.is_file():
            return _reader_call(reader, str(path))
    part_folder = by_name.get(table)
    if part_folder is not None and part_folder.is_dir():
        for suffix, reader in ((".parquet", "read_parquet"), (".csv", "read_csv")):
            if any(part_folder.glob(f"*{suffix}")):
                return _reader_call(reader, str(part_folder / f"*{suffix}"))
    return None


def _reader_call(reader: str, pattern: str) -> str:
    quoted = pattern.replace("'", "''")
    if reader == "read_csv":
        # Codes keep their leading zeros and ids their exact text: concept codes, source values.
        return f"read_csv('{quoted}', header = true, all_varchar = true)"
    return f"read_parquet('{quoted}')"


def connect(
    path: Path, *, cdm_schema: str = "main", spill_dir: Path | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in which every present OMOP table can be queried by its name.

    Parameters
    ----------
    path
        A DuckDB file (opened read-only) or a folder of per-table parquet / CSV files or folders.
    cdm_schema
        The schema of the CDM tables inside a DuckDB file (ignored for a folder).
    spill_dir
        Where DuckDB spills past its memory limit (default: DuckDB's own, beside the database,
        which a read-only source folder may not allow).
    """
    if not path.exists():
        raise OmopSourceError(f"population.omop.path: {path} does not exist")
    if path.is_dir():
        con = duckdb.connect(":memory:")
        for table in OMOP_TABLES:
            reader = _table_reader(path, table)
            if reader is not None:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM {reader}")
    else:
        con = duckdb.connect(str(path), read_only=True)
        schemas = {
            row[0] for row in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()
        }
        if cdm_schema not in schemas:
            raise OmopSourceError(
                f"population.omop.cdm_schema: no schema {cdm_schema!r} in {path} "
                f"(schemas: {', '.join(sorted(schemas))})"
            )
        con.execute(f"SET search_path = '{cdm_schema}'")
    con.execute("SET enable_progress_bar = false")  # the stage prints its own one line
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    if spill_dir is not None:
        con.execute(f"SET temp_directory = '{str(spill_dir).replace(chr(39), chr(39) * 2)}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> frozenset[str]:
    """The lower-case column names of ``table``, or an empty set when it is absent."""
    try:
        rows = con.execute(f"DESCRIBE {table}").fetchall()
    except duckdb.CatalogException:
        return frozenset()
    return frozenset(str(row[0]).lower() for row in rows)
