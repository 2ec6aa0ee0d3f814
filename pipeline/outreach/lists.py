"""Outreach lists: who is contacted, under which pseudonym, in which order.

Each capacity unit (``pipeline.selection``: the whole cohort, an ICB or a practice) contributes
its top ``list_size`` people by priority in the pipeline's one order
(:func:`pipeline.selection.priority_order`: ties by ``risk_rank``, whose own ties follow a
seeded per-person key), so the lists select exactly the people the audit does, and the same
inputs and secret give byte-identical lists. Ranks count from 1 within each ICB's list.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import polars as pl

from pipeline import selection
from pipeline.errors import ContractError
from pipeline.io import atomic_path
from pipeline.pseudonyms import pseudonymise
from pipeline.selection import CapacityMode

__all__ = [
    "OUTREACH_COLUMNS",
    "RISK_SCORE_DECIMALS",
    "check_file_names",
    "flag_selected",
    "list_rows",
    "select_outreach",
    "spreadsheet_safe",
    "write_people_csv",
]

OUTREACH_COLUMNS: Final = (
    "pseudonym",
    "practice_id",
    "icb_code",
    "rank",
    "risk_score",
    "risk_tier",
    "reason_1",
    "reason_2",
    "reason_3",
    "suggested_action",
)
"""The columns of every outreach CSV and parquet, in order. Nothing else leaves the stage."""

RISK_SCORE_DECIMALS: Final = 4
FORMULA_START: Final = r"^[=+\-@\t\r]"
"""A text cell starting with one of ``= + - @``, tab or carriage return is run as a formula by
spreadsheets (OWASP, "CSV Injection"); such cells get a leading single quote."""
_SAFE_FILE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def select_outreach(
    cohort: pl.LazyFrame,
    capacity: pl.DataFrame,
    *,
    capacity_mode: CapacityMode,
    key: bytes,
) -> pl.DataFrame:
    """The people to contact: the top of each capacity unit by priority, ties by ``risk_rank``
    (:func:`pipeline.selection.priority_order`).

    Only the selected people are pseudonymised: the HMAC runs on ``capacity`` rows, not the
    cohort.

    Parameters
    ----------
    cohort
        With ``person_id``, ``priority``, ``risk_rank``, ``icb_code``, ``practice_id`` and the
        scores.
    capacity
        From :func:`pipeline.selection.list_sizes`.
    capacity_mode
        Which unit the capacity applies to.
    key
        The pseudonymisation secret.

    Returns
    -------
    pl.DataFrame
        The selected rows with ``pseudonym`` and ``rank`` (1 = contact first within the ICB list),
        sorted by ``icb_code``, ``rank``.
    """
    unit = selection.unit_column(capacity_mode)
    order = selection.priority_order(pl.col("priority"))
    candidates = (
        cohort.with_columns(selection.unit_expr(capacity_mode), order.alias("_order"))
        .join(capacity.lazy().select("unit", "list_size"), on="unit", how="left")
        .filter(
            (pl.col("_order") if unit is None else pl.col("_order").rank("ordinal").over("unit"))
            <= pl.col("list_size")
        )
        .collect()
    )
    candidates = candidates.with_columns(pseudonymise(candidates["person_id"], key))
    # Eager from here: the ICB ranks rely on row order.
    return (
        candidates.sort(["icb_code", "_order"])
        .with_columns((pl.int_range(pl.len()).over("icb_code") + 1).cast(pl.Int64).alias("rank"))
        .drop("unit", "list_size", "_order")
    )


def flag_selected(cohort: pl.DataFrame, selected: pl.DataFrame) -> pl.DataFrame:
    """The cohort with a boolean ``selected`` (for the summary)."""
    flags = selected.select("person_id", pl.lit(True).alias("selected"))
    # Cohort order kept: the summary's float sums then add up in the same order on every run.
    return cohort.join(flags, on="person_id", how="left", maintain_order="left").with_columns(
        pl.col("selected").fill_null(False)
    )


def list_rows(explained: pl.DataFrame) -> pl.DataFrame:
    """The published columns (``OUTREACH_COLUMNS``) of selected people with their reasons."""
    return explained.with_columns(pl.col("risk_score").round(RISK_SCORE_DECIMALS)).select(
        OUTREACH_COLUMNS
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
