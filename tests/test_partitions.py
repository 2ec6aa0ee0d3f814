"""The ICB-partitioned population layout (pipeline/partitions.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline import partitions

SCHEMA = {"person_id": pl.String, "target": pl.String, "value": pl.Int8}


def _write(path: Path, frame: pl.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    for icb, part, ids in (("E2", "part-00000", ["P3"]), ("E1", "part-00001", ["P2"])):
        _write(tmp_path / "people" / icb / f"{part}.parquet", pl.DataFrame({"person_id": ids}))
    _write(tmp_path / "people" / "E1" / "part-00000.parquet", pl.DataFrame({"person_id": ["P1"]}))
    _write(
        tmp_path / "outcomes" / "E1" / "part-00000.parquet",
        pl.DataFrame({"person_id": ["P1"], "target": ["t"], "value": [1]}, schema=SCHEMA),
    )
    _write(tmp_path / "areas.parquet", pl.DataFrame({"area_id": ["A1"]}))
    return tmp_path


def test_partitions_are_the_people_parts_in_icb_then_part_order(split: Path) -> None:
    assert partitions.is_partitioned(split)
    assert partitions.partitions(split) == [
        "E1/part-00000.parquet",
        "E1/part-00001.parquet",
        "E2/part-00000.parquet",
    ]
    assert partitions.icb_of("E2/part-00000.parquet") == "E2"


def test_a_single_file_population_is_one_whole_partition(tmp_path: Path) -> None:
    _write(tmp_path / "people.parquet", pl.DataFrame({"person_id": ["P1", "P2"]}))
    assert not partitions.is_partitioned(tmp_path)
    assert partitions.partitions(tmp_path) == [partitions.WHOLE]
    whole = partitions.scan_partition(tmp_path, "people", partitions.WHOLE, schema={})
    assert whole.collect()["person_id"].to_list() == ["P1", "P2"]


def test_scan_reads_one_partition_and_an_absent_file_is_empty(split: Path) -> None:
    people = partitions.scan_partition(split, "people", "E1/part-00001.parquet", schema={})
    assert people.collect()["person_id"].to_list() == ["P2"]
    absent = partitions.scan_partition(split, "outcomes", "E2/part-00000.parquet", schema=SCHEMA)
    assert absent.collect().schema == pl.Schema(SCHEMA)
    assert absent.collect().height == 0
    areas = partitions.scan_partition(split, "areas", "E2/part-00000.parquet", schema={})
    assert areas.collect().height == 1


def test_parts_without_people_are_orphans(split: Path) -> None:
    assert partitions.orphan_partitions(split) == {}
    _write(split / "events" / "E9" / "part-00000.parquet", pl.DataFrame({"person_id": ["P9"]}))
    assert partitions.orphan_partitions(split) == {"events": ["E9/part-00000.parquet"]}


def test_only_person_tables_have_partition_paths(split: Path) -> None:
    with pytest.raises(ValueError, match="areas"):
        partitions.partition_path(split, "areas", "E1/part-00000.parquet")
