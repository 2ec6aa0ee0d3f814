"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A LocalCluster of 2 worker processes (1 thread each); yields its scheduler address
    (every module that compares the Dask engine with the local one)."""
    with (
        LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},  # as engine.connect: 8787 may be busy
        ) as local,
        Client(local) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield local.scheduler_address
