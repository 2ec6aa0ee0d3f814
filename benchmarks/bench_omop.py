"""Benchmark: the OMOP adapter converting an OMOP-shaped database of 1M people with their events.

The database is generated from the synthetic world: ``synthesize`` at ``--people``, then DuckDB
reshapes its tables into OMOP CDM v5.4 tables in one DuckDB file (person, observation_period,
visit_occurrence, condition_occurrence, drug_exposure, measurement, location with real LSOA codes,
care_site, concept). The conversion (``pipeline.omop.convert``) runs in a child process, which
reports its own wall time and peak RSS (DuckDB's native memory included).

    python benchmarks/bench_omop.py                  # 1M people
    python benchmarks/bench_omop.py --people 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import yaml

from pipeline.contract import EVENT_CODE_SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
LSOA_IMD = ROOT / "pipeline" / "omop" / "lsoa_imd2019.csv"

SYNTH_CHILD = """
import sys
from pipeline.config import load_params
from pipeline.io import Paths
from pipeline.synth import run
root = sys.argv[1]
run(load_params(root + "/params.yaml"), Paths.at(root))
"""

CONVERT_CHILD = """
import datetime as dt, json, sys, time
from pathlib import Path
from pipeline.omop import convert
start = time.perf_counter()
index_date = dt.date.fromisoformat(sys.argv[3])
report = convert(Path(sys.argv[1]), Path(sys.argv[2]), index_date=index_date)
seconds = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would carry the parent's across fork and exec)
status = Path("/proc/self/status").read_text().splitlines()
peak_gb = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024**2
events = sum(table["mapped"] for table in report["events"].values())
rows = sum(table["rows"] for table in report["events"].values())
result = {"seconds": seconds, "peak_rss_gb": peak_gb, "events": events, "rows": rows,
          "people": report["people"]["mapped"]}
