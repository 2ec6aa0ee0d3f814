"""Stage synthesize: contract-correct tables, determinism, chunking, biases and extract mode."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pipeline import contract, engine, io
from pipeline.config import SYNTHETIC_ICBS, Params, parse_params
from pipeline.errors import ContractError, ParamsError
from pipeline.io import Paths, read_json
from pipeline.partitions import PARTITIONED_TABLES, icb_of, partition_path, partitions
from pipeline.synth import part_bounds, plan_units, run
from pipeline.synth.calibration import Tally
from pipeline.synth.coding import LEGACY_READ_CODES
from pipeline.synth.conditions import CONDITION_ORDER, draw_conditions, recording_logit_shift
from pipeline.synth.events import ACCESS_BY_TYPE, access_penalty, care_rates
from pipeline.synth.geography import build_geography
from pipeline.synth.people import draw_people
from pipeline.synth.reference import ICBS

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
        truth / "people.parquet": contract.TRUTH_PEOPLE_SCHEMA,
        truth / "oracle.parquet": contract.TRUTH_ORACLE_SCHEMA,
    }
    for part in partitions(population):
        expected[partition_path(population, "people", part)] = contract.PEOPLE_SCHEMA
        expected[partition_path(population, "outcomes", part)] = contract.OUTCOMES_SCHEMA
        # every event names its code system (SNOMED CT, dm+d, BNF, ICD-10 or local)
        expected[partition_path(population, "events", part)] = {
            **contract.EVENTS_SCHEMA,
            **contract.EVENTS_OPTIONAL_SCHEMA,
        }
    for path, schema in expected.items():
        assert dict(pl.read_parquet_schema(path)) == dict(schema), path
    assert sorted(path.name for path in truth.iterdir()) == [
        "oracle.parquet",
        "people.parquet",
        "practices.parquet",
    ]  # the unit parts are gone
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
    for part in sorted((population / "events").rglob("*.parquet")):
        events = pl.read_parquet(part)
        keys = ["person_id", "date", "event_type", "code"]
        assert events.select(keys).equals(events.select(keys).sort(keys))
    events = io.scan_table(population, "events")
    span = events.select(pl.col("date").min().alias("lo"), pl.col("date").max().alias("hi"))
    lo, hi = span.collect().row(0)
    assert hi < INDEX
    assert lo <= INDEX - dt.timedelta(days=3 * 365)  # history_years = 3
    people = io.scan_table(population, "people").collect()
    assert people["person_id"].is_sorted()
    assert people["person_id"][0] == "P0000000001"
    assert people["area_id"].n_unique() >= 42  # every ICB has at least one area


def test_outcomes_cover_each_eligible_cohort(synthetic: Path) -> None:
    population, truth = synthetic / "data" / "population", synthetic / "data" / "truth"
    people = io.scan_table(population, "people").collect()
    true = pl.read_parquet(truth / "people.parquet")
    outcomes = io.scan_table(population, "outcomes").collect()
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
    for table in PARTITIONED_TABLES:  # the partitioned layout is kept, part by part
        copied = sorted(path.relative_to(population) for path in population.rglob(f"{table}/*/*"))
        assert copied == sorted(path.relative_to(extract) for path in extract.rglob(f"{table}/*/*"))
        assert len(copied) == 42
    assert partitions(population) == partitions(extract)
    first = partition_path(population, "events", partitions(population)[0])
    copied_events = pl.read_parquet(first)  # the contract's columns, as they were
    original = pl.read_parquet(extract / first.relative_to(population))
    assert copied_events.equals(original.select(copied_events.columns))


def test_extract_mode_keeps_single_file_tables_single(synthetic: Path, tmp_path: Path) -> None:
    extract = tmp_path / "extract"
    shutil.copytree(synthetic / "data" / "population", extract)
    for table in PARTITIONED_TABLES:
        io.scan_table(extract, table).sink_parquet(extract / f"{table}.parquet")
        shutil.rmtree(extract / table)
    run(make_params(source="extract", extract_dir=str(extract)), Paths.at(tmp_path / "project"))
    population = tmp_path / "project" / "data" / "population"
    assert sorted(path.name for path in population.iterdir()) == sorted(
        f"{table}.parquet" for table in contract.INPUT_TABLES
    )
    copied = pl.read_parquet(population / "events.parquet")
    assert copied.equals(pl.read_parquet(extract / "events.parquet").select(copied.columns))


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
    for name in partitions(extract):  # every part: the scan of a table needs one schema
        path = partition_path(extract, "people", name)
        pl.read_parquet(path).with_columns(pl.col("age").cast(pl.Int64)).write_parquet(path)
    part = partition_path(extract, "people", partitions(extract)[0])
    people = pl.read_parquet(part).with_columns(pl.col("age").cast(pl.Int16))
    run(make_params(source="extract", extract_dir=str(extract)), Paths.at(tmp_path / "project"))
    copied = tmp_path / "project" / "data" / "population" / part.relative_to(extract)
    assert dict(pl.read_parquet_schema(copied)) == dict(contract.PEOPLE_SCHEMA)
    assert pl.read_parquet(copied).equals(people)


def test_each_icb_is_written_as_its_own_partitions(synthetic: Path) -> None:
    population = synthetic / "data" / "population"
    # 2,500 people: every ICB under chunk_size (1,000), so one part each, in code order
    assert partitions(population) == [f"{code}/part-00000.parquet" for code in SYNTHETIC_ICBS]
    areas = pl.read_parquet(population / "areas.parquet")
    ranges = []
    for part in partitions(population):
        people = pl.read_parquet(partition_path(population, "people", part))
        assert people.height > 0
        icbs = people.join(areas, on="area_id", how="left")["icb_code"].unique().to_list()
        assert icbs == [icb_of(part)]  # everyone lives in the partition's ICB
        for table in ("events", "outcomes"):
            ids = pl.read_parquet(partition_path(population, table, part))["person_id"]
            assert ids.is_in(people["person_id"].implode()).all(), (table, part)
        ranges.append((people["person_id"].min(), people["person_id"].max()))
    # ascending and disjoint: partitions in order hold ascending person ids
    assert all(hi < lo for (_, hi), (lo, _) in itertools.pairwise(ranges))
    truth = pl.read_parquet(synthetic / "data" / "truth" / "people.parquet")
    assert truth["person_id"].equals(io.scan_table(population, "people").collect()["person_id"])


def test_icb_reference_codes_are_the_ones_params_accept() -> None:
    assert SYNTHETIC_ICBS == tuple(sorted(code for icbs in ICBS.values() for code, _, _ in icbs))


@pytest.fixture(scope="module")
def two_icbs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ICBs of a 30,000-person world: QHM (1,582 people: two parts) and QOC (253)."""
    root = tmp_path_factory.mktemp("two_icbs")
    run(make_params(n_people=30_000, only_icbs=["QOC", "QHM"]), Paths.at(root))
    return root


