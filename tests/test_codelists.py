"""Codelists as data and code systems in the contract (issue 16 items 1-2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline import codelists, contract, features
from pipeline.config import Params, load_params
from pipeline.errors import ContractError
from tests.test_validate import INDEX, TARGETS, valid_tables, write_folder

ROOT = Path(__file__).resolve().parents[1]
DAY = INDEX.replace(month=1)
SNOMED_DIABETES = "44054006"  # |Diabetes mellitus type 2| in NHS Digital's DM_COD
DMD_GLIMEPIRIDE = "8093711000001103"  # an AMP in opensafely/antidiabetic-drugs
BAD_CHECK_DIGIT = "44054007"


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def shipped() -> codelists.Codelists:
    return codelists.load_codelists()


def _event(person: int, event_type: str, code: str, system: str | None = None) -> dict:
    return {
        "person_id": f"P{person:010d}",
        "date": DAY,
        "event_type": event_type,
        "code": code,
        "value": None,
        "code_system": system,
    }


CODED_EVENTS = (
    _event(1, "diagnosis", "I10X"),  # HES: X-padded 3-character category
    _event(2, "diagnosis", "I25.1"),  # dotted
    _event(3, "diagnosis", SNOMED_DIABETES, "snomed_ct"),  # primary care
    _event(4, "prescription", DMD_GLIMEPIRIDE, "dmd"),
    _event(5, "diagnosis", BAD_CHECK_DIGIT, "snomed_ct"),  # noise
    _event(6, "prescription", "0205", None),  # BNF by the event type's declared system
)


def coded_extract(folder: Path) -> Path:
    tables = valid_tables()
    tables["events"] = pl.DataFrame(
        list(CODED_EVENTS), schema={**contract.EVENTS_SCHEMA, **contract.EVENTS_OPTIONAL_SCHEMA}
    )
    return write_folder(folder, tables)


def built_features(folder: Path, params: Params, lists: codelists.Codelists) -> pl.DataFrame:
    people = contract.scan_input(folder, "people")
    events = contract.clean_events(contract.scan_input(folder, "events"), people, index_date=INDEX)
    query = features.build_features(
        people,
        contract.scan_input(folder, "areas"),
        events,
        features=params.features,
        index_date=INDEX,
        seed=params.seed,
        id_bytes=11,
        codelists=lists,
    )
    return query.collect().sort("person_id")


def flags(table: pl.DataFrame, person: int) -> dict:
    return table.filter(pl.col("person_id") == f"P{person:010d}").row(0, named=True)


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("138875005", True),  # SNOMED CT root concept
        ("999791000000106", True),  # UK extension (HbA1c IFCC)
        (SNOMED_DIABETES, True),
        (DMD_GLIMEPIRIDE, True),
        (BAD_CHECK_DIGIT, False),
        ("123451", True),  # Verhoeff's textbook example
        ("12345", False),
    ],
)
def test_verhoeff_check_digit(code: str, valid: bool) -> None:
    result = pl.select(codelists.verhoeff_valid_expr(pl.lit(code))).item()
    assert result is valid


@pytest.mark.parametrize(
    ("code", "system", "normal"),
    [
        ("I10X", "icd10", "I10"),
        ("I10.X", "icd10", "I10"),
        ("i10", "icd10", "I10"),
        ("I25.1", "icd10", "I251"),
        ("X59X", "icd10", "X59"),  # the padding only, not a leading X
        ("K40.1", "opcs4", "K401"),
        (" 44054006 ", "snomed_ct", "44054006"),
        ("SBP", "local", "sbp"),
    ],
)
def test_codes_are_normalised_once_per_system(code: str, system: str, normal: str) -> None:
    assert pl.select(codelists.normalise_code(pl.lit(code), system)).item() == normal


def test_every_shipped_list_is_valid_and_covers_the_contract(
    shipped: codelists.Codelists,
) -> None:
    table = codelists.summary(shipped)
    assert table["invalid"].sum() == 0
    assert (table["codes"] > 0).all()
    assert set(shipped.concepts("condition")) == set(contract.CONDITIONS)
    for concept in contract.CONDITIONS:  # an ICD-10 and a SNOMED CT list each
        systems = set(shipped.codes_of(concept)["system"])
        assert {"icd10", "snomed_ct"} <= systems, concept
    # the synthetic world's categories are covered (features unchanged on it)
    for condition, categories in contract.CONDITION_CODES.items():
        for category in categories:
            hit = pl.select(
                codelists.concept_match(
                    pl.lit(category), pl.lit("icd10"), shipped.codes_of(condition)
                )
            ).item()
            assert hit, (condition, category)


def test_coded_extract_passes_validate_and_maps_to_conditions(
    tmp_path: Path, params: Params, shipped: codelists.Codelists
) -> None:
    folder = coded_extract(tmp_path / "extract")
    facts = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    # only the bad check digit is excluded, counted under the code rule
    assert [(p["column"], p["rule"], p["rows"]) for p in facts["excluded"]] == [
        ("code", "invalid code for its code system", 1)
    ]
    assert facts["excluded"][0]["examples"] == (f"diagnosis (snomed_ct): {BAD_CHECK_DIGIT}",)
    table = built_features(folder, params, shipped)
    assert flags(table, 1)["has_hypertension"] == 1
    assert flags(table, 2)["has_chd"] == 1
    assert flags(table, 3)["has_diabetes"] == 1
    assert flags(table, 5)["has_diabetes"] == 0  # excluded, never a feature
    months = params.features.polypharmacy_months
    assert flags(table, 4)[f"n_bnf_sections_{months}m"] == 1  # dm+d -> diabetes drugs
    assert flags(table, 6)[f"n_bnf_sections_{months}m"] == 1
    assert sum(table["n_recorded_conditions"]) == 3


def test_unknown_code_system_is_structural(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["events"] = tables["events"].with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("read_v2")).alias("code_system")
    )
    folder = write_folder(tmp_path / "extract", tables)
    with pytest.raises(ContractError, match="events/ / code_system: unknown code_system"):
        contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)


def _swap_hypertension_icd10(folder: Path) -> None:
    """Point hypertension's ICD-10 list at a user's CSV without I10 (essential hypertension)."""
    (folder / "my-secondary-hypertension.csv").write_text("icd,description\nI15,Secondary\n")
    path = folder / codelists.REGISTRY_FILE
    registry = yaml.safe_load(path.read_text())
    for entry in registry["concepts"]["hypertension"]["lists"]:
        if entry["system"] == "icd10":
            entry |= {"file": "my-secondary-hypertension.csv", "column": "icd", "source": "me"}
    path.write_text(yaml.safe_dump(registry))


def test_swapping_a_list_file_changes_the_feature_without_code(
    tmp_path: Path, params: Params, shipped: codelists.Codelists
) -> None:
    folder = coded_extract(tmp_path / "extract")
    lists = shutil.copytree(codelists.DEFAULT_FOLDER, tmp_path / "codelists")
    _swap_hypertension_icd10(lists)
    swapped = built_features(folder, params, codelists.load_codelists(lists))
    assert flags(built_features(folder, params, shipped), 1)["has_hypertension"] == 1
    assert flags(swapped, 1)["has_hypertension"] == 0
    assert flags(swapped, 2)["has_chd"] == 1  # other concepts untouched


def test_registry_errors_name_the_file(tmp_path: Path) -> None:
    lists = shutil.copytree(codelists.DEFAULT_FOLDER, tmp_path / "codelists")
    (lists / "local-ckd-icd10.csv").unlink()
    with pytest.raises(ContractError, match=r"local-ckd-icd10\.csv"):
        codelists.load_codelists(lists)
    _swap_hypertension_icd10(lists)
    (lists / "my-secondary-hypertension.csv").write_text("code,term\nI15,Secondary\n")
    (lists / "local-ckd-icd10.csv").write_text("code,term\nN18,CKD\n")
    with pytest.raises(ContractError, match="no code column 'icd'"):
        codelists.load_codelists(lists)


def test_codelists_command_lists_every_list_with_its_count(
    shipped: codelists.Codelists,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "codelists", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    expected = codelists.summary(shipped)
    for row in expected.iter_rows(named=True):
        assert any(
            row["file"] in line and row["concept"] in line and f" {row['codes']} " in line
            for line in lines
        ), row