print("RESULT " + json.dumps(result))
"""

VISIT_CONCEPTS = {
    "gp_consultation": 581477,
    "ae_attendance": 9203,
    "emergency_admission": 262,
    "elective_admission": 9201,
    "outpatient": 9202,
}
VOCABULARIES = {
    "icd10": "ICD10",
    "snomed_ct": "SNOMED",
    "dmd": "dm+d",
    "bnf": "BNF",
    "local": "Local",
}


def _values(mapping: dict[str, object], names: str) -> str:
    rows = ", ".join(f"('{key}', '{value}')" for key, value in mapping.items())
    return f"(SELECT * FROM (VALUES {rows}) AS v({names}))"


def omop_statements(
    population: Path, index_date: str, history_years: int, *, code_system: bool
) -> list[str]:
    """DuckDB statements reshaping the synthetic contract tables into OMOP CDM tables
    (``code_system``: whether the events carry that optional column)."""
    events = f"read_parquet('{population}/events/*.parquet', union_by_name = true)"
    system = "COALESCE(e.code_system, d.declared)" if code_system else "d.declared"
    declared = _values(dict(EVENT_CODE_SYSTEMS), "event_type, declared")
    vocab = _values(VOCABULARIES, "code_system, vocabulary_id")
    visits = _values(VISIT_CONCEPTS, "event_type, visit_concept_id")
    pid = "CAST(substr(e.person_id, 2) AS BIGINT)"
    return [
        f"CREATE TEMP TABLE ev AS SELECT e.*, {system} AS system, "
        f"row_number() OVER () AS row_id FROM {events} e JOIN {declared} d USING (event_type)",
        f"CREATE TABLE concept AS SELECT 1000000 + row_number() OVER (ORDER BY system, code) "
        f"AS concept_id, code AS concept_code, v.vocabulary_id FROM (SELECT DISTINCT system, code "
        f"FROM ev) JOIN {vocab} v ON v.code_system = system",
        f"CREATE TEMP TABLE areas AS SELECT area_id, row_number() OVER (ORDER BY area_id) AS "
        f"location_id FROM read_parquet('{population}/areas.parquet')",
        f"CREATE TABLE location AS SELECT a.location_id, l.lsoa11_code AS location_source_value "
        f"FROM areas a JOIN (SELECT lsoa11_code, row_number() OVER (ORDER BY lsoa11_code) AS k "
        f"FROM read_csv('{LSOA_IMD}')) l ON l.k = 1 + (a.location_id - 1) % 32844",
        f"CREATE TEMP TABLE practices AS SELECT practice_id, row_number() OVER (ORDER BY "
        f"practice_id) AS care_site_id FROM read_parquet('{population}/practices.parquet')",
        "CREATE TABLE care_site AS SELECT care_site_id FROM practices",
        f"CREATE TABLE person AS SELECT CAST(substr(p.person_id, 2) AS BIGINT) AS person_id, "
        f"CASE p.sex WHEN 'M' THEN 8507 WHEN 'F' THEN 8532 ELSE 0 END AS gender_concept_id, "
        f"year(DATE '{index_date}') - p.age - 1 AS year_of_birth, 7 AS month_of_birth, "
        f"1 AS day_of_birth, a.location_id, c.care_site_id, p.ethnicity AS "
        f"ethnicity_source_value FROM read_parquet('{population}/people.parquet') p "
        f"LEFT JOIN areas a USING (area_id) LEFT JOIN practices c USING (practice_id)",
        f"CREATE TABLE observation_period AS SELECT person_id AS observation_period_id, "
        f"person_id, DATE '{index_date}' - INTERVAL {history_years} YEAR AS "
        f"observation_period_start_date, DATE '{index_date}' + INTERVAL 2 YEAR AS "
        f"observation_period_end_date FROM person",
        f"CREATE TABLE visit_occurrence AS SELECT e.row_id AS visit_occurrence_id, {pid} AS "
        f"person_id, v.visit_concept_id, e.date AS visit_start_date FROM ev e "
        f"JOIN {visits} v USING (event_type)",
        f"CREATE TABLE condition_occurrence AS SELECT e.row_id AS condition_occurrence_id, "
        f"{pid} AS person_id, k.concept_id AS condition_concept_id, e.date AS "
        f"condition_start_date FROM ev e JOIN concept k ON k.concept_code = e.code "
        f"WHERE e.event_type = 'diagnosis'",
        f"CREATE TABLE drug_exposure AS SELECT e.row_id AS drug_exposure_id, {pid} AS person_id, "
        f"k.concept_id AS drug_concept_id, e.date AS drug_exposure_start_date FROM ev e "
        f"JOIN concept k ON k.concept_code = e.code WHERE e.event_type = 'prescription'",
        f"CREATE TABLE measurement AS SELECT e.row_id AS measurement_id, {pid} AS person_id, "
        f"k.concept_id AS measurement_concept_id, e.date AS measurement_date, e.value AS "
        f"value_as_number FROM ev e JOIN concept k ON k.concept_code = e.code "
        f"WHERE e.event_type = 'measurement'",
    ]


def build_database(n_people: int, folder: Path) -> tuple[Path, str, float]:
    """Synthesize ``n_people`` and reshape them into an OMOP DuckDB file; returns its path, the
    index date and the seconds taken."""
    start = time.perf_counter()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["population"].update(n_people=n_people, source="synthetic")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-c", SYNTH_CHILD, str(folder)], check=True, cwd=ROOT)
    database = folder / "omop.duckdb"
    con = duckdb.connect(str(database))
    con.execute(f"SET temp_directory = '{folder / 'duckdb_tmp'}'")
    con.execute("SET enable_progress_bar = false")
    population = folder / "data" / "population"
    columns = con.execute(f"DESCRIBE SELECT * FROM '{population}/events/*.parquet'").fetchall()
    statements = omop_statements(
        population,
        str(params["index_date"]),
        int(params["population"]["history_years"]),
        code_system="code_system" in {row[0] for row in columns},
    )
    for statement in statements:
        con.execute(statement)
    con.close()
    return database, str(params["index_date"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument(
        "--database", type=Path, help="convert this OMOP DuckDB file (index date 2025-04-01)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_omop_") as tmp:
        if args.database:
            database, index_date, build_seconds = args.database, "2025-04-01", 0.0
        else:
            database, index_date, build_seconds = build_database(args.people, Path(tmp))
        out = Path(tmp) / "contract"
        out.mkdir()
        child = subprocess.run(
            [sys.executable, "-c", CONVERT_CHILD, str(database), str(out), index_date],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        line = next(row for row in child.stdout.splitlines() if row.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
        size_gb = database.stat().st_size / 1024**3
    built = f"built in {build_seconds:.1f} s" if build_seconds else "given"
    print(f"OMOP database: {size_gb:.2f} GB DuckDB file ({built})")
    print(
        f"conversion: {result['seconds']:.1f} s, {result['people']:,} people, "
        f"{result['rows']:,} OMOP event rows read ({result['rows'] / result['seconds']:,.0f}/s), "
        f"{result['events']:,} contract events written (the rest counted: BNF and local "
        f"codes have no OMOP vocabulary the contract maps), "
        f"peak RSS {result['peak_rss_gb']:.2f} GB"
    )


if __name__ == "__main__":
    main()
