"""What the audit flags, against what, and how multiple comparisons are controlled.

In need-based targeting a list *should* select more people where there is more need, so a
difference in selection rate is context, not inequity. The audit flags three things
(docs/audit_tables.md, *Comparators and flags*):

- **calibration** (``oe_ratio``), every group against 1: under-prediction when the O/E interval
  is above 1 and O/E >= ``oe_material`` (the model expects fewer events than happen, so the group
  is ranked too low); over-prediction when the interval is below 1 and O/E <= 1 / ``oe_material``;
- **equal opportunity** (``tpr``, the share of people with the outcome that the list reaches)
  against the reference group, in the disadvantaging direction only: ratio below the fair range
  with an interval excluding 1 ("fewer cases reached"). A group reached *more* than the
  reference is context, not inequity: a calibrated score cut at one threshold reaches a larger
  share of the cases wherever risk is concentrated at the top (older, more deprived groups),
  because calibration and equal TPR cannot both hold when groups' risk differs (Kleinberg,
  Mullainathan & Raghavan 2016; Chouldechova 2017). For dimensions that are clinical risk
  factors (``audit.risk_factor_dimensions``, age by default) reach follows risk in both
  directions, so TPR is never flagged there. FNR is TPR's complement: the same finding, never
  flagged twice;
- **need reached** (``need_gaps``): true need (or recorded illness) at the same score above the
  reference group's.

Geographies are compared with the population value on funnel plots instead
(:mod:`pipeline.audit.funnel`). A metric is gated by its own denominator (events for TPR and
O/E). Within each dimension the p-values of the comparisons are adjusted by Benjamini-Hochberg
(statsmodels ``multipletests(method="fdr_bh")``), and a comparison is flagged only when its
q-value is below ``audit.fdr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
import polars as pl
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pipeline.metrics import z_value

Comparator = Literal["reference group", "1 (calibration)", "population (funnel)"]
FLAG_COMPARATORS: Final[dict[str, Comparator]] = {
    "tpr": "reference group",
    "oe_ratio": "1 (calibration)",
}
"""The flagged metrics and what each is compared with (outside the funnel dimensions)."""
NOT_A_REFERENCE: Final = ("Not recorded", "Unknown")
"""Group labels (or label prefixes of the intersection) never used as a reference group."""


def may_be_reference(label: str) -> bool:
    """False for "Not recorded" / "Unknown" groups (and intersections that start with them)."""
    return not any(label == bad or label.startswith(f"{bad},") for bad in NOT_A_REFERENCE)


def reference_index(
    groups: Sequence[str], sizes: np.ndarray, values: np.ndarray, *, preferred: str
) -> int:
    """The reference group of one metric: ``preferred`` when its value is defined and non-zero,
    else the largest recorded group whose value is (else ``preferred``: comparisons undefined).

    A reference whose metric is 0 or undefined would make every ratio infinite or undefined.
    """
    usable = np.isfinite(values) & (values != 0)
    usable &= np.array([may_be_reference(g) for g in groups], dtype=bool)
    index = list(groups).index(preferred)
    if usable[index]:
        return index
    if not usable.any():
        return index
    return int(np.argmax(np.where(usable, sizes, -1.0)))


def preferred_reference(groups: Sequence[str], sizes: np.ndarray, preferred: str | None) -> str:
    """``preferred`` when present, else the largest recorded group (ties: first in order)."""
    if preferred is not None and preferred in groups:
        return preferred
    recorded = np.array([may_be_reference(g) for g in groups], dtype=bool)
    if not recorded.any():
        recorded[:] = True
    return groups[int(np.argmax(np.where(recorded, sizes, -1.0)))]


def p_from_interval(
    estimate: np.ndarray, low: np.ndarray, high: np.ndarray, *, confidence: float
) -> np.ndarray:
    """Two-sided p-value of a ratio against 1 from its interval, on the log scale (Altman &
    Bland, BMJ 2011;343:d2090); NaN where the interval is missing or not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        se = (np.log(high) - np.log(low)) / (2.0 * z_value(confidence))
        z = np.log(estimate) / se
        p = 2.0 * stats.norm.sf(np.abs(z))
    ok = np.isfinite(p) & (low > 0) & (se > 0)
    return np.where(ok, p, np.nan)


def bh_q_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite ``p_values`` (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    present = np.isfinite(p)
    if present.any():
        q[present] = multipletests(p[present], method="fdr_bh")[1]
    return q


def with_q_values(frame: pl.DataFrame, *, over: Sequence[str]) -> pl.DataFrame:
    """Add ``q_value``: ``p_value`` adjusted by Benjamini-Hochberg within each ``over`` group
    (null p-values are not comparisons and get a null q-value)."""
    if frame.is_empty():
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("q_value"))
    keyed = frame.with_row_index("_row")
    parts = [
        part.select("_row", pl.Series("q_value", bh_q_values(part["p_value"].to_numpy())))
        for _, part in keyed.group_by(list(over), maintain_order=True)
    ]
    q = pl.concat(parts).with_columns(pl.col("q_value").fill_nan(None))
    return keyed.join(q, on="_row", how="left").sort("_row").drop("_row")


def material_expr(
    *, fair_low: float, oe_material: float, risk_factor_dimensions: Sequence[str] = ()
) -> pl.Expr:
    """Whether a row's difference is large enough to act on, in the direction that leaves a
    group under-served: TPR ratio below the fair range (outside ``risk_factor_dimensions``);
    O/E at least ``oe_material`` with its interval above 1, or at most its inverse with the
    interval below 1 (both directions: either mis-ranks the group)."""
    tpr = (
        (pl.col("metric") == "tpr")
        & (pl.col("ratio") < fair_low)
        & ~pl.col("dimension").is_in(list(risk_factor_dimensions))
    )
    under = (pl.col("value") >= oe_material) & (pl.col("ci_low") > 1.0)
    over = (pl.col("value") <= 1.0 / oe_material) & (pl.col("ci_high") < 1.0)
    oe = (pl.col("metric") == "oe_ratio") & (under | over)
    return (tpr | oe).fill_null(False)


def reason_expr() -> pl.Expr:
    """The finding a flagged row stands for, in words."""
    against_one = pl.col("comparator") == "1 (calibration)"
    higher = pl.when(against_one).then(pl.col("value")).otherwise(pl.col("ratio")) > 1.0
    return (
        pl.when(pl.col("metric") == "oe_ratio")
        .then(pl.when(higher).then(pl.lit("under-prediction")).otherwise(pl.lit("over-prediction")))
        .when(pl.col("metric") == "tpr")
        .then(
            pl.when(higher)
            .then(pl.lit("more cases reached"))
            .otherwise(pl.lit("fewer cases reached"))
        )
        .otherwise(None)
    )
