"""The compute engine: the same Polars function per ICB partition, in this process or on Dask.

``params.engine`` chooses it:

``local``
    Every partition's function runs here, one after another (no cluster, no extra process).
``dask``
    The functions run as tasks of a ``dask.distributed`` cluster: the one at
    ``DASK_SCHEDULER_ADDRESS`` (``tcp://host:8786``) when it is set, otherwise a
    ``LocalCluster`` of worker processes (one thread each) started for the stage and closed
    after it. Tasks read their inputs from paths, so the data must be on a filesystem every
    worker reads at the same path (``docs/scale.md``).

:func:`map_partitions` returns the results in the order of the partitions it was given, whatever
order the workers finish in, so a stage that concatenates them writes the same bytes on either
engine. :func:`fold_partitions` folds each result into one value as it arrives, for a
reduction whose combined result must not depend on the order (a top-k by a total order): the
results are never all held at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from pipeline.errors import StageError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from distributed import Client, Future

    from pipeline.config import Params

__all__ = [
    "CONNECT_TIMEOUT",
    "SCHEDULER_ENV",
    "Engine",
    "connect",
    "connect_for",
    "fold_partitions",
    "map_partitions",
    "scheduler_address",
]

Engine = Literal["local", "dask"]
SCHEDULER_ENV: Final = "DASK_SCHEDULER_ADDRESS"
"""An existing cluster's scheduler (``tcp://10.0.0.5:8786``); unset: a LocalCluster."""
CONNECT_TIMEOUT: Final = "20s"
"""How long a stage waits for the scheduler at ``DASK_SCHEDULER_ADDRESS`` before stopping."""

SCATTER_BYTES: Final = 100_000
"""A shared argument of :func:`map_partitions` larger than this is sent to the workers once."""

T = TypeVar("T")


def scheduler_address(environ: dict[str, str] | None = None) -> str | None:
    """The scheduler address from ``DASK_SCHEDULER_ADDRESS`` (None when unset or empty)."""
    value = (os.environ if environ is None else environ).get(SCHEDULER_ENV, "").strip()
    return value or None


@contextmanager
def connect(engine: Engine, *, n_workers: int | None = None) -> Iterator[Client | None]:
    """A Dask client for the stage's lifetime (None for the ``local`` engine).

    Parameters
    ----------
    engine
        ``params.engine``.
    n_workers
        Worker processes of a LocalCluster (None: one per core); ignored for an existing cluster.

    Yields
    ------
    Client | None
        Connected to ``DASK_SCHEDULER_ADDRESS`` or to a LocalCluster started here (processes,
        one thread each, no dashboard), closed on exit.

    Raises
    ------
    StageError
        The scheduler at ``DASK_SCHEDULER_ADDRESS`` cannot be reached within ``CONNECT_TIMEOUT``.
    """
    if engine == "local":
        yield None
        return
    from distributed import Client, LocalCluster

    address = scheduler_address()
    if address is None:
        with (
            LocalCluster(
                processes=True,
                n_workers=n_workers,
                threads_per_worker=1,
                dashboard_address=None,
                # no dashboard, but the scheduler still serves health routes over HTTP on
                # 8787 by default; a busy 8787 (another cluster) warns, which tests make errors
                scheduler_kwargs={"dashboard_address": ":0"},
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise StageError(
            f"{SCHEDULER_ENV}={address}: no Dask scheduler answered within {CONNECT_TIMEOUT} "
            f"({error}); start it (`dask scheduler`) or unset {SCHEDULER_ENV} for a local cluster"
        ) from None
    with client:
        yield client


def connect_for(params: Params) -> AbstractContextManager[Client | None]:
    """:func:`connect` with the params' ``engine`` and ``dask_workers`` (a stage's one call)."""
    return connect(params.engine, n_workers=params.dask_workers)


def map_partitions(
    func: Callable[..., T],
    partitions: Sequence[Any],
    *,
    client: Client | None,
    **shared: Any,
) -> list[T]:
    """``func(partition, **shared)`` for every partition, results in the order given.

    Parameters
    ----------
    func
        A module-level (picklable) function of one partition (e.g. an ICB's rows or its code)
        and keyword arguments; it must not rely on this process's state.
    partitions
        One item per task.
    client
        From :func:`connect`; None runs every call here, in order.
    **shared
        Keyword arguments passed to every call (pass paths rather than tables: every worker
        reads them).

    Returns
    -------
    list[T]
        ``[func(p, **shared) for p in partitions]``, whichever engine ran them.
    """
    if client is None:
        return [func(partition, **shared) for partition in partitions]
    results: list[T] = client.gather(_submit(func, partitions, client=client, shared=shared))
    return results


def _submit(
    func: Callable[..., Any], partitions: Sequence[Any], *, client: Client, shared: dict[str, Any]
) -> list[Future]:
    """One task per partition on the cluster (futures in the partitions' order)."""
    from dask.sizeof import sizeof

    # The partitions (batches of person ids, an ICB's rows) and any large shared argument (a
    # model's text) go to the workers once, as data, rather than inside every task of the graph.
    scattered = client.scatter(list(partitions), hash=False)
    large = {name: value for name, value in shared.items() if sizeof(value) > SCATTER_BYTES}
    if large:
        sent = client.scatter(list(large.values()), hash=False)
        shared = shared | dict(zip(large, sent, strict=True))
    futures: list[Future] = client.map(func, scattered, pure=False, **shared)
    return futures


def fold_partitions(
    func: Callable[..., T],
    partitions: Sequence[Any],
    *,
    combine: Callable[[T, T], T],
    client: Client | None,
    **shared: Any,
) -> T:
    """``func(partition, **shared)`` for every partition, folded by ``combine`` as each result
    arrives, so only the running value and one result are held (never every result).

    Parameters
    ----------
    func
        As :func:`map_partitions`.
    partitions
        One item per task (at least one).
    combine
        ``combine(running, result)``. On Dask the results arrive in the order the workers
        finish, so the value ``combine`` builds must not depend on that order (e.g. the top
        ``k`` rows of a total order); sums of floats do, so fold them with
        :func:`map_partitions` in partition order instead.
    client
        From :func:`connect`; None runs every call here, in order.
    **shared
        As :func:`map_partitions`.

    Returns
    -------
    T
        The folded value.
    """
    if not partitions:
        raise ValueError("fold_partitions needs at least one partition")
    if client is None:
        running = func(partitions[0], **shared)
        for partition in partitions[1:]:
            running = combine(running, func(partition, **shared))
        return running
    from distributed import as_completed

    arriving = as_completed(_submit(func, partitions, client=client, shared=shared))
    folded: T | None = None
    # as_completed drops each future it yields: a result is freed on its worker once folded
    for future in arriving:
        result = future.result()
        folded = result if folded is None else combine(folded, result)
        del future
    assert folded is not None
    return folded
