"""features on an ICB-partitioned population: one part per partition, the same rows as the
unpartitioned run (practice context exact), and the same bytes on the local and Dask engines."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from distributed import Client

from pipeline import contract, engine, features, partitions
from pipeline.config import Params, parse_params
from tests.fixture_params import fixture_raw
from tests.test_validate import INDEX, TARGETS, _noisy_tables, write_folder
from tests.test_validate_partitions import ascending, write_partitioned


@pytest.fixture(scope="module")
def params() -> Params:
    raw = fixture_raw()
    raw["index_date"] = INDEX.isoformat()
    return parse_params(raw)


def tables_with_history() -> dict[str, pl.DataFrame]:
    """The validate fixture, with record noise, plus emergency admissions and diagnoses of
    every condition spread over the people, so each practice's context has several values."""
    tables = _noisy_tables()
    people = tables["people"]["person_id"].to_list()
    codes = ["E11", "I10", "J44", "N18", "I50", "F32", "I48"]
    rows = [
        (person, INDEX - dt.timedelta(days=40 + i), kind, code, None)
        for i, person in enumerate(people)
        for kind, code in (("diagnosis", codes[i % 7]), ("emergency_admission", "J18"))
        if i % 3
    ]
    extra = pl.DataFrame(rows, schema=contract.EVENTS_SCHEMA, orient="row")
    return {**tables, "events": pl.concat([tables["events"], extra])}


def _write(folder: Path, params: Params, *, client: Client | None = None) -> pl.DataFrame:
    target = folder.parent / f"{folder.name}.parquet"
    options = {"features": params.features, "index_date": params.index_date, "seed": params.seed}
    features.write_features(folder, target, **options, client=client)
    return pl.read_parquet(target)


@pytest.mark.parametrize("layout", ["interleaved", "ascending"])
def test_partitioned_features_equal_the_unpartitioned(
    tmp_path: Path, params: Params, layout: str
) -> None:
    """Interleaved person_id ranges are merged on person_id, ascending ones concatenated; both
    give the single-file run's rows in person_id order. The practice context (list size,
    prevalences, admission rate) is exact: each practice has patients in both partitions."""
    tables = tables_with_history()
    tables = ascending(tables) if layout == "ascending" else tables
    whole = _write(write_folder(tmp_path / "whole", tables), params)
    split_folder = write_partitioned(tmp_path / "split", tables)
    assert len(partitions.partitions(split_folder)) == 2
    split = _write(split_folder, params)
    assert split.equals(whole)
    assert split["person_id"].is_sorted()
    context = [c for c in whole.columns if c.startswith("practice_") and c != "practice_id"]
    per_practice = split.group_by("practice_id").agg(pl.col(context).n_unique())
    assert (per_practice.drop("practice_id").to_numpy() == 1).all()
    assert split.filter(pl.col("practice_id") == "GP1")["practice_list_size"][0] == 10
    assert split["practice_prevalence_copd"].n_unique() == 2


def test_practice_partials_of_parts_sum_to_the_whole(params: Params) -> None:
    """The additive partials (integer sums) of two halves, summed, are those of everybody."""
    tables = tables_with_history()
    people, events = tables["people"].lazy(), tables["events"].lazy()
    options = {
        "index_date": INDEX,
        "polypharmacy_months": params.features.polypharmacy_months,
        "codelists": features.load_codelists(),
    }
    whole = features.practice_partials_query(people, events, **options).collect()
    halves = [
        features.practice_partials_query(
            people.filter(keep), events.filter(keep), **options
        ).collect()
        for keep in (pl.col("person_id") < "P0000000011", pl.col("person_id") >= "P0000000011")
    ]
    assert features.sum_practice_partials(halves).equals(whole.sort("practice_id"))


def test_local_and_dask_engines_agree(
    tmp_path: Path,
    params: Params,
    cluster: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """validate's facts and the features file (bytes) are the same on both engines: the same
    Polars functions run per partition as tasks, and the stage combines their results in
    partition order."""
    monkeypatch.setenv(engine.SCHEDULER_ENV, cluster)
    tables = tables_with_history()
    folder = write_partitioned(tmp_path / "split", tables)
    options = {"target_names": TARGETS, "index_date": INDEX}
    local_facts = contract.validate_population(folder, **options)
    local = tmp_path / "local.parquet"
    remote = tmp_path / "remote.parquet"
    shared = {"features": params.features, "index_date": INDEX, "seed": params.seed}
    features.write_features(folder, local, **shared)
    with engine.connect("dask") as client:
        assert client is not None
        remote_facts = contract.validate_population(folder, **options, client=client)
        features.write_features(folder, remote, **shared, client=client)
    assert remote_facts == local_facts
    assert remote.read_bytes() == local.read_bytes()
    assert not list(tmp_path.glob(".*.parts"))
