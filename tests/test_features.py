"""Stage ``features``: values on hand-made people, the split, schema/manifest, run() and errors."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path

import polars as pl
import pytest

from pipeline import contract, features, io
from pipeline.config import Params, parse_params
from pipeline.errors import ContractError, ParamsError
from tests.fixture_params import fixture_raw

ROOT = Path(__file__).resolve().parents[1]
INDEX = dt.date(2025, 4, 1)
D = dt.date


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return fixture_raw()


@pytest.fixture(scope="module")
def params(raw_params: dict) -> Params:
    return parse_params(raw_params)


def with_features(raw: dict, **changes: object) -> Params:
    raw = copy.deepcopy(raw)
    raw["features"].update(changes)
    return parse_params(raw)


AREAS = pl.DataFrame(
    {
        "area_id": ["A1", "A2", "A3"],
        "icb_code": ["QHM", "QT6", "QT6"],
        "icb_name": ["North East and North Cumbria", "Cornwall", "Cornwall"],
        "region": ["North East and Yorkshire", "South West", "South West"],
        "imd_decile": [1, 10, 4],
        "rural_urban": ["urban", "rural", "urban"],
    },
    schema=contract.AREAS_SCHEMA,
)
PRACTICES = pl.DataFrame(
    {"practice_id": ["G1", "G2"], "icb_code": ["QHM", "QT6"]}, schema=contract.PRACTICES_SCHEMA
)
PEOPLE = pl.DataFrame(
    {
        "person_id": ["P3", "P1", "P2", "P4"],  # unsorted on purpose
        "sex": ["U", "F", "M", "F"],
        "age": [90, 30, 70, 17],
        "ethnicity": [None, "A", "H", "99"],
        "area_id": ["A2", "A1", "A2", "A3"],
        "practice_id": ["G2", "G1", "G1", "G2"],
    },
    schema=contract.PEOPLE_SCHEMA,
)
_EVENTS = [
    # P1: windows and the index-date boundary
    ("P1", D(2025, 4, 1), "emergency_admission", "I21", None),  # on the index date: counts
    ("P1", D(2025, 4, 2), "emergency_admission", "I21", None),  # after: ignored everywhere
    ("P1", D(2025, 1, 1), "ae_attendance", "R07", None),  # exactly 3 months back: not in 3m
    ("P1", D(2025, 1, 2), "ae_attendance", "R07", None),  # inside 3m
    ("P1", D(2023, 4, 2), "gp_consultation", "face_to_face", None),  # inside 24m
    ("P1", D(2023, 4, 1), "gp_consultation", "face_to_face", None),  # outside 24m
    ("P1", D(2020, 5, 5), "diagnosis", "E109", None),  # diabetes, long ago: still recorded
    ("P1", D(2024, 6, 1), "diagnosis", "I25.1", None),  # CHD by prefix I25
    ("P1", D(2024, 6, 1), "diagnosis", "K21", None),  # not a contract condition
    ("P1", D(2019, 6, 1), "diagnosis", "F17", None),  # recorded smoker: not a condition
    ("P1", D(2025, 5, 1), "diagnosis", "J45", None),  # asthma after the index: not recorded
    # P2: measurements (latest wins; ties on the latest date -> highest) and prescriptions
    ("P2", D(2024, 1, 1), "measurement", "sbp", 170.0),
    ("P2", D(2025, 3, 1), "measurement", "sbp", 130.0),
    ("P2", D(2025, 3, 1), "measurement", "sbp", 150.0),
    ("P2", D(2025, 6, 1), "measurement", "sbp", 199.0),  # after the index date
    ("P2", D(2025, 2, 1), "measurement", "bmi", 31.5),
    ("P2", D(2025, 2, 1), "measurement", "dbp", 90.0),  # not a configured measurement
    ("P2", D(2025, 1, 1), "prescription", "020505100", None),
    ("P2", D(2025, 2, 1), "prescription", "0205", None),  # same section
    ("P2", D(2024, 6, 1), "prescription", "0601", None),
    ("P2", D(2024, 3, 1), "prescription", "0212", None),  # outside 12 months
    ("P2", D(2024, 12, 1), "emergency_admission", "J18", None),
    ("P2", D(2024, 12, 1), "diagnosis", "I10", None),
    # P3: nothing but an outpatient appointment; P4: no events at all
    ("P3", D(2025, 3, 31), "outpatient", "Z09", None),
]
EVENTS = pl.DataFrame(
    [dict(zip(contract.EVENTS_SCHEMA, row, strict=True)) for row in _EVENTS],
    schema=contract.EVENTS_SCHEMA,
    orient="row",
)


def stage_options(params: Params) -> dict:
    """What the stage's functions take from the params."""
    return {"features": params.features, "index_date": params.index_date, "seed": params.seed}


