"""Disclosure control of the audit's tables before anything leaves ``data/``.

Each ``*_table`` function turns one raw table of :func:`pipeline.audit.audit_tables` into the
published table of :data:`pipeline.contract.AUDIT_TABLES` (layouts: docs/audit_tables.md).
Counts (named by :func:`pipeline.contract.is_count_name`) carry the disclosure rule's published
values as strings (``"*"`` when suppressed, :meth:`pipeline.disclosure.Rule.count_expr`); a value
computed from a suppressed count is null with a boolean ``suppressed`` flag beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from pipeline.audit.cells import COMPARISON_COLUMNS
from pipeline.contract import PublishedCountValue, is_count_name
from pipeline.disclosure import SUPPRESSED, Rule

COMPARISON_VALUES = (*COMPARISON_COLUMNS, "outside_fair_range", "significant", "flag")
"""Group-metric columns that compare a group with its reference group."""
_RAW_COUNTS = ("numerator_raw", "denominator_raw", "complement_raw", "group_n_raw")
NEED_VALUES = (
    "need_gap",
    "need_gap_ci_low",
    "need_gap_ci_high",
    "need_ratio",
    "need_ratio_ci_low",
    "need_ratio_ci_high",
    "mean_need",
    "disadvantaged",
    "significant",
)
"""Label-choice values computed from a group's and its reference's ``n``."""
CUTOFF_VALUES = ("cutoff_gap", "cutoff_gap_ci_low", "cutoff_gap_ci_high", "mean_need_selected")
"""Label-choice values computed from a group's and its reference's ``n_selected``."""


def suppress_columns(
    frame: pl.DataFrame,
    *,
    values: Sequence[str],
    counts: Sequence[str],
    rule: Rule,
    flag: str = "suppressed",
) -> pl.DataFrame:
    """Null ``values`` on rows where any raw count in ``counts`` is 1-7 and record that in the
    boolean column ``flag``. The raw ``counts`` columns are left for the caller to round or
    drop."""
    mask = pl.any_horizontal(rule.suppressed_expr(pl.col(c)).fill_null(False) for c in counts)
    return frame.with_columns(
        *(pl.when(mask).then(None).otherwise(pl.col(v)).alias(v) for v in values),
        mask.alias(flag),
    )


def round_counts(
    frame: pl.DataFrame, *, rule: Rule, columns: Iterable[str] | None = None
) -> pl.DataFrame:
    """Disclosure-round every count column (String: ``"*"`` or the rounded number)."""
    names = [c for c in (columns or frame.columns) if is_count_name(c)]
    return frame.with_columns(rule.count_expr(pl.col(c)).alias(c) for c in names)


def _with_reference(
    frame: pl.DataFrame, keys: Sequence[str], columns: Sequence[str]
) -> pl.DataFrame:
    """Carry the reference group's raw ``columns`` onto every row as ``ref_<column>`` (a
    comparison with a suppressed reference is suppressed too)."""
    reference = frame.filter(pl.col("is_reference")).select(
        *keys, *(pl.col(c).alias(f"ref_{c}") for c in columns)
    )
    return frame.join(reference, on=list(keys), how="left", maintain_order="left")


def group_counts_table(groups: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw group counts -> ``groups.parquet``."""
    note = pl.when(pl.col("stable")).then(None).otherwise(pl.lit("small group")).alias("note")
    return round_counts(groups.with_columns(note), rule=rule)


