"""Disclosure control of the audit's tables before anything leaves ``data/``.

Each ``*_table`` function turns one raw table of :func:`pipeline.audit.audit_tables` into the
published table of :data:`pipeline.contract.AUDIT_TABLES` (layouts: docs/audit_tables.md).
Counts (named by :func:`pipeline.contract.is_count_name`) carry the disclosure rule's published
values as strings (``"*"`` when suppressed, :meth:`pipeline.disclosure.Rule.count_expr`); a value
computed from a suppressed count is null with a boolean ``suppressed`` flag beside it. Rates and
shares are of the published counts, and a breakdown whose total is published gets complementary
suppression (:meth:`~pipeline.disclosure.Rule.secondary_expr`), so nothing can be differenced
back (docs/audit_tables.md, *Disclosure that survives differencing*).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

import polars as pl

from pipeline import contract
from pipeline.audit.cells import COMPARISON_COLUMNS, PROPORTIONS
from pipeline.contract import GROUP_COUNTS, METRIC_COUNTS, PublishedCountValue, is_count_name
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.metrics import wilson_interval

COMPARISON_VALUES = (*COMPARISON_COLUMNS, "outside_fair_range", "significant", "flag")
"""Group-metric columns that compare a group with its reference group."""
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


def round_counts(
    frame: pl.DataFrame, *, rule: Rule, columns: Iterable[str] | None = None
) -> pl.DataFrame:
    """Disclosure-round every count column not yet published (String: ``"*"`` or the rounded
    number)."""
    names = [
        c
        for c in (columns or frame.columns)
        if is_count_name(c) and frame.schema[c] != contract.PUBLISHED_COUNT
    ]
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


def hide_counts(
    frame: pl.DataFrame, *, counts: Sequence[str], over: Sequence[str], rule: Rule
) -> tuple[pl.DataFrame, pl.Expr]:
    """Publish ``counts`` with complementary suppression within each ``over`` group (whose total
    is published or implied: :meth:`pipeline.disclosure.Rule.secondary_expr`); also the mask
    of rows where any of them is hidden (over the published strings).

    Equal smallest counts are told apart by group, then by a fixed row order (the frame sorted
    on every column), never by the order a parallel group-by or sort happened to produce: that
    order varies with the machine's core count and moved a suppressed cell between runs."""
    first = [c for c in ("group",) if c in frame.columns]
    order = [*first, *(c for c in frame.columns if c not in first)]
    ordered = frame.sort(order, nulls_last=True, maintain_order=True).with_row_index(TIE)
    published = ordered.with_columns(
        rule.hidden_count_expr(pl.col(c), rule.secondary_expr(pl.col(c), over=list(over), tie=TIE))
        for c in counts
    ).drop(TIE)
    return published, hidden_expr(counts)


TIE: Final = "_tie_order"
"""A unique row number, the last tie-break of complementary suppression (:func:`hide_counts`)."""


def hidden_expr(counts: Iterable[str]) -> pl.Expr:
    """True where any of the published count columns ``counts`` is ``'*'``."""
    return pl.any_horizontal((pl.col(c) == SUPPRESSED).fill_null(False) for c in counts)


def published_number(count: str) -> pl.Expr:
    """A published count column (String) as a number (null where ``'*'``)."""
    return pl.col(count).cast(pl.Int64, strict=False)


