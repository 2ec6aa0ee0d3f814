"""The validate stage's receipt: written only on a pass, trusted by features only for the same
folder, bytes and rules; otherwise features checks the contract's structural rules again."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from test_validate import BROKEN, TARGETS, _params, valid_tables, write_folder

from pipeline import features, receipt
from pipeline.errors import ContractError
from pipeline.io import Paths
from pipeline.validate import run as validate


def _expected(folder: Path, *, extract_end: dt.date | None = None) -> dict[str, object]:
    params = _params()
    return receipt.population_receipt(
        folder,
        target_names=TARGETS,
        index_date=params.index_date,
        extract_end=extract_end,
    )


def test_validate_writes_a_receipt_that_names_this_folder_and_these_rules(tmp_path: Path) -> None:
    paths = Paths.at(tmp_path)
    folder = write_folder(paths.population, valid_tables())
    validate(_params(), paths)
    assert receipt.matches(paths.validated, _expected(folder))
    assert not receipt.matches(paths.validated, _expected(folder, extract_end=dt.date(2025, 6, 1)))

    copy = shutil.copytree(folder, tmp_path / "copy")  # the same bytes elsewhere: still valid
    assert receipt.matches(paths.validated, _expected(copy))
    people = copy / "people.parquet"
    pl.read_parquet(people).with_columns(pl.col("sex").str.replace("F", "M")).write_parquet(people)
    assert not receipt.matches(paths.validated, _expected(copy))  # other bytes
    shutil.rmtree(copy)
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "people.parquet").rename(copy / "people_old.parquet")
    assert not receipt.matches(paths.validated, _expected(copy))  # other names
    assert not receipt.matches(tmp_path / "absent.json", _expected(folder))


def test_a_failed_validate_writes_no_receipt(tmp_path: Path) -> None:
    paths = Paths.at(tmp_path)
    tables = valid_tables()
    BROKEN["unknown sex"][0](tables)
    write_folder(paths.population, tables)
    with pytest.raises(ContractError, match="unknown sex"):
        validate(_params(), paths)
    assert not paths.validated.exists()


def test_features_checks_the_contract_again_when_the_folder_changed_after_validate(
    tmp_path: Path,
) -> None:
    paths = Paths.at(tmp_path)
    folder = write_folder(paths.population, valid_tables())
    validate(_params(), paths)
    tables = valid_tables()
    BROKEN["unknown sex"][0](tables)
    write_folder(folder, tables)  # changed after the pass: the receipt no longer describes it
    with pytest.raises(ContractError, match="unknown sex"):
        features.run(_params(), paths)
    assert not paths.features.exists()