def test_only_icbs_writes_those_icbs_at_their_size_in_the_whole_world(two_icbs: Path) -> None:
    population = two_icbs / "data" / "population"
    assert partitions(population) == [
        "QHM/part-00000.parquet",
        "QHM/part-00001.parquet",
        "QOC/part-00000.parquet",
    ]
    geo = build_geography(
        30_000, area_size=1_600, practice_size=8_000, rng=np.random.default_rng(0)
    )
    people = io.scan_table(population, "people").collect()
    sizes = dict(zip(geo.icb_codes, geo.icb_people, strict=True))
    assert people.height == sizes["QHM"] + sizes["QOC"]
    assert [
        pl.read_parquet(partition_path(population, "people", part)).height
        for part in partitions(population)
    ] == [791, 791, 253]
    for table in ("areas", "practices"):  # the reference tables hold only those ICBs
        assert sorted(pl.read_parquet(population / f"{table}.parquet")["icb_code"].unique()) == [
            "QHM",
            "QOC",
        ]
    assert (
        people["area_id"]
        .is_in(pl.read_parquet(population / "areas.parquet")["area_id"].implode())
        .all()
    )
    truth = pl.read_parquet(two_icbs / "data" / "truth" / "people.parquet")
    assert truth["person_id"].equals(people["person_id"])
    quality = pl.read_parquet(two_icbs / "data" / "truth" / "practices.parquet")
    assert quality["practice_id"].equals(
        pl.read_parquet(population / "practices.parquet")["practice_id"]
    )
    contract.validate_population(
        population, target_names=("emergency_admission_12m", "cvd_event_5y"), index_date=INDEX
    )
    assert (two_icbs / "reports" / "synthetic_calibration.json").exists()


