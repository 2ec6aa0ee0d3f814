"""validate on an ICB-partitioned population (pipeline/partitions.py): the same facts as the
same data in single files; violations name the partition's file; layout violations."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline import contract
from pipeline.errors import ContractError
from tests.test_validate import INDEX, TARGETS, _noisy_tables, valid_tables, write_folder

PERSON_TABLES = ("people", "events", "outcomes")


def icb_of_people(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """person_id -> the ICB of the person's home area."""
    areas = tables["areas"].select("area_id", "icb_code")
    return tables["people"].join(areas, on="area_id", how="left").select("person_id", "icb_code")


def write_partitioned(folder: Path, tables: dict[str, pl.DataFrame]) -> Path:
    """``tables`` in the partitioned layout: ``<table>/<icb>/part-00000.parquet`` per ICB of
    the people's home areas; areas and practices whole."""
    folder.mkdir(parents=True, exist_ok=True)
    icbs = icb_of_people(tables)
    for name, frame in tables.items():
        if name not in PERSON_TABLES:
            frame.write_parquet(folder / f"{name}.parquet")
            continue
        placed = frame.join(icbs, on="person_id", how="left", maintain_order="left")
        for (icb,), part in placed.partition_by("icb_code", as_dict=True).items():
            target = folder / name / str(icb) / "part-00000.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            part.drop("icb_code").write_parquet(target)
    return folder


def ascending(tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The first half of the people (by person_id) in area A1, the rest in A2: the partitions'
    person_id ranges ascend, as in the synthetic world; each practice spans both ICBs."""
    people = tables["people"].sort("person_id")
    half = people.height // 2
    areas = pl.Series("area_id", ["A1"] * half + ["A2"] * (people.height - half))
    return {**tables, "people": people.with_columns(areas)}


@pytest.mark.parametrize("layout", ["interleaved", "ascending"])
def test_partitioned_facts_equal_the_single_files_facts(tmp_path: Path, layout: str) -> None:
    """rows, nulls, excluded records per rule (with examples), ethnicity recorded, events in the
    last year, the date range and n_people: summed, minimum and maximum over the partitions."""
    tables = _noisy_tables()
    tables = ascending(tables) if layout == "ascending" else tables
    whole = write_folder(tmp_path / "whole", tables)
    split = write_partitioned(tmp_path / "split", tables)
    assert len(list((split / "people").glob("*/*.parquet"))) == 2
    expected = contract.validate_population(whole, target_names=TARGETS, index_date=INDEX)
    found = contract.validate_population(split, target_names=TARGETS, index_date=INDEX)
    assert found == expected
    assert len(found["excluded"]) == 5 and found["rows"]["events"] == 101


def _message(folder: Path) -> str:
    with pytest.raises(ContractError) as caught:
        contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    return str(caught.value)


def test_a_violation_names_the_partitions_file(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["people"] = tables["people"].with_columns(
        pl.when(pl.col("person_id") == "P0000000002")
        .then(pl.lit("X"))
        .otherwise("sex")
        .alias("sex")
    )  # P2 lives in A2, ICB QMJ
    message = _message(write_partitioned(tmp_path / "split", tables))
    assert "1 data contract violation" in message
    assert "people/QMJ/part-00000.parquet / sex: unknown sex (expected F/M/U) (1 rows)" in message


def test_events_in_another_partition_than_their_person_are_violations(tmp_path: Path) -> None:
    folder = write_partitioned(tmp_path / "split", valid_tables())
    moved = pl.read_parquet(folder / "events" / "QMJ" / "part-00000.parquet").head(2)
    target = folder / "events" / "QHM" / "part-00001.parquet"
    moved.write_parquet(target)
    (folder / "people" / "QHM" / "part-00001.parquet").write_bytes(
        (folder / "people" / "QHM" / "part-00000.parquet").read_bytes()
    )
    message = _message(folder)
    assert (
        "events/QHM/part-00001.parquet / person_id: events for unknown people (2 rows)" in message
    )


def test_orphan_parts_are_violations(tmp_path: Path) -> None:
    folder = write_partitioned(tmp_path / "split", valid_tables())
    orphan = folder / "outcomes" / "QZZ" / "part-00000.parquet"
    orphan.parent.mkdir()
    pl.read_parquet(folder / "outcomes" / "QHM" / "part-00000.parquet").write_parquet(orphan)
    message = _message(folder)
    assert "outcomes/QZZ/part-00000.parquet / *: part with no people part" in message


@pytest.mark.parametrize("layout", ["interleaved", "ascending"])
def test_a_person_in_two_partitions_is_a_violation(tmp_path: Path, layout: str) -> None:
    """Each partition is unique by itself; the person is caught across partitions whether the
    ranges overlap already (interleaved) or only because of this person (ascending)."""
    tables = valid_tables()
    tables = ascending(tables) if layout == "ascending" else tables
    folder = write_partitioned(tmp_path / "split", tables)
    target = folder / "people" / "QMJ" / "part-00000.parquet"
    first = pl.read_parquet(folder / "people" / "QHM" / "part-00000.parquet").sort("person_id")
    pl.concat([pl.read_parquet(target), first.head(1)]).write_parquet(target)
    message = _message(folder)
    assert "1 data contract violation" in message
    assert (
        "people/ / person_id: person in more than one partition (1 rows), e.g. 'P0000000001'"
        in (message)
    )


def test_structural_checks_return_the_summed_rows(tmp_path: Path) -> None:
    tables = valid_tables()
    split = write_partitioned(tmp_path / "split", tables)
    found = contract.validate_population(
        split, target_names=TARGETS, index_date=INDEX, checks="structural"
    )
    assert found["rows"] == {
        "areas": 2,
        "practices": 2,
        "people": 20,
        "events": 100,
        "outcomes": 30,
    }
