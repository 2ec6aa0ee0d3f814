"""NHS statistical disclosure control for published aggregates: one :class:`Rule`.

By default counts of 1-7 are shown as ``'*'`` and every other count is rounded to the nearest 5
(0 stays 0); a rate whose numerator or denominator is suppressed is suppressed too. A share or
rate published beside counts is derived from their *published* values (:meth:`Rule.share`), so it
cannot undo the rounding, and within a dimension whose total is published a lone suppressed row
takes the next smallest with it (:meth:`Rule.secondary`, the NHS convention), so the rows cannot
be differenced against the total. The rule in
force is the ``disclosure`` section of ``params.yaml`` (``params.disclosure``), passed to every
function that publishes (under ``reports/``, in metrics and in MLflow) and to the report's scanner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Final

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

SUPPRESSED: Final = "*"
SUPPRESS_BELOW: Final = 8
ROUND_TO: Final = 5


class Rule(BaseModel):
    """The disclosure rule in force: params ``disclosure`` (one section for every stage and the
    report's scanner). Counts of 1 to ``suppress_below - 1`` are shown as ``'*'``, every other
    count is rounded to the nearest ``round_to`` (halves up; 0 stays 0).

    >>> rule = Rule()
    >>> rule.count(6), rule.count(12), rule.count(0)
    ('*', 10, 0)
    >>> rule.rate(40, 6, 0.15)
    '*'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    suppress_below: Annotated[int, Field(ge=1, le=1_000, strict=True)] = SUPPRESS_BELOW
    round_to: Annotated[int, Field(ge=1, le=1_000, strict=True)] = ROUND_TO

    def is_suppressed(self, count: int | None) -> bool:
        """True when a count of people must not be published."""
        return count is not None and 0 < count < self.suppress_below

    def count(self, count: int | None) -> int | str | None:
        """A publishable count: ``'*'`` when suppressed, else rounded."""
        if count is None:
            return None
        if self.is_suppressed(count):
            return SUPPRESSED
        return int(math.floor(count / self.round_to + 0.5) * self.round_to)

    def rate(
        self, numerator: int | None, denominator: int | None, rate: float | None
    ) -> float | str | None:
        """A rate is published only when neither its numerator nor its denominator is
        suppressed."""
        if self.is_suppressed(numerator) or self.is_suppressed(denominator):
            return SUPPRESSED
        return rate

    def share(self, numerator: int | None, denominator: int | None) -> float | str | None:
        """A share (or rate) published beside two counts, derived from their published values:
        ``'*'`` when either is suppressed, None when the published denominator is 0 or a count
        is missing, else ``published numerator / published denominator``. Multiplying it by
        the published denominator gives back the published numerator, never the exact one.

        >>> Rule().share(61, 1240), Rule().share(6, 1240), Rule().share(0, 2)
        (0.04838709677419355, '*', None)
        """
        return self.share_of_published(self.count(numerator), self.count(denominator))

    @staticmethod
    def share_of_published(numerator: object, denominator: object) -> float | str | None:
        """:meth:`share` of two counts already published (``'*'``, a rounded int or None), e.g.
        after complementary suppression hid one of them."""
        if SUPPRESSED in (numerator, denominator):
            return SUPPRESSED
        if not isinstance(numerator, int) or not isinstance(denominator, int) or denominator == 0:
            return None
        return numerator / denominator

    def rounded_expr(self, count: pl.Expr) -> pl.Expr:
        """Vectorised :meth:`count` as Int64: the rounded count, null where suppressed."""
        rounded = ((count.cast(pl.Float64) / self.round_to + 0.5).floor() * self.round_to).cast(
            pl.Int64
        )
        return pl.when(self.suppressed_expr(count)).then(None).otherwise(rounded)

    def share_expr(self, numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
        """Vectorised :meth:`share` (null where it is ``'*'`` or None)."""
        num, den = self.rounded_expr(numerator), self.rounded_expr(denominator)
        return pl.when(den > 0).then(num / den)

    def secondary(self, counts: Sequence[int | None]) -> list[bool]:
        """Which rows of one dimension to hide when the dimension's total is published: the
        suppressed ones (1 to ``suppress_below - 1``) and, when exactly one row is, the next
        smallest non-zero row too (complementary suppression, the NHS convention), so the
        hidden row cannot be recovered as the total minus the others.

        >>> Rule().secondary([120, 6, 40, 0, 55])
        [False, True, True, False, False]
        """
        hidden = [self.is_suppressed(c) for c in counts]
        if sum(hidden) == 1:
            shown = [(c, i) for i, c in enumerate(counts) if c and not hidden[i]]
            if shown:
                hidden[min(shown)[1]] = True
        return hidden

    def secondary_expr(
        self, count: pl.Expr, *, over: str | Sequence[str], tie: str = "group"
    ) -> pl.Expr:
        """Vectorised :meth:`secondary`: True where ``count`` is hidden, per ``over`` group
        (ties between equal smallest counts broken by the column ``tie``, so every table
        holding the same counts hides the same rows)."""
        primary = self.suppressed_expr(count).fill_null(False)
        candidate = ~primary & (count.fill_null(0) > 0)
        smallest = pl.struct(pl.when(candidate).then(count), pl.col(tie)).rank("ordinal")
        first = smallest == pl.when(candidate).then(smallest).min()
        return primary | (candidate & first.over(over) & (primary.sum().over(over) == 1))

    def hidden_count_expr(self, count: pl.Expr, hidden: pl.Expr) -> pl.Expr:
        """:meth:`count_expr`, and ``'*'`` where ``hidden`` (secondary suppression)."""
        return (
            pl.when(hidden.fill_null(False) & count.is_not_null())
            .then(pl.lit(SUPPRESSED))
            .otherwise(self.count_expr(count))
            .alias(count.meta.output_name(raise_if_undetermined=False) or "count")
        )

    def count_expr(self, count: pl.Expr) -> pl.Expr:
        """Vectorised :meth:`count`: a String column (``'*'`` or the rounded count)."""
        rounded = (count.cast(pl.Float64) / self.round_to + 0.5).floor() * self.round_to
        return (
            pl.when(count.is_null())
            .then(pl.lit(None, dtype=pl.String))
            .when(self.suppressed_expr(count))
            .then(pl.lit(SUPPRESSED))
            .otherwise(rounded.cast(pl.Int64).cast(pl.String))
            .alias(count.meta.output_name(raise_if_undetermined=False) or "count")
        )

    def suppressed_expr(self, count: pl.Expr) -> pl.Expr:
        """True where a count would be suppressed."""
        return (count > 0) & (count < self.suppress_below)

    def is_published(self, value: object) -> bool:
        """True when ``value`` is a publishable count: None, 0, ``'*'`` or a multiple of
        ``round_to`` (ints, integral floats and numeric strings, as stages publish them)."""
        if value is None or value == SUPPRESSED:
            return True
        if isinstance(value, bool):
            return False
        if isinstance(value, str):
            text = value.replace(",", "").strip()
            if not text.isdigit():
                return False
            value = int(text)
        if isinstance(value, float):
            if not value.is_integer():
                return False
            value = int(value)
        return isinstance(value, int) and value >= 0 and value % self.round_to == 0

    def republish(self, value: object) -> int | str | None:
        """A count that may already be published (``'*'``, a rounded int or numeric string) or
        raw -> its published form. Idempotent: publishing a published count changes nothing."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if value == SUPPRESSED:
            return SUPPRESSED
        if isinstance(value, str):
            value = float(value.replace(",", ""))
        if isinstance(value, float):
            value = round(value)
        if not isinstance(value, int):
            raise TypeError(f"not a count: {value!r}")
        return self.count(value)