def compute(params: Params) -> pl.DataFrame:
    query = features.build_features(
        PEOPLE.lazy(), AREAS.lazy(), EVENTS.lazy(), **stage_options(params), id_bytes=2
    )
    return query.collect().sort("person_id")


@pytest.fixture(scope="module")
def table(params: Params) -> pl.DataFrame:
    return compute(params)


def person(table: pl.DataFrame, person_id: str) -> dict:
    return table.filter(pl.col("person_id") == person_id).row(0, named=True)


def test_one_row_per_person_and_schema(table: pl.DataFrame, params: Params) -> None:
    assert table["person_id"].to_list() == ["P1", "P2", "P3", "P4"]
    assert dict(table.schema) == features.output_schema(params.features)
    assert table.columns[:2] == ["person_id", "split"]
    assert table.columns[2:12] == list(contract.SENSITIVE_SCHEMA)
    for name, dtype in contract.SENSITIVE_SCHEMA.items():
        assert table.schema[name] == dtype


def test_sensitive_attributes(table: pl.DataFrame) -> None:
    p3, p4 = person(table, "P3"), person(table, "P4")
    assert p3["ethnicity_group"] == "Not recorded" and p4["ethnicity_group"] == "Not recorded"
    assert p3["age_band"] == "85+" and p4["age_band"] == "0-17"
    assert (p3["icb_code"], p3["region"], p3["imd_decile"], p3["imd_quintile"]) == (
        "QT6",
        "South West",
        10,
        5,
    )
    p2 = person(table, "P2")
    assert p2["ethnicity_group"] == "Asian"
    assert p2["ethnicity_code"] == contract.BROAD_ETHNIC_GROUPS.index("Asian")
    assert p2["region_code"] == contract.REGIONS.index("South West")
    assert (p2["rural"], p2["sex_female"], person(table, "P1")["sex_female"]) == (1, 0, 1)


def test_counts_respect_windows_and_index_date(table: pl.DataFrame) -> None:
    p1 = person(table, "P1")
    assert [p1[f"n_emergency_admission_{m}m"] for m in (3, 6, 12, 24)] == [1, 1, 1, 1]
    assert [p1[f"n_ae_attendance_{m}m"] for m in (3, 6, 12, 24)] == [1, 2, 2, 2]
    assert p1["n_gp_consultation_12m"] == 0 and p1["n_gp_consultation_24m"] == 1
    assert p1["n_diagnosis_24m"] == 2  # the 2020 diagnosis is outside every window
    p4 = person(table, "P4")
    assert all(p4[features.count_column(t, 24)] == 0 for t in contract.EVENT_TYPES)


def test_recency(table: pl.DataFrame) -> None:
    p1, p2, p4 = person(table, "P1"), person(table, "P2"), person(table, "P4")
    assert p1["days_since_last_emergency_admission"] == 0
    assert p1["days_since_last_ae_attendance"] == (INDEX - D(2025, 1, 2)).days
    assert (p1["no_prior_emergency_admission"], p1["no_prior_ae_attendance"]) == (0, 0)
    assert p2["days_since_last_emergency_admission"] == (INDEX - D(2024, 12, 1)).days
    assert p2["days_since_last_ae_attendance"] is None and p2["no_prior_ae_attendance"] == 1
    assert p4["days_since_last_emergency_admission"] is None
    assert p4["no_prior_emergency_admission"] == 1


