"""Outreach lists: who is contacted, under which pseudonym, in which order.

Each capacity unit (``pipeline.selection``: the whole cohort, an ICB or a practice) contributes
its top ``list_size`` people by priority in the pipeline's one order
(:func:`pipeline.selection.priority_order`: ties by ``risk_rank``, whose own ties follow a
seeded per-person key), so the lists select exactly the people the audit does, and the same
inputs and secret give byte-identical lists. Ranks count from 1 within each ICB's list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl

from pipeline import selection
from pipeline.config import ListTier
from pipeline.errors import ContractError
from pipeline.io import atomic_path
from pipeline.pseudonyms import pseudonymise
from pipeline.selection import CapacityMode

__all__ = [
    "CONTEXT_COLUMNS",
    "DICTIONARY_FILE",
    "MERGED_FILE",
    "OUTREACH_COLUMNS",
    "PERSON_COLUMNS",
    "RISK_SCORE_DECIMALS",
    "check_file_names",
    "keyed_rows",
    "list_rows",
    "merge_lists",
    "select_outreach",
    "select_people",
    "spreadsheet_safe",
    "tier_expr",
    "tier_labels",
    "with_pseudonyms",
    "write_people_csv",
]

OUTREACH_COLUMNS: Final = (
    "pseudonym",
    "practice_id",
    "icb_code",
    "rank",
    "list_tier",
    "risk_score",
    "age",
    "sex",
    "conditions_recorded",
    "reason_1",
    "reason_2",
    "reason_3",
    "suggested_action",
)
"""The columns of every outreach CSV and parquet, in order. Nothing else leaves the stage."""
CONTEXT_COLUMNS: Final = ("age", "sex")
"""Read from ``features/features.parquet`` for the lists: context, never a reason."""
PERSON_COLUMNS: Final = (
    "pseudonym",
    "practice_id",
    "icb_code",
    "age",
    "sex",
    "conditions_recorded",
)
"""The merged list's columns about the person (the same on every target's list)."""
NO_ICB: Final = "ICB_not_recorded"
"""The ``icb_code`` (and CSV name) of the one list of people without a home area, hence no ICB
(``people.area_id`` null; docs/omop.md): never an ODS code, which has three characters."""
MERGED_FILE: Final = "merged"
"""``data/outreach/merged.parquet`` and ``merged/<icb>.csv``: one row per person across targets."""
DICTIONARY_FILE: Final = "data_dictionary.csv"

RISK_SCORE_DECIMALS: Final = 4
FORMULA_START: Final = r"^[=+\-@\t\r]"
"""A text cell starting with one of ``= + - @``, tab or carriage return is run as a formula by
spreadsheets (OWASP, "CSV Injection"); such cells get a leading single quote."""
_SAFE_FILE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def select_people(
    cohort: pl.LazyFrame, capacity: pl.DataFrame, *, capacity_mode: CapacityMode
) -> pl.DataFrame:
    """The people to contact, by ``person_id``: the top of each capacity unit by priority, ties
    by ``risk_rank`` (:func:`pipeline.selection.priority_order`).

    Parameters
    ----------
    cohort
        With ``person_id``, ``priority``, ``risk_rank``, ``icb_code``, ``practice_id`` and the
        scores.
    capacity
        From :func:`pipeline.selection.list_sizes`.
    capacity_mode
        Which unit the capacity applies to.

    Returns
    -------
    pl.DataFrame
        The selected rows with ``rank`` (1 = contact first within the ICB list), sorted by
        ``icb_code``, ``rank``; no pseudonym yet (:func:`with_pseudonyms`).
    """
    unit = selection.unit_column(capacity_mode)
    order = selection.priority_order(pl.col("priority"))
    position = pl.col("_order") if unit is None else pl.col("_order").rank("ordinal").over("unit")
    # filtered without a join: only the selected rows of the cohort's columns are copied
    candidates = (
        cohort.with_columns(selection.unit_expr(capacity_mode), order.alias("_order"))
        .filter(position <= selection.unit_list_size(capacity))
        .collect()
    )
    # Eager from here: the ICB ranks rely on row order.
    return (
        candidates.sort(["icb_code", "_order"])
        .with_columns((pl.int_range(pl.len()).over("icb_code") + 1).cast(pl.Int64).alias("rank"))
        .drop("unit", "_order")
    )


def with_pseudonyms(selected: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """``selected`` with ``pseudonym`` (the keyed HMAC of ``person_id``), row order kept.

    Runs where the key is (the stage's own process, never a Dask worker), on the selected
    people only.
    """
    return selected.with_columns(pseudonymise(selected["person_id"], key))


def select_outreach(
    cohort: pl.LazyFrame,
    capacity: pl.DataFrame,
    *,
    capacity_mode: CapacityMode,
    key: bytes,
) -> pl.DataFrame:
    """:func:`select_people` with each selected person's ``pseudonym`` (:func:`with_pseudonyms`).

    Only the selected people are pseudonymised: the HMAC runs on ``capacity`` rows, not the
    cohort.
    """
    return with_pseudonyms(select_people(cohort, capacity, capacity_mode=capacity_mode), key)


def tier_labels(tiers: Sequence[ListTier]) -> list[str]:
    """Each tier's label, naming its share of the list.

    >>> tier_labels([ListTier(name="A", up_to=0.2), ListTier(name="B", up_to=1.0)])
    ['A: first 20% of the list', 'B: last 80%']
    """
    labels = []
    for index, tier in enumerate(tiers):
        width = tier.up_to - (tiers[index - 1].up_to if index else 0.0)
        where = "first" if index == 0 else "last" if tier.up_to == 1.0 else "next"
        suffix = " of the list" if index == 0 else ""
        labels.append(f"{tier.name}: {where} {width:.0%}{suffix}")
    return labels


def tier_expr(tiers: Sequence[ListTier]) -> pl.Expr:
    """``list_tier`` by ``rank`` within each ICB's list (tier ends rounded half up, as list sizes).

    A tier holds the ranks up to ``floor(up_to * list length + 0.5)``; the last holds the rest.
    """
    length = pl.len().over("icb_code")
    chain: Any = pl
    for tier, label in zip(tiers[:-1], tier_labels(tiers), strict=False):
        end = (length * tier.up_to + 0.5).floor()
        chain = chain.when(pl.col("rank") <= end).then(pl.lit(label))
    last = pl.lit(tier_labels(tiers)[-1])
    return (last if chain is pl else chain.otherwise(last)).alias("list_tier")


def list_rows(explained: pl.DataFrame, *, tiers: Sequence[ListTier]) -> pl.DataFrame:
    """The published columns (``OUTREACH_COLUMNS``) of selected people with their reasons."""
    return explained.with_columns(
        pl.col("risk_score").round(RISK_SCORE_DECIMALS), tier_expr(tiers)
    ).select(OUTREACH_COLUMNS)


def keyed_rows(explained: pl.DataFrame, *, tiers: Sequence[ListTier]) -> pl.DataFrame:
    """``person_id`` and the published columns but ``pseudonym``, in ``OUTREACH_COLUMNS`` order.

    Tiers count ranks within each ICB (``pl.len().over("icb_code")``), so one ICB's rows give
    the same values alone as within every ICB's.
    """
    published = [column for column in OUTREACH_COLUMNS if column != "pseudonym"]
    return explained.with_columns(
        pl.col("risk_score").round(RISK_SCORE_DECIMALS), tier_expr(tiers)
    ).select("person_id", *published)


def merge_lists(lists: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per person across the targets' lists, with each target's rank, tier and risk.

    Parameters
    ----------
    lists
        Target -> its list (``OUTREACH_COLUMNS``), in the order the columns should follow.

    Returns
    -------
    pl.DataFrame
        ``PERSON_COLUMNS`` with ``rank`` (1 = contact first in the ICB, by the best rank on any
        list, then more lists first, then pseudonym), ``n_lists``, then per target
        ``<T>_rank``, ``<T>_tier``, ``<T>_risk_score``, ``<T>_reasons`` and ``<T>_action``
        (null when not on that list), then ``suggested_actions`` (each distinct action, in
        target order). Sorted by ICB, rank.
    """
    merged: pl.DataFrame | None = None
    for target, frame in lists.items():
        wide = frame.select(
            *PERSON_COLUMNS,
            pl.col("rank").alias(f"{target}_rank"),
            pl.col("list_tier").alias(f"{target}_tier"),
            pl.col("risk_score").alias(f"{target}_risk_score"),
            pl.concat_str(
                [pl.col(f"reason_{k}") for k in (1, 2, 3)], separator="; ", ignore_nulls=True
            ).alias(f"{target}_reasons"),
            pl.col("suggested_action").alias(f"{target}_action"),
        )
        merged = (
            wide
            if merged is None
            else merged.join(
                wide, on=list(PERSON_COLUMNS), how="full", coalesce=True, nulls_equal=True
            )
        )
    if merged is None:
        raise ValueError("merge_lists: no lists to merge")
    ranks = [pl.col(f"{target}_rank") for target in lists]
    actions = pl.concat_list([pl.col(f"{target}_action") for target in lists])
    return (
        merged.with_columns(
            pl.sum_horizontal(rank.is_not_null() for rank in ranks).cast(pl.Int8).alias("n_lists"),
            _distinct(actions).alias("suggested_actions"),
            pl.min_horizontal(ranks).alias("_best"),
        )
        .sort(["icb_code", "_best", "n_lists", "pseudonym"], descending=[False, False, True, False])
        .with_columns((pl.int_range(pl.len()).over("icb_code") + 1).cast(pl.Int64).alias("rank"))
        .select(
            *PERSON_COLUMNS[:3],
            "rank",
            *PERSON_COLUMNS[3:],
            "n_lists",
            pl.exclude(*PERSON_COLUMNS, "rank", "n_lists", "_best"),
        )
    )


def check_file_names(icb_codes: list[str], *, target: str) -> None:
    """Every ICB code must be safe as a file name (it names that ICB's CSV).

    Raises
    ------
    ContractError
        Naming the first code that is not.
    """
    bad = [code for code in icb_codes if not _SAFE_FILE_NAME.match(code)]
    if bad:
        raise ContractError(
            f"features/features.parquet: icb_code {bad[0]!r} cannot name a file ({target})"
        )


def spreadsheet_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Neutralise text cells a spreadsheet would run as a formula (OWASP CSV injection advice).

    A second line of defence behind the contract's identifier rules: every text cell starting
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with ``'``, so
    Excel and LibreOffice show it as text. Other cells and non-text columns are unchanged.

    Examples
    --------
    >>> spreadsheet_safe(pl.DataFrame({"a": ["=1+1", "Y1", None]}))["a"].to_list()
    ["'=1+1", 'Y1', None]
    """
    text = [
        name
        for name, dtype in frame.schema.items()
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    ]
    return frame.with_columns(_neutralised(name) for name in text)


def _neutralised(name: str) -> pl.Expr:
    cell = pl.col(name).cast(pl.String)
    quoted = pl.lit("'") + cell
    return pl.when(cell.str.contains(FORMULA_START)).then(quoted).otherwise(cell).alias(name)


def write_people_csv(frame: pl.DataFrame, target: Path) -> Path:
    """Write a list of people as a spreadsheet-safe CSV (:func:`spreadsheet_safe`), atomically.

    The one writer of CSVs about people: risk scores to ``RISK_SCORE_DECIMALS`` decimals,
    nulls as empty cells.
    """
    with atomic_path(target) as tmp:
        spreadsheet_safe(frame).write_csv(tmp, float_precision=RISK_SCORE_DECIMALS, null_value="")
    return target


def _distinct(items: pl.Expr) -> pl.Expr:
    """A list column's distinct non-null strings, in order, joined by ``"; "``."""
    return items.list.drop_nulls().list.unique(maintain_order=True).list.join("; ")
