"""The whole cohort's quantities without holding the whole cohort: cuts and capped samples.

The audit needs two things of every eligible person: ``selected`` (the operating point: each
capacity unit's first ``list_size`` people by ``risk_rank``) and ``true_case`` (in the top
``audit.need_case_share`` of the cohort by true need). Both are a comparison with one cut of a
global order, so they are computed here from small per-slice summaries, folded in any order
(:func:`merge_summaries`), then applied to whichever rows the stage holds (:func:`with_cuts`):

- ``selected``: per unit the ``risk_rank`` of its last selected person. In ``share`` mode that
  is the list size itself (``risk_rank`` is 1..n, checked); per ICB or practice, the largest of
  the unit's ``capacity`` smallest ranks, folded from each slice's ``capacity`` smallest;
- ``true_case``: Polars' ``quantile(1 - share)`` (``nearest``: the value at position
  ``round((m - 1) q)`` of the ``m`` recorded values, sorted), taken from the held rows when the
  whole cohort is held, else found exactly by a radix selection on the values' bits
  (:func:`select_kth`): four passes of 65,536-bin histograms over the slices.

The rows held are bounded by the caps ``audit.max_audited_rows`` and ``audit.max_cohort_rows``:
past a cap, a seeded sample of exactly that many positions (:func:`sample_positions`), drawn in
blocks of :data:`SAMPLE_BLOCK` positions (so the same sample whatever the slice size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl

from pipeline import selection
from pipeline.errors import ContractError
from pipeline.selection import CapacityMode

__all__ = [
    "DIGIT_BITS",
    "SAMPLE_BLOCK",
    "CohortCuts",
    "SliceSummary",
    "cohort_cuts",
    "digit_histogram",
    "merge_summaries",
    "quantile_position",
    "sample_positions",
    "select_kth",
    "slice_candidates",
    "sortable_keys",
    "split_positions",
    "with_cuts",
]

SAMPLE_BLOCK: Final = 1_000_000
"""Positions per block of a capped sample: the sample's counts per block are drawn first
(multivariate hypergeometric), then each block's positions; memory: one block and the sample."""
DIGIT_BITS: Final = 16
"""Bits of the sortable key resolved per pass of :func:`select_kth` (65,536 bins)."""
LATE_COLUMNS: Final = ("true_need", "true_case", "oracle_risk", "selected", "need_score")
"""The columns the cohort ends with, in this order (as :func:`pipeline.audit.cohort.
with_whole_cohort_columns` leaves them)."""


@dataclass(frozen=True)
class SliceSummary:
    """What a slice adds to the whole cohort's counts and cuts (small whatever its size).

    ``candidates``: ``unit``, ``risk_rank``, ``risk_score`` of each unit's first ``capacity``
    people by rank (per ICB / practice), or of the person at the list size's rank (share).
    ``split_counts``: the slice's audited-split people, by the slice's first row.
    """

    n_rows: int
    n_missing: int
    n_true_need: int
    rank_min: int | None
    rank_max: int | None
    rank_sum: int
    candidates: pl.DataFrame
    split_counts: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortCuts:
    """The whole cohort's cuts: each unit's last selected ``risk_rank`` (``unit`` null: one
    unit), the lowest selected risk score and the true-need cut (None: no true need)."""

    unit: str | None
    rank_cuts: pl.DataFrame
    cut_score: float | None
    true_need_cut: float | None = None


def _keep_first(candidates: pl.DataFrame, *, k: int) -> pl.DataFrame:
    """Each unit's ``k`` smallest ranks, sorted (a total order: the same whatever the fold)."""
    first = pl.col("risk_rank").rank("ordinal").over("unit") <= k
    return candidates.filter(first).sort("unit", "risk_rank", nulls_last=True)


def slice_candidates(
    people: pl.DataFrame, *, unit: str | None, capacity: float, share_rank: int
) -> pl.DataFrame:
    """A slice's candidates for the cuts (``people``: ``risk_rank``, ``risk_score`` and the
    ``unit`` column of per-unit modes). ``share_rank``: the list size in ``share`` mode."""
    if unit is None:
        return people.filter(pl.col("risk_rank") == share_rank).select(
            pl.lit(selection.ALL_UNITS).alias("unit"), "risk_rank", "risk_score"
        )
    return _keep_first(
        people.select(pl.col(unit).cast(pl.String).alias("unit"), "risk_rank", "risk_score"),
        k=int(capacity),
    )


