"""NHS statistical disclosure control for published aggregates.

Counts of 1-7 are shown as ``'*'``; every other count is rounded to the nearest 5 (0 stays 0).
A rate whose numerator or denominator is suppressed is suppressed too. Everything under
``reports/`` and everything logged to MLflow goes through these functions.
"""

from __future__ import annotations

import math
from typing import Final

import polars as pl

SUPPRESSED: Final = "*"
SUPPRESS_BELOW: Final = 8
ROUND_TO: Final = 5


def is_suppressed(count: int | None, *, suppress_below: int = SUPPRESS_BELOW) -> bool:
    """True when a count of people must not be published (1 to ``suppress_below - 1``)."""
    return count is not None and 0 < count < suppress_below


def round_count(
    count: int | None, *, suppress_below: int = SUPPRESS_BELOW, round_to: int = ROUND_TO
) -> int | str | None:
    """A publishable count: ``'*'`` for 1-7, else rounded to the nearest 5 (halves round up)."""
    if count is None:
        return None
    if is_suppressed(count, suppress_below=suppress_below):
        return SUPPRESSED
    return int(math.floor(count / round_to + 0.5) * round_to)


def publish_rate(
    numerator: int | None,
    denominator: int | None,
    rate: float | None,
    *,
    suppress_below: int = SUPPRESS_BELOW,
) -> float | str | None:
    """A rate is published only when neither its numerator nor its denominator is suppressed."""
    if is_suppressed(numerator, suppress_below=suppress_below) or is_suppressed(
        denominator, suppress_below=suppress_below
    ):
        return SUPPRESSED
    return rate


def round_count_expr(
    count: pl.Expr, *, suppress_below: int = SUPPRESS_BELOW, round_to: int = ROUND_TO
) -> pl.Expr:
    """Vectorised :func:`round_count`: returns a String column ('*' or the rounded count)."""
    rounded = ((count.cast(pl.Float64) / round_to + 0.5).floor() * round_to).cast(pl.Int64)
    return (
        pl.when(count.is_null())
        .then(pl.lit(None, dtype=pl.String))
        .when((count > 0) & (count < suppress_below))
        .then(pl.lit(SUPPRESSED))
        .otherwise(rounded.cast(pl.String))
    )


def suppressed_mask_expr(count: pl.Expr, *, suppress_below: int = SUPPRESS_BELOW) -> pl.Expr:
    """True where a count would be suppressed."""
    return (count > 0) & (count < suppress_below)
