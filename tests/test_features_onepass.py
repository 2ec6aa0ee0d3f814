"""features per partition in one pass over its events (issue 18): the part written without the
practice context gives the practice partials, and the context joined afterwards gives the rows of
:func:`pipeline.features.build_features`, whether or not the admission-rate window is also a
count window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import contract, features, partitions
from pipeline.config import Params, parse_params
from tests.fixture_params import fixture_raw
from tests.test_features_partitions import tables_with_history
from tests.test_validate import INDEX
from tests.test_validate_partitions import write_partitioned


def params_with(polypharmacy_months: int) -> Params:
    raw = fixture_raw()
    raw["index_date"] = INDEX.isoformat()
    raw["features"]["polypharmacy_months"] = polypharmacy_months
    return parse_params(raw)


@pytest.fixture(scope="module", params=[12, 9], ids=["window-counted", "window-not-counted"])
def params(request: pytest.FixtureRequest) -> Params:
    """12 months is also a count window of the fixture params; 9 is not."""
    assert (request.param in params_with(request.param).features.windows_months) == (
        request.param == 12
    )
    return params_with(request.param)


def tables_with_admissions() -> dict[str, pl.DataFrame]:
    """:func:`tables_with_history` plus emergency admissions a month apart per person, going
    back two years (so the practices' admission rates differ from window to window), and one
    after the index date (never counted)."""
    tables = tables_with_history()
    people = tables["people"]["person_id"].to_list()
    rows = [
        (person, INDEX - dt.timedelta(days=30 * (i + k)), "emergency_admission", "J18", None)
        for i, person in enumerate(people)
        for k in range(i % 4)
    ]
    rows.append((people[0], INDEX + dt.timedelta(days=3), "emergency_admission", "J18", None))
    extra = pl.DataFrame(rows, schema=contract.EVENTS_SCHEMA, orient="row")
    return {**tables, "events": pl.concat([tables["events"], extra])}


def _options(params: Params) -> dict[str, Any]:
    return {
        "features": params.features,
        "index_date": INDEX,
        "seed": params.seed,
        "id_bytes": 11,
        "codelists": features.load_codelists(),
    }


def _clean(tables: dict[str, pl.DataFrame]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    people = tables["people"].lazy()
    return people, contract.clean_events(tables["events"].lazy(), people, index_date=INDEX)


def test_part_partials_equal_the_partials_from_events(params: Params) -> None:
    """The partials summed from the part's rows (its has_<condition> flags and admissions in
    the polypharmacy window) are exactly those computed from the events."""
    tables = tables_with_admissions()
    people, events = _clean(tables)
    part = features.build_features_part(people, tables["areas"].lazy(), events, **_options(params))
    summed = part.select("practice_id", *features.PRACTICE_SUMMED)
    from_part = features.sum_practice_partials([features.sum_per_practice(summed).collect()])
    from_events = features.practice_partials_query(
        people,
        events,
        index_date=INDEX,
        polypharmacy_months=params.features.polypharmacy_months,
        codelists=features.load_codelists(),
    ).collect()
    assert from_part.equals(from_events.sort("practice_id"))
    admissions = f"{features.PRACTICE_SUMS}{features.ADMISSIONS}"
    assert from_part[admissions].n_unique() > 1


def test_part_with_context_equals_build_features(params: Params) -> None:
    """The part lacks exactly the context columns (and keeps the admissions count); joined to
    the practice context it is the features query's output, column for column."""
    tables = tables_with_admissions()
    people, events = _clean(tables)
    areas = tables["areas"].lazy()
    part_query = features.build_features_part(people, areas, events, **_options(params))
    part = part_query.sort("person_id").collect()
    query = features.build_features(people, areas, events, **_options(params))
    expected = query.sort("person_id").collect()
    context = features.context_columns(params.features)
    assert set(part.columns) == set(expected.columns) - set(context) | {features.ADMISSIONS}
    rates = features.practice_context_query(
        people,
        events,
        index_date=INDEX,
        polypharmacy_months=params.features.polypharmacy_months,
        codelists=features.load_codelists(),
    )
    joined = features.join_practice_context(part.lazy(), rates, features=params.features)
    assert joined.collect().equals(expected)


def test_partition_tasks_report_their_partials_and_ranges(tmp_path: Path, params: Params) -> None:
    """Each partition task writes its part once and reports its rows, person_id range and the
    partials of its own people and events."""
    tables = tables_with_admissions()
    folder = write_partitioned(tmp_path / "split", tables)
    parts = tmp_path / "parts"
    codelists = features.load_codelists()
    for name in partitions.partitions(folder):
        written = features.partition_features(
            name,
            folder=str(folder),
            parts=str(parts),
            features=params.features,
            index_date=INDEX,
            seed=params.seed,
            codelists=codelists,
            unavailable=(),
        )
        people = contract.scan_input(folder, "people", name)
        events = contract.scan_input(folder, "events", name)
        expected = features.practice_partials_query(
            people,
            contract.clean_events(events, people, index_date=INDEX),
            index_date=INDEX,
            polypharmacy_months=params.features.polypharmacy_months,
            codelists=codelists,
        ).collect()
        ids = people.select("person_id").collect()["person_id"]
        assert (written.rows, written.low, written.high) == (len(ids), ids.min(), ids.max())
        assert written.partials.sort("practice_id").equals(expected.sort("practice_id"))
        assert pl.read_parquet(parts / name)["person_id"].is_sorted()


def test_partitioned_and_chunked_equal_whole(tmp_path: Path, params: Params) -> None:
    """The partitioned run's file has the whole run's rows and columns (no admissions count),
    with the admission rate of the polypharmacy window, counted or not; the run in person_id
    chunks has its bytes."""
    tables = tables_with_admissions()
    options: dict[str, Any] = {
        "features": params.features,
        "index_date": INDEX,
        "seed": params.seed,
    }
    whole_folder = tmp_path / "whole"
    whole_folder.mkdir()
    for name, frame in tables.items():
        frame.write_parquet(whole_folder / f"{name}.parquet")
    features.write_features(whole_folder, tmp_path / "whole.parquet", **options)
    split = write_partitioned(tmp_path / "split", tables)
    assert len(partitions.partitions(split)) == 2
    features.write_features(split, tmp_path / "split.parquet", **options)
    features.write_features(whole_folder, tmp_path / "chunked.parquet", chunk_people=6, **options)
    whole = pl.read_parquet(tmp_path / "whole.parquet")
    assert pl.read_parquet(tmp_path / "split.parquet").equals(whole)
    assert (tmp_path / "chunked.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert list(whole.columns) == list(features.output_schema(params.features))
    rate = f"practice_emergency_admission_rate_{params.features.polypharmacy_months}m"
    assert whole[rate].n_unique() > 1
