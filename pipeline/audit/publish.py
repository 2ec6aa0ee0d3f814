"""Disclosure control of the audit's tables before anything leaves ``data/``.

Rules (COMMON.md / DESIGN.md): a column or key holding a count of people or events is named
``n`` / ``n_*`` / ``*_count`` and carries ``pipeline.disclosure.round_count`` values (0, a
multiple of 5, or ``"*"`` for 1-7). A value computed from a suppressed count is ``"*"`` in JSON;
in parquet (typed columns) it is null with ``suppressed = true`` beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from pipeline.disclosure import (
    SUPPRESSED,
    is_suppressed,
    round_count,
    round_count_expr,
    suppressed_mask_expr,
)

DERIVED_FLAGS = frozenset({"outside_fair_range", "significant", "flag"})


def is_count_name(name: str) -> bool:
    """True for the names the disclosure convention reserves for counts."""
    return name == "n" or name.startswith("n_") or name.endswith("_count")


def suppress_columns(
    frame: pl.DataFrame,
    *,
    values: Sequence[str],
    counts: Sequence[str],
    flag: str = "suppressed",
) -> pl.DataFrame:
    """Null ``values`` on rows where any raw count in ``counts`` is 1-7 and record that in the
    boolean column ``flag``. The raw ``counts`` columns are left for the caller to round or
    drop."""
    mask = pl.any_horizontal(suppressed_mask_expr(pl.col(c)).fill_null(False) for c in counts)
    return frame.with_columns(
        *(pl.when(mask).then(None).otherwise(pl.col(v)).alias(v) for v in values),
        mask.alias(flag),
    )


def round_counts(frame: pl.DataFrame, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """Disclosure-round every count column (String: ``"*"`` or the rounded number)."""
    names = [c for c in (columns or frame.columns) if is_count_name(c)]
    return frame.with_columns(round_count_expr(pl.col(c)).alias(c) for c in names)


def json_value(value: Any) -> Any:
    """NaN/inf -> None; numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_count(count: int | float | None) -> int | str | None:
    """A count for JSON: disclosure-rounded."""
    if count is None:
        return None
    return round_count(round(float(count)))


def json_rate(value: Any, *counts: int | float | None) -> Any:
    """A value for JSON: ``"*"`` when any of ``counts`` is suppressed."""
    if any(c is not None and is_suppressed(round(float(c))) for c in counts):
        return SUPPRESSED
    return json_value(value)