def test_conditions_from_code_prefixes(table: pl.DataFrame) -> None:
    p1, p2 = person(table, "P1"), person(table, "P2")
    recorded = {c for c in contract.CONDITIONS if p1[f"has_{c}"] == 1}
    assert recorded == {"diabetes", "chd"}
    assert p1[contract.RECORDED_MULTIMORBIDITY] == 2
    assert p1["smoking_recorded"] == 1 and p2["smoking_recorded"] == 0
    assert p2["has_hypertension"] == 1 and p2[contract.RECORDED_MULTIMORBIDITY] == 1
    assert person(table, "P4")[contract.RECORDED_MULTIMORBIDITY] == 0


def test_latest_measurements(table: pl.DataFrame) -> None:
    p2, p1 = person(table, "P2"), person(table, "P1")
    assert p2["latest_sbp"] == 150.0  # latest date, tie -> highest; the June reading is later
    assert p2["days_since_sbp"] == (INDEX - D(2025, 3, 1)).days and p2["sbp_missing"] == 0
    assert p2["latest_bmi"] == 31.5 and p2["bmi_missing"] == 0
    assert p2["latest_hba1c"] is None and p2["hba1c_missing"] == 1
    assert "latest_dbp" not in table.columns
    assert p1["latest_sbp"] is None and p1["days_since_sbp"] is None and p1["sbp_missing"] == 1


def test_polypharmacy_and_practice_context(table: pl.DataFrame) -> None:
    p2 = person(table, "P2")
    assert p2["n_bnf_sections_12m"] == 2  # 0205 twice and 0601; 0212 is too old
    assert person(table, "P1")["n_bnf_sections_12m"] == 0
    # G1 = P1 (diabetes, CHD, 1 admission in 12m) + P2 (hypertension, 1 admission)
    assert p2["practice_list_size"] == 2
    assert p2["practice_prevalence_diabetes"] == pytest.approx(0.5)
    assert p2["practice_prevalence_hypertension"] == pytest.approx(0.5)
    assert p2["practice_prevalence_copd"] == 0.0
    assert p2["practice_emergency_admission_rate_12m"] == pytest.approx(1.0)
    p3 = person(table, "P3")  # G2 = P3 + P4, nothing recorded
    assert p3["practice_list_size"] == 2 and p3["practice_emergency_admission_rate_12m"] == 0.0


def test_windows_follow_params(raw_params: dict) -> None:
    table = compute(with_features(raw_params, windows_months=[1, 18], polypharmacy_months=24))
    assert "n_ae_attendance_18m" in table.columns and "n_ae_attendance_12m" not in table.columns
    assert person(table, "P2")["n_bnf_sections_24m"] == 3


# --- split -------------------------------------------------------------------------------------


def reference_unit(person_id: str, seed: int) -> float:
    """Independent pure-Python FNV-1a 64 + splitmix64, to pin the stage's portable hash."""
    mask = (1 << 64) - 1
    h = features.seed_basis(seed)
    for byte in person_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
    h ^= h >> 31
    return (h >> 11) / float(1 << 53)


def test_split_hash_is_portable_fnv() -> None:
    ids = ["P0000000001", "P1", "x", "Pé", "P0000000002"]
    frame = pl.LazyFrame({"person_id": ids})
    got = features.with_split_unit(frame, seed=7, id_bytes=11).collect()["_split_u"].to_list()
    assert got == [reference_unit(i, 7) for i in ids]
    assert features.seed_basis(7) != features.seed_basis(8)