def merge_summaries(*, capacity: float, unit: str | None) -> Callable[..., SliceSummary]:
    """The fold of two summaries (sums, the union of split counts, each unit's first
    ``capacity`` candidates): independent of the order the slices arrive in."""

    def merge(running: SliceSummary, other: SliceSummary) -> SliceSummary:
        candidates = pl.concat([running.candidates, other.candidates])
        if unit is not None:
            candidates = _keep_first(candidates, k=int(capacity))
        ranks_min = [r for r in (running.rank_min, other.rank_min) if r is not None]
        ranks_max = [r for r in (running.rank_max, other.rank_max) if r is not None]
        return SliceSummary(
            n_rows=running.n_rows + other.n_rows,
            n_missing=running.n_missing + other.n_missing,
            n_true_need=running.n_true_need + other.n_true_need,
            rank_min=min(ranks_min, default=None),
            rank_max=max(ranks_max, default=None),
            rank_sum=running.rank_sum + other.rank_sum,
            candidates=candidates,
            split_counts=running.split_counts | other.split_counts,
        )

    return merge


def share_list_size(n_rows: int, *, capacity_mode: CapacityMode, capacity: float) -> int:
    """The list size in ``share`` mode (0 otherwise: per-unit modes fold candidates)."""
    if capacity_mode != "share":
        return 0
    return int(np.floor(n_rows * capacity + 0.5))