def group_metrics_table(metrics: pl.DataFrame, groups: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw group metrics (+ raw group counts) -> ``group_metrics.parquet``.

    The value and CI are suppressed by the metric's own counts; comparisons also by the
    reference group's. Raw counts are dropped (only rounded ones are published).
    """
    refs = [f"ref_{c}" for c in _RAW_COUNTS]
    compared = suppress_columns(
        suppress_columns(
            _with_reference(metrics, ["dimension", "metric"], _RAW_COUNTS),
            values=["value", "ci_low", "ci_high"],
            counts=_RAW_COUNTS,
            rule=rule,
        ),
        values=COMPARISON_VALUES,
        counts=[*_RAW_COUNTS, *refs],
        rule=rule,
        flag="comparison_suppressed",
    )
    sizes = groups.select("dimension", "group", "n", "n_events", "n_selected")
    flagged = ~pl.col("is_reference") & pl.coalesce("flag", "outside_fair_range")
    return round_counts(
        compared.join(sizes, on=["dimension", "group"], how="left", maintain_order="left")
        .rename({"numerator_raw": "n_numerator", "denominator_raw": "n_denominator"})
        .with_columns(flagged.fill_null(False).alias("flagged"))
        .drop("complement_raw", "group_n_raw", *refs),
        rule=rule,
    )


def need_gaps_table(gaps: pl.DataFrame, *, min_group_size: int, rule: Rule) -> pl.DataFrame:
    """Raw need gaps -> ``need_gaps.parquet``: need values suppressed by the group's and the
    reference's ``n``, cut-off values by their ``n_selected``."""
    keyed = _with_reference(gaps, ["dimension", "need_measure"], ["n", "n_selected"])
    return round_counts(
        suppress_columns(
            suppress_columns(keyed, values=NEED_VALUES, counts=["n", "ref_n"], rule=rule),
            values=CUTOFF_VALUES,
            counts=["n_selected", "ref_n_selected"],
            rule=rule,
            flag="cutoff_suppressed",
        )
        .with_columns((pl.col("n").fill_null(0) >= min_group_size).alias("stable"))
        .drop("ref_n", "ref_n_selected"),
        rule=rule,
    )


def need_curves_table(curves: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw need-by-score curves -> ``need_by_score.parquet``."""
    hidden = suppress_columns(curves, values=["mean_need", "sd_need"], counts=["n"], rule=rule)
    return round_counts(hidden, rule=rule)


def selection_shares_table(shares: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw selection shares -> ``selection_shares.parquet`` (a row's shares are null when any of
    its counts is 1-7)."""
    values = [c for c in shares.columns if c.startswith("share_by_")]
    counts = [c for c in shares.columns if c.startswith("n_selected_by_")]
    return round_counts(
        suppress_columns(shares, values=values, counts=counts, rule=rule), rule=rule
    )


def _share(
    reached: str, total: str, *, rule: Rule, shown: tuple[str, str] | None = None
) -> pl.Expr:
    """``reached / total`` (null for a zero total), null when either count (or the whole-people
    counts ``shown`` beside them) is 1-7."""
    masked = shown or (reached, total)
    hidden = pl.any_horizontal(rule.suppressed_expr(pl.col(c)).fill_null(False) for c in masked)
    share = pl.when(pl.col(total) > 0).then(pl.col(reached) / pl.col(total))
    return pl.when(hidden).then(None).otherwise(share)


def policy_tradeoffs_table(summary: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw per-policy totals -> ``mitigation.parquet`` (shares from the raw counts)."""
    expected = [c for c in summary.columns if c.startswith("expected_")]
    # expected events are float sums: published as whole people, shares from the exact sums
    whole = summary.with_columns(
        pl.col(c).round(0).cast(pl.Int64).alias(f"n_{c}") for c in expected
    )
    shares = [
        _share("n_events_reached", "n_events", rule=rule).alias("share_of_events_reached"),
        _share("n_cases_reached", "n_cases", rule=rule).alias("share_of_cases_reached"),
    ]
    if expected:
        shown = ("n_expected_true_events_reached", "n_expected_true_events")
        shares.append(
            _share(
                "expected_true_events_reached", "expected_true_events", rule=rule, shown=shown
            ).alias("share_of_true_events_reached")
        )
    return round_counts(whole.with_columns(shares).drop(expected), rule=rule)


def policy_groups_table(by_group: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw policy x group reach -> ``mitigation_by_group.parquet``."""
    missed = [
        (pl.col("n_events") - pl.col("n_events_reached")).alias("_missed"),
        (pl.col("n_cases") - pl.col("n_cases_reached")).alias("_cases_missed"),
    ]
    counts = ["n", "n_selected", "n_events", "n_events_reached", "n_cases", "n_cases_reached"]
    return round_counts(
        suppress_columns(
            by_group.with_columns(missed),
            values=["selection_share", "tpr", "case_tpr"],
            counts=[*counts, "_missed", "_cases_missed"],
            rule=rule,
        ).drop("_missed", "_cases_missed"),
        rule=rule,
    )


def json_value(value: Any) -> Any:
    """NaN/inf -> None; numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_count(count: int | float | None, *, rule: Rule) -> PublishedCountValue:
    """A count for JSON: disclosure-rounded."""
    if count is None:
        return None
    published = rule.count(round(float(count)))
    return SUPPRESSED if isinstance(published, str) else published  # the only string is "*"


def json_rate(value: Any, *counts: int | float | None, rule: Rule) -> Any:
    """A value for JSON: ``"*"`` when any of ``counts`` is suppressed."""
    if any(c is not None and rule.is_suppressed(round(float(c))) for c in counts):
        return SUPPRESSED
    return json_value(value)