def test_split_fractions_and_determinism(params: Params) -> None:
    ids = [f"P{i:010d}" for i in range(20_000)]
    frame = pl.LazyFrame({"person_id": ids, "icb_code": ["QHM"] * len(ids)})

    def splits(seed: int, holdout: str | None = None) -> pl.Series:
        unit = features.with_split_unit(frame, seed=seed, id_bytes=11)
        expr = features.split_expr(
            pl.col("_split_u"),
            pl.col("icb_code"),
            fractions=params.features.split_fractions,
            holdout_icb=holdout,
        )
        return unit.select(expr).collect()["split"]

    first = splits(1)
    shares = first.value_counts(normalize=True).sort("split")
    assert dict(shares.iter_rows()) == pytest.approx(
        {"test": 0.2, "train": 0.6, "validation": 0.2}, abs=0.015
    )
    assert first.equals(splits(1))
    assert (first != splits(2)).mean() > 0.3
    assert splits(1, holdout="QHM").unique().to_list() == ["external"]


def test_holdout_icb_is_external(raw_params: dict) -> None:
    table = compute(with_features(raw_params, holdout_icb="QT6"))
    split = dict(zip(table["person_id"], table["split"], strict=True))
    assert split["P2"] == split["P3"] == split["P4"] == "external"
    assert split["P1"] in contract.SPLITS


# --- manifest ----------------------------------------------------------------------------------


def test_manifest_describes_every_feature(params: Params, table: pl.DataFrame) -> None:
    manifest = features.build_manifest(**stage_options(params)).document()
    assert manifest["index_date"] == "2025-04-01"
    assert manifest["windows_months"] == [3, 6, 12, 24]
    assert manifest["sensitive_columns"] == list(contract.SENSITIVE_SCHEMA)
    assert manifest["columns"] == table.columns
    entries = {entry["name"]: entry for entry in manifest["features"]}
    assert set(entries) | set(manifest["sensitive_columns"]) | {"person_id", "split"} == set(
        table.columns
    )
    for name, entry in entries.items():
        assert entry["description"] and entry["dtype"] == str(table.schema[name])
        if entry["model_input"]:
            assert table.schema[name].is_numeric(), name
    assert entries["n_emergency_admission_12m"]["description"] == (
        "emergency admissions in the last 12 months"
    )
    assert entries["n_emergency_admission_12m"]["window_months"] == 12
    assert entries["n_emergency_admission_12m"]["source_events"] == ["emergency_admission"]
    assert entries["ethnicity_code"]["categorical"] and not entries["ethnicity_code"]["model_input"]
    assert entries["ethnicity_code"]["categories"]["0"] == "White"
    assert entries["imd_decile"]["model_input"] and not entries["region_code"]["model_input"]
    assert "ethnicity_code" not in manifest["model_inputs"]
    kinds = {name: entry["kind"] for name, entry in entries.items()}
    assert (kinds["age"], kinds["imd_decile"], kinds["has_copd"]) == ("age", "decile", "flag")
    assert (kinds["latest_hba1c"], entries["latest_hba1c"]["unit"]) == ("measurement", "mmol/mol")
    assert kinds["days_since_last_ae_attendance"] == "days"
    assert kinds["practice_prevalence_copd"] == "share"


def test_input_switches(raw_params: dict) -> None:
    params = with_features(
        raw_params, ethnicity_as_input=True, region_as_input=True, deprivation_as_input=False
    )
    inputs = features.build_manifest(**stage_options(params)).model_inputs
    assert {"ethnicity_code", "region_code"} <= set(inputs) and "imd_decile" not in inputs


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("windows_months", [12, 3]),
        ("windows_months", [3, 3, 12]),
        ("windows_months", []),
        ("windows_months", [0, 12]),
        ("windows_months", [3, "twelve"]),
        ("windows_months", [True, 12]),
        ("measurements", ["sbp", "ldl"]),
        ("ethnicity_as_input", "maybe"),
        ("polypharmacy_months", 0),
        ("holdout_icb", "cornwall"),
        ("use_postcode", True),
    ],
)
def test_bad_feature_params_name_the_key(raw_params: dict, key: str, value: object) -> None:
    with pytest.raises(ParamsError) as caught:
        with_features(raw_params, **{key: value})
    assert f"features.{key}" in str(caught.value)


# --- run() -------------------------------------------------------------------------------------


