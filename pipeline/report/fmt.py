"""Every number the report shows passes through here: disclosure control, then formatting.

Counts are re-published with :mod:`pipeline.disclosure` (idempotent on counts that upstream
stages already published); a rate beside a suppressed count becomes ``'*'``. Table cells carry
the class the scanner checks: ``n`` for counts, ``r`` for rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

from pipeline.disclosure import SUPPRESSED, Rule

MISSING: Final = "–"

CellKind = Literal["t", "n", "r"]


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, its kind (for the scanner), a sort key and an optional style."""

    text: str
    kind: CellKind = "t"
    sort: str = ""
    style: str = ""
    title: str = ""
    of: str = ""
    """For a rate whose counts sit in other columns: those published counts (the scanner checks
    that a rate beside a '*' count is '*')."""


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def to_float(value: object) -> float:
    """A numeric Polars scalar (``Series.max()``, ``.mean()`` ...) as a float.

    Polars types those as any Python literal or None; a numeric column gives an int or float.

    >>> to_float(3)
    3.0
    """
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def count_text(value: Any, sdc: Rule) -> str:
    """``'*'``, ``'–'`` (not available) or the rounded count with thousands separators."""
    published = sdc.republish(value)
    if published is None:
        return MISSING
    if published == SUPPRESSED:
        return SUPPRESSED
    return f"{int(published):,}"


def pct_text(value: Any, *, digits: int = 1) -> str:
    """A share 0-1 as a percentage; ``'*'`` stays ``'*'``."""
    if value == SUPPRESSED:
        return SUPPRESSED
    if not is_number(value):
        return MISSING
    return f"{100 * float(value):.{digits}f}%"


def num_text(value: Any, *, digits: int = 2, signed: bool = False) -> str:
    """A plain number (ratio, AUROC, slope); ``'*'`` stays ``'*'``."""
    if value == SUPPRESSED:
        return SUPPRESSED
    if not is_number(value):
        return MISSING
    text = f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"
    return text.replace("-0.", "0.") if float(text) == 0 else text  # no "-0.0"


def ci_text(low: Any, high: Any, *, percent: bool, digits: int = 1) -> str:
    """``'a–b'`` for a CI (``'a to b'`` when a bound is negative), empty when either bound is
    missing, ``'*'`` when suppressed."""
    if SUPPRESSED in (low, high):
        return SUPPRESSED
    if not (is_number(low) and is_number(high)):
        return ""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    a, b = (f"{scale * float(v):.{digits}f}".replace("-", "\u2212") for v in (low, high))
    if float(low) < 0 or float(high) < 0:
        return f"{a}{unit} to {b}{unit}"
    return f"{a}–{b}{unit}"


def count_cell(value: Any, sdc: Rule) -> Cell:
    """A count cell, disclosure-controlled."""
    text = count_text(value, sdc)
    sort = text.replace(",", "") if text not in {SUPPRESSED, MISSING} else "-1"
    return Cell(text, "n", sort)


def rate_cell(
    value: Any,
    low: Any = None,
    high: Any = None,
    *,
    percent: bool = True,
    digits: int | None = None,
    suppressed: bool = False,
    style: str = "",
    of: tuple[Any, ...] = (),
) -> Cell:
    """A rate (with its CI in a second line) or ``'*'`` when any of its counts is suppressed.

    ``of``: the published counts it is computed from, when they are not the row's first count;
    any ``'*'`` among them suppresses the rate.
    """
    basis = " ".join(SUPPRESSED if c == SUPPRESSED else "ok" for c in of)
    if suppressed or value == SUPPRESSED or SUPPRESSED in of:
        return Cell(SUPPRESSED, "r", "-1", of=basis)
    if not is_number(value):
        return Cell(MISSING, "r", "-1", of=basis)
    digits = digits if digits is not None else (1 if percent else 2)
    text = pct_text(value, digits=digits) if percent else num_text(value, digits=digits)
    text = text.replace("-", "\u2212")  # a true minus sign
    interval = ci_text(low, high, percent=percent, digits=digits)
    return Cell(text, "r", f"{float(value):.6f}", style, interval, basis)


def text_cell(text: Any, *, sort: str = "") -> Cell:
    """A label cell."""
    return Cell(str(text) if text is not None else MISSING, "t", sort or str(text or ""))


def ratio_style(ratio: Any, *, low: float, high: float) -> str:
    """Heat shading of a ratio cell: blue below the fair band, orange above, none inside.

    The shade is redundant with the printed value (and a marker), so it never has to be read.
    """
    if not is_number(ratio) or ratio <= 0:
        return ""
    if low <= ratio <= high:
        return ""
    strength = min(abs(math.log(float(ratio))) / math.log(2.0), 1.0)
    alpha = 0.18 + 0.5 * strength
    colour = "0,114,178" if ratio < low else "213,94,0"
    return f"background:rgba({colour},{alpha:.2f})"
