"""Stage validate: one broken fixture per contract rule, all violations reported together."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline import contract
from pipeline.config import parse_params
from pipeline.errors import ContractError
from pipeline.io import Paths, read_json
from pipeline.validate import run

INDEX = dt.date(2025, 4, 1)
TARGETS = ("emergency_admission_12m", "cvd_event_5y")
EXTRACT_END = dt.date(2026, 4, 1)


def valid_tables() -> dict[str, pl.DataFrame]:
    """A tiny extract that follows the contract (20 people, a few events each)."""
    n = 20
    ids = [f"P{i:010d}" for i in range(1, n + 1)]
    people = pl.DataFrame(
        {
            "person_id": ids,
            "sex": ["F", "M"] * (n // 2),
            "age": [20 + 3 * i for i in range(n)],
            "ethnicity": ["A", "H", "M", "Z", None] * (n // 5),
            "area_id": ["A1", "A2"] * (n // 2),
            "practice_id": ["GP1", "GP2"] * (n // 2),
        },
        schema=contract.PEOPLE_SCHEMA,
    )
    areas = pl.DataFrame(
        {
            "area_id": ["A1", "A2"],
            "icb_code": ["QHM", "QMJ"],
            "icb_name": ["North East and North Cumbria", "North Central London"],
            "region": ["North East and Yorkshire", "London"],
            "imd_decile": [1, 10],
            "rural_urban": ["urban", "rural"],
        },
        schema=contract.AREAS_SCHEMA,
    )
    practices = pl.DataFrame(
        {"practice_id": ["GP1", "GP2"], "icb_code": ["QHM", "QMJ"]},
        schema=contract.PRACTICES_SCHEMA,
    )
    rows = []
    for i, person in enumerate(ids):
        day = INDEX - dt.timedelta(days=10 + i)
        rows += [
            (person, day, "gp_consultation", "face_to_face", None),
            (person, day, "measurement", "sbp", 130.0 + i),
            (person, day, "diagnosis", "I10", None),
            (person, day, "prescription", "0205", None),
            (person, day, "emergency_admission", "J18", None),
        ]
    events = pl.DataFrame(rows, schema=contract.EVENTS_SCHEMA, orient="row")
    outcomes = pl.DataFrame(
        {
            "person_id": ids + ids[:10],
            "target": [TARGETS[0]] * n + [TARGETS[1]] * 10,
            "value": [i % 2 for i in range(n + 10)],
        },
        schema=contract.OUTCOMES_SCHEMA,
    )
    return {
        "areas": areas,
        "practices": practices,
        "people": people,
        "events": events,
        "outcomes": outcomes,
    }


def write_folder(folder: Path, tables: dict[str, pl.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if name == "events":  # a folder of parts, as the synthetic population writes it
            (folder / "events").mkdir(exist_ok=True)
            frame.write_parquet(folder / "events" / "part-00000.parquet")
        else:
            frame.write_parquet(folder / f"{name}.parquet")
    return folder


def _set(table: str, column: str, row: int, value: object) -> Callable:
    def mutate(tables: dict[str, pl.DataFrame]) -> None:
        frame = tables[table]
        dtype = frame.schema[column]
        new = frame[column].to_list()
        new[row] = value
        tables[table] = frame.with_columns(pl.Series(column, new, dtype=dtype))

    return mutate


def _drop_table(table: str) -> Callable:
    def mutate(tables: dict[str, pl.DataFrame]) -> None:
        del tables[table]

    return mutate


def _drop_column(table: str, column: str) -> Callable:
    def mutate(tables: dict[str, pl.DataFrame]) -> None:
        tables[table] = tables[table].drop(column)

    return mutate


def _cast(table: str, column: str, dtype: pl.DataType) -> Callable:
    def mutate(tables: dict[str, pl.DataFrame]) -> None:
        tables[table] = tables[table].with_columns(pl.col(column).cast(dtype))

    return mutate


def _duplicate_row(table: str, row: int = 0) -> Callable:
    def mutate(tables: dict[str, pl.DataFrame]) -> None:
        tables[table] = pl.concat([tables[table], tables[table].slice(row, 1)])

    return mutate


BROKEN = {
    "missing table": (_drop_table("areas"), "areas.parquet", "*", "missing table"),
    "missing column": (_drop_column("people", "sex"), "people.parquet", "sex", "missing column"),
    "wrong type": (_cast("people", "age", pl.String), "people.parquet", "age", "wrong type"),
    "null id": (_set("people", "person_id", 3, None), "people.parquet", "person_id", "null value"),
    "duplicate id": (_duplicate_row("people"), "people.parquet", "person_id", "duplicate id"),
    "duplicate outcome": (
        _duplicate_row("outcomes"),
        "outcomes.parquet",
        "person_id+target",
        "duplicate id",
    ),
    "unknown event type": (
        _set("events", "event_type", 0, "telepathy"),
        "events/",
        "event_type",
        "unknown event_type",
    ),
    "unknown ethnicity": (
        _set("people", "ethnicity", 0, "Q"),
        "people.parquet",
        "ethnicity",
        "unknown ethnic",
    ),
    "unknown sex": (_set("people", "sex", 0, "X"), "people.parquet", "sex", "unknown sex"),
    "age out of range": (
        _set("people", "age", 1, 130),
        "people.parquet",
        "age",
        "age out of range",
    ),
    "date after the extract end": (
        _set("events", "date", 0, EXTRACT_END + dt.timedelta(days=1)),
        "events/",
        "date",
        "after the extract end 2026-04-01",
    ),
    "events for unknown people": (
        _set("events", "person_id", 0, "P9999999999"),
        "events/",
        "person_id",
        "unknown people",
    ),
    "outcomes for unknown target": (
        _set("outcomes", "target", 0, "nope"),
        "outcomes.parquet",
        "target",
        "unknown target",
    ),
    "outcome value not binary": (
        _set("outcomes", "value", 0, 2),
        "outcomes.parquet",
        "value",
        "not 0/1",
    ),
    "unknown region": (_set("areas", "region", 0, "Wales"), "areas.parquet", "region", "unknown"),
    "decile out of range": (
        _set("areas", "imd_decile", 0, 11),
        "areas.parquet",
        "imd_decile",
        "out of range",
    ),
    "unknown area": (_set("people", "area_id", 0, "A9"), "people.parquet", "area_id", "unknown"),
}


def test_valid_fixture_passes(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "extract", valid_tables())
    facts = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    assert facts["rows"]["people"] == 20
    assert facts["rows"]["events"] == 100
    assert facts["ethnicity_recorded"] == 12  # Z and null are not recorded


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_is_reported_with_file_column_and_rows(tmp_path: Path, case: str) -> None:
    mutate, file, column, rule = BROKEN[case]
    tables = valid_tables()
    mutate(tables)
    folder = write_folder(tmp_path / "extract", tables)
    with pytest.raises(ContractError) as caught:
        contract.validate_population(
            folder, target_names=TARGETS, index_date=INDEX, extract_end=EXTRACT_END
        )
    lines = [line for line in str(caught.value).splitlines() if line.startswith("  ")]
    match = [line for line in lines if line.strip().startswith(f"{file} / {column}:")]
    assert match, str(caught.value)
    assert rule in match[0]
    if rule not in ("missing table", "missing column", "wrong type"):
        assert "(1 rows)" in match[0], match[0]


def test_events_after_the_index_date_are_follow_up_not_violations(tmp_path: Path) -> None:
    """Follow-up events (up to the extract end) pass; the last-12-months rates count only the
    year up to the index date, and the date range spans the follow-up."""
    tables = valid_tables()
    later = tables["events"].with_columns(pl.col("date") + dt.timedelta(days=200))
    tables["events"] = pl.concat([tables["events"], later])
    folder = write_folder(tmp_path / "extract", tables)
    facts = contract.validate_population(
        folder, target_names=TARGETS, index_date=INDEX, extract_end=EXTRACT_END
    )
    assert facts["excluded"] == []
    assert facts["events_last_year"]["gp_consultation"] == 20
    assert facts["date_max"] == INDEX + dt.timedelta(days=190)
    unbounded = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    assert unbounded["rows"]["events"] == 200


def test_all_violations_are_reported_together(tmp_path: Path) -> None:
    tables = valid_tables()
    for case in ("unknown sex", "unknown ethnicity", "outcomes for unknown target"):
        BROKEN[case][0](tables)
    folder = write_folder(tmp_path / "extract", tables)
    with pytest.raises(ContractError, match="3 data contract violation"):
        contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)


def _params() -> object:
    return parse_params(
        {
            "targets": {
                name: {"outcome": "emergency_admission", "follow_up_months": 12} for name in TARGETS
            },
            "index_date": INDEX.isoformat(),
        }
    )


def test_run_writes_disclosure_controlled_report(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "extract", valid_tables())
    run(_params(), Paths.at(tmp_path), extract=folder)
    report = read_json(tmp_path / "reports" / "data_quality.json")
    assert report["tables"]["people"]["n_rows"] == 20
    assert report["tables"]["areas"]["n_rows"] == "*"  # 2 areas: suppressed
    assert report["tables"]["people"]["null_share"]["ethnicity"] == "*"  # 4 nulls: suppressed
    assert report["tables"]["events"]["null_share"]["value"] == 0.8
    assert report["events_per_person_year_last_12_months"]["gp_consultation"] == 1.0
    assert report["date_range"]["last"] == "2025-03-22"
    assert report["folder"] == "extract"  # relative to the project: the same in every clone
    assert report["excluded"] == []


def test_cli_exits_2_and_writes_nothing_on_violation(tmp_path: Path) -> None:
    tables = valid_tables()
    BROKEN["unknown sex"][0](tables)
    folder = write_folder(tmp_path / "extract", tables)
    (tmp_path / "params.yaml").write_text(
        "targets:\n  emergency_admission_12m:\n    outcome: emergency_admission\n"
        "    follow_up_months: 12\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", str(folder), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown sex" in result.stderr
    assert not (tmp_path / "reports").exists()


# Record-level noise every real extract has: (mutation, column, rule); excluded and counted.
NOISE = {
    "exact duplicate": (_duplicate_row("events", 10), "*", "exact duplicate"),
    "invalid diagnosis code": (_set("events", "code", 2, "not-a-code"), "code", "invalid code"),
    "invalid bnf code": (_set("events", "code", 3, "9999"), "code", "invalid code"),
    "implausible measurement": (_set("events", "value", 1, 400.0), "value", "plausible range"),
    "date before 1900": (_set("events", "date", 0, dt.date(1899, 12, 31)), "date", "before 1900"),
    # person 1 is 20 at the index date
    "event before birth": (_set("events", "date", 4, dt.date(2001, 1, 1)), "date", "before the"),
}


def _noisy_tables() -> dict[str, pl.DataFrame]:
    tables = valid_tables()
    for mutate, _, _ in NOISE.values():
        mutate(tables)
    return tables


def test_record_noise_is_excluded_counted_and_reconciles(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "extract", _noisy_tables())
    facts = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    found = {(problem["column"], problem["rule"]): problem for problem in facts["excluded"]}
    for case, (_, column, rule) in NOISE.items():
        hits = [key for key in found if key[0] == column and rule in key[1]]
        assert hits, case
    assert found[("code", "invalid code for its code system")]["rows"] == 2
    assert found[("code", "invalid code for its code system")]["examples"] == (
        "diagnosis (icd10): not-a-code",
        "prescription (bnf): 9999",
    )
    assert found[("value", "measurement value missing or out of plausible range")]["examples"] == (
        "sbp = 400.0",
    )
    people = contract.scan_input(folder, "people")
    events = contract.scan_input(folder, "events")
    kept = contract.clean_events(events, people, index_date=INDEX).collect()
    excluded = sum(problem["rows"] for problem in facts["excluded"])
    assert facts["rows"]["events"] == 101  # 100 + the duplicate
    assert kept.height == facts["rows"]["events"] - excluded == 101 - 6
    assert kept.select(pl.col("value").max()).item() < 400.0


def test_refuse_mode_refuses_record_noise_naming_each_rule(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "extract", _noisy_tables())
    with pytest.raises(ContractError) as caught:
        contract.validate_population(
            folder, target_names=TARGETS, index_date=INDEX, record_problems="refuse"
        )
    message = str(caught.value)
    assert "5 data contract violation" in message  # both unknown codes are one rule
    shown = "events/ / code: invalid code for its code system (2 rows), e.g. diagnosis (icd10): "
    assert shown in message


def test_compatible_dtypes_are_accepted_and_read_as_the_contract(tmp_path: Path) -> None:
    tables = valid_tables()
    tables["people"] = tables["people"].with_columns(
        pl.col("age").cast(pl.UInt8),
        pl.col("sex").cast(pl.Categorical),
        pl.col("ethnicity").cast(pl.Enum(["A", "H", "M", "Z"])),
    )
    tables["events"] = tables["events"].with_columns(pl.col("code").cast(pl.Categorical))
    folder = write_folder(tmp_path / "extract", tables)
    facts = contract.validate_population(folder, target_names=TARGETS, index_date=INDEX)
    assert facts["excluded"] == []
    assert contract.scan_input(folder, "people").collect_schema()["sex"] == pl.String


def test_run_publishes_excluded_records_by_rule(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "extract", _noisy_tables())
    run(_params(), Paths.at(tmp_path), extract=folder)
    report = read_json(tmp_path / "reports" / "data_quality.json")
    rules = {(item["column"], item["rows"]) for item in report["excluded"]}
    assert ("code", "*") in rules  # 2 rows: suppressed like every published count
    assert len(report["excluded"]) == 5


def test_an_extract_end_before_the_index_date_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"validation\.extract_end"):
        parse_params(
            {
                "targets": {"t": {"outcome": "emergency_admission", "follow_up_months": 12}},
                "index_date": INDEX.isoformat(),
                "validation": {"extract_end": "2025-03-31"},
            }
        )


# --- Done-when of issue 16 item 4: through the command line, as DVC runs the stage ------------

PARAMS_YAML = (
    "index_date: '2025-04-01'\n"
    "validation:\n  extract_end: '2026-04-01'\n"
    "targets:\n"
    + "".join(
        f"  {name}:\n    outcome: emergency_admission\n    follow_up_months: 12\n"
        for name in TARGETS
    )
)


def _cli_validate(folder: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``python -m pipeline validate FOLDER --root ROOT`` in this process; its exit status."""
    from pipeline.cli import main

    (root / "params.yaml").write_text(PARAMS_YAML)
    monkeypatch.setattr(sys, "argv", ["pipeline", "validate", str(folder), "--root", str(root)])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_structural_rule_exits_2_and_writes_nothing(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    mutate, file, column, rule = BROKEN[case]
    tables = valid_tables()
    mutate(tables)
    folder = write_folder(tmp_path / "extract", tables)
    assert _cli_validate(folder, tmp_path, monkeypatch) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"{file} / {column}: " in message and rule in message, message
    assert not (tmp_path / "reports").exists()


SNOMED_T2DM = "44054006"  # |Diabetes mellitus type 2|, in NHS Digital's DM_COD
DMD_GLIMEPIRIDE = "8093711000001103"  # an AMP in opensafely/antidiabetic-drugs
CODED = [
    ("diagnosis", "I10X", None, None),  # HES: X-padded 3-character category
    ("diagnosis", "I25.1", None, None),  # dotted ICD-10
    ("diagnosis", SNOMED_T2DM, None, "snomed_ct"),  # primary care
    ("prescription", DMD_GLIMEPIRIDE, None, "dmd"),
    ("diagnosis", "K21.9", None, None),  # valid ICD-10 in no codelist: kept
    ("diagnosis", "138875005", None, "snomed_ct"),  # valid SNOMED CT in no codelist: kept
    ("measurement", "bmi", 6.9, None),  # implausible: excluded
    ("measurement", "271649006", 400.0, "snomed_ct"),  # systolic BP, implausible: excluded
    ("diagnosis", "44054007", None, "snomed_ct"),  # wrong check digit: excluded
    ("prescription", "9999", None, None),  # BNF of no chapter: excluded
]


def test_a_coded_extract_passes_and_every_excluded_row_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X-padded and dotted ICD-10, SNOMED CT, dm+d, codes in no codelist and implausible values:
    validate passes, data_quality.json counts each excluded row by rule, and the kept rows are
    exactly the rest (counts reconcile; 10 people per code so no count is suppressed)."""
    tables = valid_tables()
    people = tables["people"]["person_id"].to_list()
    day = INDEX - dt.timedelta(days=30)
    rows = [
        (person, day, event_type, code, value, system)
        for event_type, code, value, system in CODED
        for person in people[:10]
    ]
    schema = {**contract.EVENTS_SCHEMA, **contract.EVENTS_OPTIONAL_SCHEMA}
    base = tables["events"].with_columns(pl.lit(None, dtype=pl.String).alias("code_system"))
    tables["events"] = pl.concat([base, pl.DataFrame(rows, schema=schema, orient="row")])
    folder = write_folder(tmp_path / "extract", tables)
    assert _cli_validate(folder, tmp_path, monkeypatch) == 0
    report = read_json(tmp_path / "reports" / "data_quality.json")
    excluded = {(item["column"], item["rule"]): item["rows"] for item in report["excluded"]}
    assert excluded == {
        ("code", "invalid code for its code system"): 20,
        ("value", "measurement value missing or out of plausible range"): 20,
    }
    assert report["tables"]["events"]["n_rows"] == 200  # 100 + 10 codes x 10 people
    kept = contract.clean_events(
        contract.scan_input(folder, "events"),
        contract.scan_input(folder, "people"),
        index_date=INDEX,
    ).collect()
    assert kept.height == 200 - 40
    assert set(kept["code"]) >= {
        "I10X",
        "I25.1",
        SNOMED_T2DM,
        DMD_GLIMEPIRIDE,
        "K21.9",
        "138875005",
    }