def write_population(
    folder: Path, *, events: pl.DataFrame = EVENTS, follow_up: bool = False
) -> None:
    """The fixture tables as a population folder (events in two parts); events after the index
    date (follow-up, which the contract accepts) only when ``follow_up``."""
    folder.mkdir(parents=True)
    if not follow_up:
        events = events.filter(pl.col("date") <= INDEX)
    AREAS.write_parquet(folder / "areas.parquet")
    PRACTICES.write_parquet(folder / "practices.parquet")
    PEOPLE.write_parquet(folder / "people.parquet")
    (folder / "events").mkdir()
    half = events.height // 2
    events.slice(0, half).write_parquet(folder / "events" / "part-00000.parquet")
    events.slice(half).write_parquet(folder / "events" / "part-00001.parquet")
    pl.DataFrame(
        {"person_id": ["P1", "P2"], "target": ["emergency_admission_12m"] * 2, "value": [0, 1]},
        schema=contract.OUTCOMES_SCHEMA,
    ).write_parquet(folder / "outcomes.parquet")


needs_validator = pytest.mark.skipif(
    not hasattr(contract, "validate_population"),
    reason="pipeline.contract.validate_population has not landed yet",
)


@needs_validator
def test_run_writes_sorted_features_and_manifest(tmp_path: Path, params: Params) -> None:
    write_population(tmp_path / "data" / "population")
    paths = io.Paths.at(tmp_path)
    features.run(params, paths)
    written = pl.read_parquet(paths.features / "features.parquet")
    assert written["person_id"].to_list() == ["P1", "P2", "P3", "P4"]
    assert written.equals(compute(params))
    manifest = io.read_json(paths.features / "manifest.json")
    assert manifest["columns"] == written.columns
    digest = hashlib.sha256((paths.features / "features.parquet").read_bytes()).hexdigest()
    features.run(params, paths)  # same params -> byte-identical output
    again = hashlib.sha256((paths.features / "features.parquet").read_bytes()).hexdigest()
    assert digest == again


def test_record_noise_never_reaches_a_feature(tmp_path: Path, params: Params) -> None:
    """An implausible reading, an unknown code and an exact duplicate (excluded and counted by
    validate) change no feature: the run equals the clean fixture's."""
    noise = pl.DataFrame(
        [
            ("P2", D(2025, 3, 30), "measurement", "bmi", 6.9),  # latest, implausible
            ("P2", D(2025, 3, 30), "diagnosis", "not-a-code", None),
            ("P1", D(2025, 1, 2), "ae_attendance", "R07", None),  # exact duplicate
        ],
        schema=contract.EVENTS_SCHEMA,
        orient="row",
    )
    write_population(tmp_path / "data" / "population", events=pl.concat([EVENTS, noise]))
    paths = io.Paths.at(tmp_path)
    features.run(params, paths)
    written = pl.read_parquet(paths.features / "features.parquet")
    assert written.equals(compute(params))
    assert person(written, "P2")["latest_bmi"] == 31.5


FOLLOW_UP = pl.DataFrame(
    [
        # after the index date, in every branch a feature reads: none may change
        ("P1", D(2025, 4, 2), "emergency_admission", "I50", None),
        ("P2", D(2025, 4, 2), "measurement", "sbp", 180.0),
        ("P2", D(2025, 4, 3), "prescription", "0403", None),
        ("P3", D(2025, 5, 1), "diagnosis", "E11", None),
        ("P3", D(2026, 1, 1), "ae_attendance", "R07", None),
        ("P4", D(2029, 1, 1), "gp_consultation", "face_to_face", None),
        ("P4", D(2025, 4, 2), "diagnosis", "F17", None),  # smoking, after the index
    ],
    schema=contract.EVENTS_SCHEMA,
    orient="row",
)


def test_events_after_the_index_date_change_no_feature(tmp_path: Path, params: Params) -> None:
    """The contract accepts follow-up events (outcomes are derived from them); the features of
    an extract with them are byte-identical to those of the same extract without them."""
    runs = {}
    for name, follow_up in (("without", False), ("with", True)):
        root = tmp_path / name
        events = pl.concat([EVENTS, FOLLOW_UP])
        write_population(root / "data" / "population", events=events, follow_up=follow_up)
        paths = io.Paths.at(root)
        features.run(params, paths)
        runs[name] = (paths.features / "features.parquet").read_bytes()
    assert runs["with"] == runs["without"]
    assert pl.read_parquet(tmp_path / "with" / "features" / "features.parquet").equals(
        compute(params)
    )


