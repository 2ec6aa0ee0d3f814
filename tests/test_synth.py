"""Stage synthesize: contract-correct tables, determinism, chunking, biases and extract mode."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import contract
from pipeline.config import Params, parse_params
from pipeline.errors import ContractError
from pipeline.io import Paths, read_json
from pipeline.synth import run
from pipeline.synth.coding import LEGACY_READ_CODES
from pipeline.synth.conditions import recording_logit_shift
from pipeline.synth.events import ACCESS_BY_TYPE, access_penalty, care_rates
from pipeline.synth.geography import build_geography
from pipeline.synth.people import draw_people

INDEX = dt.date(2025, 4, 1)


def make_params(**population: Any) -> Params:
    raw = {
        "seed": 7,
        "index_date": INDEX.isoformat(),
        "population": {"n_people": 2_500, "chunk_size": 1_000, **population},
        "targets": {
            "emergency_admission_12m": {
                "outcome": "emergency_admission",
                "follow_up_months": 12,
                "min_age": 18,
            },
            "cvd_event_5y": {
                "outcome": "cvd_event",
                "follow_up_months": 60,
                "min_age": 25,
                "max_age": 84,
                "exclude_prior": ["cvd"],
            },
        },
    }
    return parse_params(raw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    run(make_params(), Paths.at(root))
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.parquet"))
    }


def test_tables_follow_the_contract_exactly(synthetic: Path) -> None:
    population, truth = synthetic / "data" / "population", synthetic / "data" / "truth"
    expected = {
        population / "areas.parquet": contract.AREAS_SCHEMA,
        population / "practices.parquet": contract.PRACTICES_SCHEMA,
        population / "people.parquet": contract.PEOPLE_SCHEMA,
        population / "outcomes.parquet": contract.OUTCOMES_SCHEMA,
        truth / "people.parquet": contract.TRUTH_PEOPLE_SCHEMA,
        truth / "oracle.parquet": contract.TRUTH_ORACLE_SCHEMA,
    }
    for path, schema in expected.items():
        assert dict(pl.read_parquet_schema(path)) == dict(schema), path
    parts = sorted((population / "events").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(3)]  # 2,500 / 1,000
    for part in parts:
        # every row names its code system (SNOMED CT, dm+d, BNF, ICD-10 or local)
        assert dict(pl.read_parquet_schema(part)) == {
            **contract.EVENTS_SCHEMA,
            **contract.EVENTS_OPTIONAL_SCHEMA,
        }
    facts = contract.validate_population(
        population, target_names=("emergency_admission_12m", "cvd_event_5y"), index_date=INDEX
    )
    assert facts["rows"]["people"] == 2_500
    # only the planted record-level noise (legacy Read codes, decimal slips, duplicates):
    # nobody has events before their birth
    excluded = {problem["rule"]: problem for problem in facts["excluded"]}
    assert set(excluded) == {
        "invalid code for its code system",
        "measurement value missing or out of plausible range",
        "exact duplicate of another event",
    }
    legacy = {f"diagnosis (snomed_ct): {code}" for code in LEGACY_READ_CODES}
    assert set(excluded["invalid code for its code system"]["examples"]) <= legacy
    assert (synthetic / "reports" / "synthetic_calibration.json").exists()


def test_events_sorted_and_history_ends_before_index(synthetic: Path) -> None:
    population = synthetic / "data" / "population"
    for part in sorted((population / "events").glob("*.parquet")):
        events = pl.read_parquet(part)
        keys = ["person_id", "date", "event_type", "code"]
        assert events.select(keys).equals(events.select(keys).sort(keys))
    events = pl.scan_parquet(population / "events" / "*.parquet")
    span = events.select(pl.col("date").min().alias("lo"), pl.col("date").max().alias("hi"))
    lo, hi = span.collect().row(0)
    assert hi < INDEX
    assert lo <= INDEX - dt.timedelta(days=3 * 365)  # history_years = 3
    people = pl.read_parquet(population / "people.parquet")
    assert people["person_id"].is_sorted()
    assert people["person_id"][0] == "P0000000001"
    assert people["area_id"].n_unique() >= 42  # every ICB has at least one area


def test_outcomes_cover_each_eligible_cohort(synthetic: Path) -> None:
    population, truth = synthetic / "data" / "population", synthetic / "data" / "truth"
    people = pl.read_parquet(population / "people.parquet")
    true = pl.read_parquet(truth / "people.parquet")
    outcomes = pl.read_parquet(population / "outcomes.parquet")
    oracle = pl.read_parquet(truth / "oracle.parquet")
    assert outcomes.select("person_id", "target").equals(oracle.select("person_id", "target"))
    assert oracle["oracle_risk"].is_between(0.0, 1.0, closed="none").all()
    ea = outcomes.filter(pl.col("target") == "emergency_admission_12m").join(people, on="person_id")
    assert ea.height == people.filter(pl.col("age") >= 18).height
    cvd_expected = people.join(true, on="person_id").filter(
        pl.col("age").is_between(25, 84), ~pl.col("true_chd"), ~pl.col("true_stroke")
    )
    cvd = outcomes.filter(pl.col("target") == "cvd_event_5y")
    assert set(cvd["person_id"]) == set(cvd_expected["person_id"])
    assert true["true_need"].is_between(0.0, 1.0).all()


def test_same_params_give_byte_identical_files(synthetic: Path, tmp_path: Path) -> None:
    run(make_params(), Paths.at(tmp_path))
    assert _digest(tmp_path / "data") == _digest(synthetic / "data")
    assert (tmp_path / "reports" / "synthetic_calibration.json").read_bytes() == (
        synthetic / "reports" / "synthetic_calibration.json"
    ).read_bytes()


def _pilot_people(n: int = 20_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    geo = build_geography(n, area_size=400, practice_size=500, rng=rng)
    return draw_people(geo, np.arange(n), rng, not_recorded_share=0.15)


def test_under_recording_strength_zero_removes_the_gap() -> None:
    people = _pilot_people()
    assert np.all(recording_logit_shift(people, 0.0) == 0.0)
    shift = recording_logit_shift(people, 1.0)
    white, black = people["group"] == 0, people["group"] == 3
    high = people["quality"] == 0  # best-recording practices: no practice term
    deprived, affluent = people["decile"] == 1, people["decile"] == 10
    # docs/synthetic_world.md#under-recording: 0.6 from decile 10 to 1, 0.6 Black vs White.
    assert shift[white & high & deprived] == pytest.approx(0.6)
    assert shift[white & high & affluent] == pytest.approx(0.0)
    assert shift[black & high & affluent] == pytest.approx(0.6)
    assert shift[white & affluent & (people["quality"] == 2)] == pytest.approx(0.5)


def test_access_bias_lowers_care_use_for_the_same_need() -> None:
    people = _pilot_people()
    n = len(people["age"])
    cond = {"smoker": np.zeros(n, bool)}
    cond |= {f"true_{c}": np.zeros(n, bool) for c in contract.CONDITIONS}
    frailty = np.ones(n)
    fair = care_rates(people, cond, frailty, access=0.0)
    biased = care_rates(people, cond, frailty, access=1.0)
    penalty = access_penalty(people)
    for kind in ("gp_consultation", "emergency_admission", "outpatient"):
        ratio = biased[kind] / fair[kind]
        np.testing.assert_allclose(ratio, np.exp(-penalty * ACCESS_BY_TYPE[kind]))
    np.testing.assert_allclose(biased["ae_attendance"], fair["ae_attendance"])


def test_extract_mode_copies_validated_extract_without_truth(
    synthetic: Path, tmp_path: Path
) -> None:
    extract = tmp_path / "extract"
    shutil.copytree(synthetic / "data" / "population", extract)
    params = make_params(source="extract", extract_dir=str(extract))
    run(params, Paths.at(tmp_path / "project"))
    population = tmp_path / "project" / "data" / "population"
    assert list((tmp_path / "project" / "data" / "truth").iterdir()) == []
    assert pl.read_parquet(population / "people.parquet").equals(
        pl.read_parquet(extract / "people.parquet")
    )
    assert len(list((population / "events").glob("*.parquet"))) == 3


def test_extract_mode_refuses_a_broken_extract_and_writes_nothing(
    synthetic: Path, tmp_path: Path
) -> None:
    extract = tmp_path / "extract"
    shutil.copytree(synthetic / "data" / "population", extract)
    (extract / "areas.parquet").unlink()  # outcomes are optional (derived from events)
    params = make_params(source="extract", extract_dir=str(extract))
    with pytest.raises(ContractError, match=r"areas\.parquet / \*: missing table"):
        run(params, Paths.at(tmp_path / "project"))
    assert not (tmp_path / "project" / "data").exists()


def test_calibration_report_is_aggregate_and_disclosure_controlled(synthetic: Path) -> None:
    report = read_json(synthetic / "reports" / "synthetic_calibration.json")
    assert set(report["conditions"]) == set(contract.CONDITIONS)
    for entry in report["conditions"].values():
        assert [row["imd_decile"] for row in entry["by_imd_decile"]] == list(range(1, 11))
        assert [row["region"] for row in entry["by_region"]] == list(contract.REGIONS)

    def counts(node: Any) -> list[Any]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "n" or k.startswith("n_")]
            return found + [c for v in node.values() for c in counts(v)]
        if isinstance(node, list):
            return [c for v in node for c in counts(v)]
        return []

    published = counts(report)
    assert published
    assert all(value == "*" or (isinstance(value, int) and value % 5 == 0) for value in published)


def test_extract_mode_casts_compatible_dtypes_to_the_contract(
    synthetic: Path, tmp_path: Path
) -> None:
    extract = tmp_path / "extract"
    shutil.copytree(synthetic / "data" / "population", extract)
    people = pl.read_parquet(extract / "people.parquet")
    people.with_columns(pl.col("age").cast(pl.Int64)).write_parquet(extract / "people.parquet")
    run(make_params(source="extract", extract_dir=str(extract)), Paths.at(tmp_path / "project"))
    copied = tmp_path / "project" / "data" / "population" / "people.parquet"
    assert dict(pl.read_parquet_schema(copied)) == dict(contract.PEOPLE_SCHEMA)
    assert pl.read_parquet(copied).equals(people)
