"""The engine's pieces that need no cluster: choosing it, ordered results, a missing scheduler."""

from __future__ import annotations

import socket

import polars as pl
import pytest

from pipeline import engine
from pipeline.config import parse_params
from pipeline.errors import StageError

TARGETS = {"t": {"outcome": "emergency_admission", "follow_up_months": 12}}


def _shifted(partition: pl.DataFrame, *, by: int) -> pl.DataFrame:
    return partition.with_columns(pl.col("x") + by)


def test_local_engine_runs_each_partition_here_in_order() -> None:
    parts = [pl.DataFrame({"x": [i]}) for i in (3, 1, 2)]
    with engine.connect("local") as client:
        assert client is None
        got = engine.map_partitions(_shifted, parts, client=client, by=10)
    assert [frame["x"].item() for frame in got] == [13, 11, 12]


def test_engine_and_distributed_training_are_checked_params() -> None:
    assert parse_params({"targets": TARGETS}).engine == "local"
    assert parse_params({"targets": TARGETS, "engine": "dask"}).engine == "dask"
    with pytest.raises(Exception, match="engine"):
        parse_params({"targets": TARGETS, "engine": "spark"})
    with pytest.raises(Exception, match=r"train.distributed: true needs engine: dask"):
        parse_params({"targets": TARGETS, "train": {"distributed": True}})
    with pytest.raises(Exception, match="time_out"):
        parse_params({"targets": TARGETS, "train": {"time_out": 0}})


def test_scheduler_address_comes_from_the_environment() -> None:
    assert engine.scheduler_address({}) is None
    assert engine.scheduler_address({engine.SCHEDULER_ENV: "  "}) is None
    address = "tcp://10.0.0.5:8786"
    assert engine.scheduler_address({engine.SCHEDULER_ENV: address}) == address


def test_an_unreachable_scheduler_stops_with_the_address_and_the_fix(monkeypatch) -> None:
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(engine.SCHEDULER_ENV, f"tcp://127.0.0.1:{port}")
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(StageError, match=rf"127.0.0.1:{port}.*dask scheduler"):
        with engine.connect("dask"):
            pass