@needs_validator
def test_contract_violation_stops_before_writing(tmp_path: Path, params: Params) -> None:
    bad = EVENTS.with_columns(
        pl.when(pl.col("event_type") == "outpatient")
        .then(pl.lit("teleport"))
        .otherwise(pl.col("event_type"))
        .alias("event_type")
    )
    write_population(tmp_path / "data" / "population", events=bad)
    paths = io.Paths.at(tmp_path)
    with pytest.raises(ContractError, match="event_type"):
        features.run(params, paths)
    assert not paths.features.exists()


@needs_validator
def test_unknown_holdout_icb_fails_before_writing(tmp_path: Path, raw_params: dict) -> None:
    write_population(tmp_path / "data" / "population")
    paths = io.Paths.at(tmp_path)
    with pytest.raises(ParamsError, match=r"features\.holdout_icb"):
        features.run(with_features(raw_params, holdout_icb="QQQ"), paths)
    assert not paths.features.exists()


def test_chunked_run_equals_single_pass(tmp_path: Path, params: Params) -> None:
    folder = tmp_path / "population"
    write_population(folder)
    assert features.person_chunks(PEOPLE["person_id"], 3) == [("P1", "P4"), ("P4", None)]
    single, chunked = tmp_path / "single.parquet", tmp_path / "chunked.parquet"
    options = stage_options(params)
    assert features.write_features(folder, single, **options) == 1
    assert features.write_features(folder, chunked, **options, chunk_people=2) == 2
    assert pl.read_parquet(chunked).equals(pl.read_parquet(single))
    assert chunked.read_bytes() == single.read_bytes()
    assert pl.read_parquet(single)["person_id"].to_list() == ["P1", "P2", "P3", "P4"]
    assert not list(tmp_path.glob(".*parts"))


def test_no_events_at_all(params: Params) -> None:
    query = features.build_features(
        PEOPLE.lazy(), AREAS.lazy(), EVENTS.clear().lazy(), **stage_options(params), id_bytes=2
    )
    table = query.collect()
    assert dict(table.schema) == features.output_schema(params.features)
    assert table[contract.RECORDED_MULTIMORBIDITY].to_list() == [0, 0, 0, 0]
    assert table["no_prior_ae_attendance"].to_list() == [1, 1, 1, 1]
    assert table["latest_sbp"].null_count() == 4


def test_manifest_round_trips_through_the_contract_model(params: Params, tmp_path: Path) -> None:
    manifest = features.build_manifest(**stage_options(params))
    target = tmp_path / "manifest.json"
    io.write_json(manifest.document(), target)
    assert contract.read_manifest(target) == manifest
    names, categorical = manifest.inputs()
    assert "ethnicity_code" not in names and "age" in names
    assert set(categorical) <= set(names)
    needs, _ = manifest.inputs(exclude=(contract.RECORDED_MULTIMORBIDITY,))
    assert contract.RECORDED_MULTIMORBIDITY in names
    assert contract.RECORDED_MULTIMORBIDITY not in needs


def test_a_manifest_that_does_not_fit_is_refused_naming_the_field(
    params: Params, tmp_path: Path
) -> None:
    raw = features.build_manifest(**stage_options(params)).document()
    raw["model_inputs"] = raw["model_inputs"][1:]
    target = tmp_path / "manifest.json"
    io.write_json(raw, target)
    with pytest.raises(contract.ContractError, match="model_inputs"):
        contract.read_manifest(target)
    del raw["features"][0]["kind"]
    io.write_json(raw, target)
    with pytest.raises(contract.ContractError, match=r"features\.0\.kind"):
        contract.read_manifest(target)
    with pytest.raises(contract.ContractError, match="missing"):
        contract.read_manifest(tmp_path / "nope.json")