def test_an_icb_draws_the_same_people_alone_as_in_the_whole_world(
    synthetic: Path, tmp_path: Path
) -> None:
    run(make_params(only_icbs=["QWE"]), Paths.at(tmp_path))
    alone, whole = tmp_path / "data" / "population", synthetic / "data" / "population"
    for table in PARTITIONED_TABLES:
        part = partition_path(alone, table, "QWE/part-00000.parquet")
        assert part.read_bytes() == (whole / part.relative_to(alone)).read_bytes()


def test_an_unknown_icb_code_fails_naming_the_key() -> None:
    with pytest.raises(
        ParamsError, match=r"population\.only_icbs.*unknown ICB code\(s\) 'E54000008'"
    ):
        make_params(only_icbs=["QHM", "E54000008"])
    with pytest.raises(ParamsError, match=r"population\.only_icbs"):
        make_params(only_icbs=[])


def test_local_and_dask_engines_write_the_same_bytes(
    synthetic: Path, tmp_path: Path, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(engine.SCHEDULER_ENV, cluster)
    params = make_params().model_copy(update={"engine": "dask"})
    run(params, Paths.at(tmp_path))
    assert _digest(tmp_path / "data") == _digest(synthetic / "data")
    assert (tmp_path / "reports" / "synthetic_calibration.json").read_bytes() == (
        synthetic / "reports" / "synthetic_calibration.json"
    ).read_bytes()


def test_tally_pickles_and_adds_up() -> None:
    people = _pilot_people(4_000)
    offsets = {c: (np.zeros(10), np.zeros(len(contract.REGIONS))) for c in CONDITION_ORDER}
    cond = draw_conditions(people, np.random.default_rng(1), offsets=offsets, under_recording=1.0)
    whole, first, second = Tally(), Tally(), Tally()
    whole.add(people, cond)
    first.add(*({key: value[:1_500] for key, value in d.items()} for d in (people, cond)))
    second.add(*({key: value[1_500:] for key, value in d.items()} for d in (people, cond)))
    total = Tally.total(pickle.loads(pickle.dumps(t)) for t in (first, second))
    for name, value in vars(whole).items():
        np.testing.assert_allclose(getattr(total, name), value)


def test_units_cut_each_icb_into_even_parts_numbered_over_the_whole_world() -> None:
    geo = build_geography(
        2_000_000, area_size=1_600, practice_size=8_000, rng=np.random.default_rng(0)
    )
    units = plan_units(geo, chunk_size=30_000)
    assert [(u.start, u.stop) for u in units] == list(
        itertools.pairwise(np.concatenate([[0], np.cumsum([u.stop - u.start for u in units])]))
    )  # every person once, in order
    assert units[-1].stop == 2_000_000
    assert max(u.stop - u.start for u in units) <= 30_000
    assert [u.number for u in units] == list(range(len(units)))
    for code, first, n in zip(geo.icb_codes, geo.icb_start, geo.icb_people, strict=True):
        parts = [u for u in units if u.icb_code == code]
        assert [u.part for u in parts] == list(range(len(parts)))
        assert len(parts) == -(-int(n) // 30_000)  # the fewest parts
        sizes = [u.stop - u.start for u in parts]
        assert parts[0].start == first and max(sizes) - min(sizes) <= 1  # as even as possible
    some = plan_units(geo, chunk_size=30_000, only_icbs={"QHM", "QOC"})
    assert some == [u for u in units if u.icb_code in {"QHM", "QOC"}]
    assert part_bounds(10, 5, chunk_size=2) == [(10, 12), (12, 14), (14, 15)]
