"""Partitions: a population stored as one parquet folder per ICB (issue 18).

A *partitioned* population folder keeps the small reference tables whole (``areas.parquet``,
``practices.parquet``) and splits the person-level tables by the ICB of each person's home area,
one folder per ICB, each holding one or more parts of at most ``population.chunk_size`` people::

    data/population/
        areas.parquet
        practices.parquet
        people/E54000008/part-00000.parquet
        people/E54000008/part-00001.parquet
        events/E54000008/part-00000.parquet     # the events of exactly those people
        outcomes/E54000008/part-00000.parquet
        people/E54000050/part-00000.parquet
        ...

A *partition* is one such part: the relative path ``<icb folder>/<part file>`` shared by the
people, events and outcomes files of the same people. Every stage that works per partition reads
only that partition's files, so its memory is bounded by the part size, not by the population;
the partitions run one after another here or as Dask tasks (:mod:`pipeline.engine`).

A folder with ``<table>.parquet`` files, or ``<table>/`` folders that are not split this way, is
one partition, :data:`WHOLE` (every table read as a whole): the layout of small extracts and of
the test fixtures.

Partition names sort in ICB-folder then part order. The synthetic world numbers people in that
order, so its partitions' ``person_id`` ranges follow one another and their sorted outputs,
concatenated in partition order, are sorted as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from pipeline import io

__all__ = [
    "NOT_RECORDED",
    "PARTITIONED_TABLES",
    "WHOLE",
    "icb_of",
    "is_partitioned",
    "orphan_partitions",
    "partition_path",
    "partitions",
    "scan_partition",
]

PARTITIONED_TABLES: Final = ("people", "events", "outcomes")
"""The person-level tables that are split by ICB; the others are always whole."""
WHOLE: Final = ""
"""The one partition of a population that is not split by ICB: every table read as a whole."""
NOT_RECORDED: Final = "not_recorded"
"""Folder of the people with no home area (so no ICB)."""
PART_GLOB: Final = "*/*.parquet"


def is_partitioned(folder: str | Path) -> bool:
    """True when ``folder/people/`` holds ``<icb>/<part>.parquet`` files (and no people.parquet)."""
    folder = Path(folder)
    return not (folder / "people.parquet").exists() and any((folder / "people").glob(PART_GLOB))


def partitions(folder: str | Path) -> list[str]:
    """The partitions of a population folder, in order (``[WHOLE]`` when it is not split).

    Examples
    --------
    >>> partitions("no/such/folder")
    ['']
    """
    folder = Path(folder)
    if not is_partitioned(folder):
        return [WHOLE]
    people = folder / "people"
    return sorted(path.relative_to(people).as_posix() for path in people.glob(PART_GLOB))


def icb_of(partition: str) -> str | None:
    """The ICB folder a partition belongs to (None for :data:`WHOLE`).

    Examples
    --------
    >>> icb_of("E54000008/part-00001.parquet")
    'E54000008'
    >>> icb_of("") is None
    True
    """
    return partition.split("/", 1)[0] if partition else None


def partition_path(folder: str | Path, table: str, partition: str) -> Path:
    """Where a partition of ``table`` lives (``folder/table/<icb>/<part>.parquet``)."""
    if table not in PARTITIONED_TABLES:
        raise ValueError(f"table {table!r} is not split by ICB ({', '.join(PARTITIONED_TABLES)})")
    return Path(folder) / table / partition


def scan_partition(
    folder: str | Path, table: str, partition: str, *, schema: pl.Schema | dict[str, pl.DataType]
) -> pl.LazyFrame:
    """One partition of a table, lazily; the whole table for :data:`WHOLE` and for the
    reference tables; an empty frame of ``schema`` when the partition has no file of ``table``
    (people with no outcomes, say)."""
    if partition == WHOLE or table not in PARTITIONED_TABLES:
        return io.scan_table(folder, table)
    path = partition_path(folder, table, partition)
    if not path.exists():
        return pl.LazyFrame(schema=schema)
    return pl.scan_parquet(path)


def orphan_partitions(folder: str | Path) -> dict[str, list[str]]:
    """Events or outcomes parts with no people part of the same name, per table (a
    partitioned extract whose files do not pair up: the validator reports them)."""
    folder = Path(folder)
    if not is_partitioned(folder):
        return {}
    known = set(partitions(folder))
    found: dict[str, list[str]] = {}
    for table in PARTITIONED_TABLES[1:]:
        names = sorted(
            path.relative_to(folder / table).as_posix() for path in (folder / table).glob(PART_GLOB)
        )
        if orphans := [name for name in names if name not in known]:
            found[table] = orphans
    return found