def published_share(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """A share of two published counts (null for a zero or hidden denominator)."""
    return pl.when(denominator > 0).then(numerator / denominator)


def _hide(frame: pl.DataFrame, values: Sequence[str], mask: pl.Expr, flag: str) -> pl.DataFrame:
    return frame.with_columns(
        *(pl.when(mask).then(None).otherwise(pl.col(v)).alias(v) for v in values),
        mask.alias(flag),
    )


def group_counts_table(groups: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw group counts -> ``groups.parquet`` (complementary suppression within a dimension,
    whose total is the ``overall`` row)."""
    note = pl.when(pl.col("stable")).then(None).otherwise(pl.lit("small group")).alias("note")
    counts = [c for c in GROUP_COUNTS if c in groups.columns]
    published, _ = hide_counts(
        groups.with_columns(note), counts=counts, over=["dimension"], rule=rule
    )
    return round_counts(published, rule=rule)


def _pick(names: pl.Expr) -> pl.Expr:
    """The published group count named by ``names`` on each row."""
    return pl.coalesce(pl.when(names == c).then(pl.col(c)) for c in GROUP_COUNTS)


def _published_wilson(frame: pl.DataFrame, *, confidence: float) -> pl.DataFrame:
    """Wilson intervals of the rows' published ``n_numerator`` / ``n_denominator`` (an
    interval of the exact counts would give them back: it is a function of both)."""
    num = frame["n_numerator"].cast(pl.Int64, strict=False).fill_null(0).to_numpy()
    den = frame["n_denominator"].cast(pl.Int64, strict=False).fill_null(0).to_numpy()
    low, high = wilson_interval(num, den, confidence=confidence)
    wilson = pl.col("ci_method") == "wilson"
    return frame.with_columns(
        pl.when(wilson).then(pl.Series(low)).otherwise("ci_low").fill_nan(None).alias("ci_low"),
        pl.when(wilson).then(pl.Series(high)).otherwise("ci_high").fill_nan(None).alias("ci_high"),
    )


def _compare_with_reference(valued: pl.DataFrame, proportion: pl.Expr) -> pl.DataFrame:
    """A proportion's difference and ratio to its reference group, from the published values
    (other metrics keep the audit's own comparisons); ``_ref_h``: the reference is hidden."""
    reference = valued.filter(pl.col("is_reference")).select(
        "dimension", "metric", pl.col("value").alias("_ref"), pl.col("suppressed").alias("_ref_h")
    )
    compared = valued.join(
        reference, on=["dimension", "metric"], how="left", maintain_order="left"
    ).with_columns(
        pl.when(proportion & ~pl.col("is_reference"))
        .then(pl.col("value") - pl.col("_ref"))
        .otherwise("difference")
        .alias("difference"),
        pl.when(proportion & ~pl.col("is_reference"))
        .then(published_share(pl.col("value"), pl.col("_ref")))
        .otherwise("ratio")
        .alias("ratio"),
    )
    return compared


def group_metrics_table(
    metrics: pl.DataFrame, groups: pl.DataFrame, *, confidence: float, rule: Rule
) -> pl.DataFrame:
    """Raw group metrics + published group counts (``groups.parquet``) ->
    ``group_metrics.parquet``.

    The metric's counts are the published ones; a proportion's value is the share of its
    published counts, its Wilson interval (at ``confidence``) is of those counts, and its
    difference and ratio to the reference are of those values. The
    value and CI are suppressed where the group's n or a count behind the metric is hidden (or
    its complement is 1-7); comparisons also by the reference group's. Raw counts are dropped.
    """
    numerator = {m: c[0] for m, c in METRIC_COUNTS.items()}
    denominator = {m: c[1] for m, c in METRIC_COUNTS.items()}
    proportion = pl.col("metric").is_in(list(PROPORTIONS))
    joined = metrics.join(
        groups.select("dimension", "group", *GROUP_COUNTS),
        on=["dimension", "group"],
        how="left",
        maintain_order="left",
    ).with_columns(
        _pick(pl.col("metric").replace_strict(numerator, default=None)).alias("n_numerator"),
        _pick(pl.col("metric").replace_strict(denominator, default=None)).alias("n_denominator"),
    )
    hidden = hidden_expr(["n", "n_numerator", "n_denominator"]) | rule.suppressed_expr(
        pl.col("complement_raw")
    ).fill_null(False)
    share = published_share(published_number("n_numerator"), published_number("n_denominator"))
    valued = _hide(
        _published_wilson(
            joined.with_columns(pl.when(proportion).then(share).otherwise("value").alias("value")),
            confidence=confidence,
        ),
        ["value", "ci_low", "ci_high"],
        hidden,
        "suppressed",
    )
    compared = _compare_with_reference(valued, proportion)
    masked = _hide(
        compared,
        COMPARISON_VALUES,
        pl.col("suppressed") | pl.col("_ref_h").fill_null(True),
        "comparison_suppressed",
    )
    flagged = ~pl.col("is_reference") & pl.coalesce("flag", "outside_fair_range")
    return masked.with_columns(flagged.fill_null(False).alias("flagged")).drop(
        "numerator_raw",
        "denominator_raw",
        "complement_raw",
        "group_n_raw",
        "_ref",
        "_ref_h",
        *[c for c in GROUP_COUNTS if c not in ("n", "n_events", "n_selected")],
    )


def need_gaps_table(gaps: pl.DataFrame, *, min_group_size: int, rule: Rule) -> pl.DataFrame:
    """Raw need gaps -> ``need_gaps.parquet``: need values suppressed by the group's and the
    reference's ``n``, cut-off values by their ``n_selected`` (complementary suppression within
    a dimension, as in ``groups.parquet``)."""
    stable = (pl.col("n").fill_null(0) >= min_group_size).alias("stable")
    published, _ = hide_counts(
        gaps.with_columns(stable),
        counts=["n", "n_selected"],
        over=["dimension", "need_measure"],
        rule=rule,
    )
    keyed = _with_reference(published, ["dimension", "need_measure"], ["n", "n_selected"])
    need_hidden = hidden_expr(["n"]) | (pl.col("ref_n") == SUPPRESSED).fill_null(True)
    cut_hidden = hidden_expr(["n_selected"]) | (pl.col("ref_n_selected") == SUPPRESSED).fill_null(
        True
    )
    return round_counts(
        _hide(
            _hide(keyed, NEED_VALUES, need_hidden, "suppressed"),
            CUTOFF_VALUES,
            cut_hidden,
            "cutoff_suppressed",
        ).drop("ref_n", "ref_n_selected"),
        rule=rule,
    )


def need_curves_table(curves: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw need-by-score curves -> ``need_by_score.parquet`` (a group's bands add up to its
    published size: complementary suppression within each group)."""
    published, hidden = hide_counts(
        curves, counts=["n"], over=["dimension", "need_measure", "group"], rule=rule
    )
    return _hide(published, ["mean_need", "sd_need"], hidden, "suppressed")


def selection_shares_table(shares: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw selection shares -> ``selection_shares.parquet``: each share is the group's published
    count over the published total selected; a row's shares are null when any of its counts is
    hidden (complementary suppression within a dimension)."""
    counts = [c for c in shares.columns if c.startswith("n_selected_by_")]
    with_shares = shares.with_columns(
        published_share(
            rule.rounded_expr(pl.col(c)), rule.rounded_expr(pl.col(c).sum().over("dimension"))
        ).alias(c.replace("n_selected_by_", "share_by_"))
        for c in counts
    )
    published, hidden = hide_counts(with_shares, counts=counts, over=["dimension"], rule=rule)
    values = [c.replace("n_selected_by_", "share_by_") for c in counts]
    return _hide(published, values, hidden, "suppressed")


def policy_tradeoffs_table(summary: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw per-policy totals -> ``mitigation.parquet`` (shares of the published counts;
    expected true events, float sums, are published as whole people)."""
    expected = [c for c in summary.columns if c.startswith("expected_")]
    whole = summary.with_columns(
        pl.col(c).round(0).cast(pl.Int64).alias(f"n_{c}") for c in expected
    )
    pairs = {
        "share_of_events_reached": ("n_events_reached", "n_events"),
        "share_of_cases_reached": ("n_cases_reached", "n_cases"),
    }
    if expected:
        pairs["share_of_true_events_reached"] = (
            "n_expected_true_events_reached",
            "n_expected_true_events",
        )
    shares = [
        rule.share_expr(pl.col(reached), pl.col(total)).alias(name)
        for name, (reached, total) in pairs.items()
    ]
    return round_counts(whole.with_columns(shares).drop(expected), rule=rule)


def published_gaps(
    tradeoffs: pl.DataFrame, by_group: pl.DataFrame, *, min_group_events: int
) -> pl.DataFrame:
    """``tpr_gap`` and ``case_tpr_gap`` of the published ``mitigation.parquet`` recomputed from
    the published rates of ``mitigation_by_group.parquet``: largest minus smallest across the
    groups of ``gap_dimension`` whose published events reach ``min_group_events``."""
    shown = by_group.filter(published_number("n_events") >= min_group_events)
    gaps = shown.group_by("policy", pl.col("dimension").alias("gap_dimension")).agg(
        (pl.col("tpr").max() - pl.col("tpr").min()).alias("_tpr_gap"),
        (pl.col("case_tpr").max() - pl.col("case_tpr").min()).alias("_case_tpr_gap"),
    )
    return (
        tradeoffs.join(gaps, on=["policy", "gap_dimension"], how="left", maintain_order="left")
        .with_columns(
            pl.col("_tpr_gap").alias("tpr_gap"), pl.col("_case_tpr_gap").alias("case_tpr_gap")
        )
        .drop("_tpr_gap", "_case_tpr_gap")
    )


def policy_groups_table(by_group: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Raw policy x group reach -> ``mitigation_by_group.parquet``: rates of the published
    counts; complementary suppression within each policy x dimension."""
    counts = ["n", "n_selected", "n_events", "n_events_reached", "n_cases", "n_cases_reached"]
    missed = pl.any_horizontal(
        rule.suppressed_expr(pl.col(a) - pl.col(b)).fill_null(False)
        for a, b in (("n_events", "n_events_reached"), ("n_cases", "n_cases_reached"))
    )
    rates = by_group.with_columns(
        published_share(
            rule.rounded_expr(pl.col("n_selected")),
            rule.rounded_expr(pl.col("n_selected").sum().over("policy", "dimension")),
        ).alias("selection_share"),
        rule.share_expr(pl.col("n_events_reached"), pl.col("n_events")).alias("tpr"),
        rule.share_expr(pl.col("n_cases_reached"), pl.col("n_cases")).alias("case_tpr"),
        missed.alias("_missed"),
    )
    published, hidden = hide_counts(rates, counts=counts, over=["policy", "dimension"], rule=rule)
    return _hide(
        published, ["selection_share", "tpr", "case_tpr"], hidden | pl.col("_missed"), "suppressed"
    ).drop("_missed")


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
