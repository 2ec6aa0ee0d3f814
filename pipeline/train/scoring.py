"""Scores of the whole eligible cohort: rank, decile, tier, and who the operating point selects.

The rank is one global order of every eligible person, so it is computed by DuckDB, whose sort
spills to disk beyond a memory limit (:data:`RANK_MEMORY`): the stage writes the cohort's scores
in parts (:func:`scored_part`), and :func:`write_ranked_scores` ranks them into the scores file
without ever holding the cohort (England's 45M people sort in the memory limit). The same SQL
ranks a frame in memory (:func:`rank_scores`), so there is one definition of the rank. Who the
operating point selects is then folded slice by slice from the ranks (:func:`selected_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import duckdb
import numpy as np
import polars as pl

from pipeline import contract, selection
from pipeline.selection import CapacityMode

RANK_MEMORY: Final = "1GB"
"""DuckDB's memory limit while ranking; beyond it the sort spills to a temporary folder."""
PART_ROWS: Final = 1_000_000
"""People per part of the scores written before ranking, and per slice read back."""
SCORED_SCHEMA: Final = {
    "person_id": pl.String,
    "split": pl.String,
    "outcome": pl.Int8,
    "risk_score": pl.Float64,
    "tie_key": pl.UInt64,
}
"""A part of the cohort's scores before ranking (:func:`scored_part`)."""


def scored_part(people: pl.DataFrame, risk: np.ndarray, *, root_seed: int) -> pl.DataFrame:
    """``people`` (person_id, split, outcome) with their calibrated ``risk_score`` and seeded
    ``tie_key`` (:func:`pipeline.selection.tie_key`): a part of :func:`write_ranked_scores`."""
    return people.select(
        "person_id",
        "split",
        "outcome",
        pl.Series("risk_score", risk, dtype=pl.Float64),
        selection.tie_key(pl.col("person_id"), root_seed=root_seed),
    ).cast(SCORED_SCHEMA)  # type: ignore[arg-type]


def rank_query(source: str, *, n_people: int) -> str:
    """DuckDB SQL of the scores file (``contract.SCORES_SCHEMA``) from the scored rows of
    ``source`` (:data:`SCORED_SCHEMA`), sorted by person_id.

    risk_rank 1 = highest score, ties by ``tie_key`` (then ``person_id``: a collision of the
    64-bit key must not leave the order to the sort); risk_decile 10 = highest; risk_tier from
    ``contract.RISK_TIERS`` by rank share. The cut-offs are written as the same floats Polars
    compared before (``rank <= cutoff * n``), so the tiers are unchanged.
    """
    tiers = " ".join(
        f"WHEN risk_rank <= {cutoff * n_people!r} THEN '{label}'"
        for label, cutoff in contract.RISK_TIERS[:-1]
    )
    return f"""
        SELECT person_id, split, CAST(outcome AS TINYINT) AS outcome, risk_score, risk_rank,
               CAST(10 - ((risk_rank - 1) * 10) // {n_people} AS TINYINT) AS risk_decile,
               CASE {tiers} ELSE '{contract.RISK_TIERS[-1][0]}' END AS risk_tier
        FROM (
            SELECT *, row_number() OVER (
                ORDER BY risk_score DESC, tie_key ASC, person_id ASC
            ) AS risk_rank
            FROM {source}
        )
        ORDER BY person_id
    """


def _connect(*, spill: Path | None, threads: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET memory_limit = '{RANK_MEMORY}'")
    con.execute("SET preserve_insertion_order = true")
    if spill is not None:
        con.execute(f"SET temp_directory = '{spill}'")
    return con


def rank_scores(scored: pl.DataFrame, *, root_seed: int) -> pl.DataFrame:
    """Rank, decile and tier of every person of ``scored`` (person_id, split, outcome,
    risk_score) in memory, by :func:`rank_query`: ``contract.SCORES_SCHEMA``, sorted by
    person_id. For small cohorts and tests; the stage ranks its parts on disk."""
    part = scored_part(
        scored.select("person_id", "split", "outcome"),
        scored["risk_score"].to_numpy(),
        root_seed=root_seed,
    )
    con = _connect(spill=None, threads=1)
    con.register("scored", part.to_arrow())
    ranked = con.sql(rank_query("scored", n_people=part.height)).pl()
    return ranked.cast(contract.SCORES_SCHEMA)


def write_ranked_scores(
    parts: Iterable[Path], target: Path, *, n_people: int, spill: Path, threads: int
) -> None:
    """The scores file at ``target`` (zstd parquet, :func:`rank_query`) from ``parts``
    (:func:`scored_part` files), ranked by DuckDB within :data:`RANK_MEMORY`, spilling to
    ``spill``. ``target`` should be a temporary (:func:`pipeline.io.atomic_path`)."""
    files = ", ".join(f"'{file}'" for file in parts)
    con = _connect(spill=spill, threads=threads)
    query = rank_query(f"read_parquet([{files}])", n_people=n_people)
    con.execute(
        f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 250000)"
    )
    con.close()


def selected_at_capacity(
    scores: pl.DataFrame, *, capacity_mode: CapacityMode, capacity: float
) -> pl.Series:
    """Who a list at the operating point would reach, ranked on the whole cohort
    (:func:`pipeline.selection.select_top`; per-unit modes need icb_code / practice_id)."""
    chosen = selection.select_top(
        pl.col("risk_rank"), capacity_mode=capacity_mode, capacity=capacity
    )
    return scores.select(chosen).get_column("selected")


def selected_rows(
    ranks: Iterable[pl.DataFrame], capacity: pl.DataFrame, *, capacity_mode: CapacityMode
) -> pl.Series:
    """The ``row`` numbers the operating point selects, folded from slices of ``row``,
    ``risk_rank`` and the capacity unit's column.

    Each slice keeps its people among the first ``list_size`` of their unit by rank (the whole
    cohort's sizes, ``capacity``: :func:`pipeline.selection.list_sizes`), and the union of the
    kept is cut again: the first ``list_size`` of a total order are the first of the firsts of
    any split of it, so only list-sized candidates are held, and the result is
    :func:`selected_at_capacity` on the whole cohort.
    """
    candidates: pl.DataFrame | None = None
    for ranked in ranks:
        both = ranked if candidates is None else pl.concat([candidates, ranked])
        candidates = selection.first_of_units(
            both.lazy(), "risk_rank", capacity, capacity_mode=capacity_mode
        )
    return pl.Series("row", [], dtype=pl.Int64) if candidates is None else candidates["row"]