def cohort_cuts(
    summary: SliceSummary, *, capacity_mode: CapacityMode, capacity: float, source: str
) -> CohortCuts:
    """The cuts of ``selected`` (and the lowest selected score) from the folded ``summary``.

    Raises
    ------
    ContractError
        In ``share`` mode, when ``risk_rank`` is not 1..n (the list size is then no rank).
    """
    n = summary.n_rows
    unit = selection.unit_column(capacity_mode)
    if unit is None:
        # a rank of 1..n is the position the whole cohort's ordinal rank gives it
        if (summary.rank_min, summary.rank_max, summary.rank_sum) != (1, n, n * (n + 1) // 2):
            raise ContractError(f"{source}: risk_rank is not 1..{n} over the eligible cohort")
        size = share_list_size(n, capacity_mode=capacity_mode, capacity=capacity)
        rank_cuts = pl.DataFrame(
            {"unit": [selection.ALL_UNITS], "cut_rank": [size]},
            schema={"unit": pl.String, "cut_rank": pl.Int64},
        )
    else:
        rank_cuts = summary.candidates.group_by("unit", maintain_order=True).agg(
            pl.col("risk_rank").max().cast(pl.Int64).alias("cut_rank")
        )
    lowest = summary.candidates["risk_score"].min()
    return CohortCuts(
        unit=unit,
        rank_cuts=rank_cuts,
        cut_score=None if lowest is None else float(lowest),  # type: ignore[arg-type]
    )


def _selected(cuts: CohortCuts) -> pl.Expr:
    """``selected``: ``risk_rank`` at most its unit's cut."""
    if cuts.unit is None:
        return (pl.col("risk_rank") <= int(cuts.rank_cuts["cut_rank"][0])).alias("selected")
    known = cuts.rank_cuts.filter(pl.col("unit").is_not_null())
    unknown = cuts.rank_cuts.filter(pl.col("unit").is_null())["cut_rank"]
    # looked up in place (a join would copy the frame); the null unit is a unit of its own
    cut = (
        pl.when(pl.col(cuts.unit).is_null())
        .then(pl.lit(int(unknown[0]) if unknown.len() else 0, dtype=pl.Int64))
        .otherwise(
            pl.col(cuts.unit)
            .cast(pl.String)
            .replace_strict(known["unit"], known["cut_rank"], default=0, return_dtype=pl.Int64)
        )
    )
    return (pl.col("risk_rank") <= cut).alias("selected")


def with_cuts(people: pl.DataFrame, cuts: CohortCuts) -> pl.DataFrame:
    """``selected`` and, with ``true_need``, ``true_case`` from the whole cohort's ``cuts``,
    the columns in the order :func:`pipeline.audit.cohort.with_whole_cohort_columns` gives."""
    added = [_selected(cuts)]
    if "true_need" in people.columns:
        case = (
            pl.lit(False)
            if cuts.true_need_cut is None
            else (pl.col("true_need") >= cuts.true_need_cut).fill_null(False)
        )
        added.append(case.alias("true_case"))
    frame = people.with_columns(added)
    first = [c for c in frame.columns if c not in LATE_COLUMNS]
    return frame.select(*first, *(c for c in LATE_COLUMNS if c in frame.columns))


# --- capped samples -------------------------------------------------------------------------------


def sample_positions(n: int, *, cap: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted positions of a seeded sample of exactly ``cap`` of ``n`` (None: ``n <= cap``,
    everyone), drawn block by block so the memory is the sample's and one block's.

    >>> sample_positions(5, cap=9, rng=np.random.default_rng(0)) is None
    True
    >>> sample_positions(10, cap=3, rng=np.random.default_rng(0)).size
    3
    """
    if n <= cap:
        return None
    starts = np.arange(0, n, SAMPLE_BLOCK, dtype=np.int64)
    sizes = np.minimum(SAMPLE_BLOCK, n - starts)
    counts = rng.multivariate_hypergeometric(sizes, cap)
    return np.concatenate(
        [
            start + np.sort(rng.choice(int(size), size=int(count), replace=False))
            for start, size, count in zip(starts, sizes, counts, strict=True)
        ]
    ).astype(np.int64)


def split_positions(positions: np.ndarray | None, *, offset: int, length: int) -> np.ndarray | None:
    """The sample's positions within ``[offset, offset + length)``, from that range's start
    (None: everyone)."""
    if positions is None:
        return None
    lo, hi = np.searchsorted(positions, [offset, offset + length])
    return positions[lo:hi] - offset


# --- the k-th value of a column, exactly, pass by pass --------------------------------------------


def quantile_position(m: int, *, quantile: float) -> int:
    """The 0-based position in the sorted ``m`` values of Polars' ``nearest`` quantile.

    >>> quantile_position(11, quantile=0.8)
    8
    """
    return int(np.floor((m - 1) * quantile + 0.5))


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """Float64 values as uint64 keys in the same order (sign bit flipped, negatives inverted)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    top = np.uint64(1) << np.uint64(63)
    return np.where(bits & top, ~bits, bits | top)


def _from_key(key: int) -> float:
    top = 1 << 63
    bits = key ^ top if key & top else ~key & (2**64 - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def digit_histogram(values: np.ndarray, *, prefix: int, level: int) -> np.ndarray:
    """Counts of the ``level``-th 16-bit digit (0 = highest) of the keys of ``values`` whose
    higher digits are ``prefix``: one pass of :func:`select_kth`."""
    keys = sortable_keys(values)
    shift = np.uint64(64 - DIGIT_BITS * (level + 1))
    if level:
        keys = keys[(keys >> (shift + np.uint64(DIGIT_BITS))) == np.uint64(prefix)]
    digits = ((keys >> shift) & np.uint64(2**DIGIT_BITS - 1)).astype(np.int64)
    return np.bincount(digits, minlength=2**DIGIT_BITS).astype(np.int64)


def select_kth(position: int, histogram: Callable[[int, int], np.ndarray]) -> float:
    """The value at ``position`` (0-based, ascending) of a column spread over slices, exactly.

    ``histogram(prefix, level)`` sums :func:`digit_histogram` over every slice; four calls
    resolve the 64 bits of the value's key, holding 65,536 counts at a time.
    """
    prefix, rank = 0, position
    for level in range(64 // DIGIT_BITS):
        cumulative = np.cumsum(histogram(prefix, level))
        digit = int(np.searchsorted(cumulative, rank, side="right"))
        rank -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << DIGIT_BITS) | digit
    return _from_key(prefix)
