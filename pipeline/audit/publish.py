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

from pipeline import contract, io
from pipeline.audit import flags, funnel
from pipeline.audit.cells import COMPARISON_COLUMNS, PROPORTIONS
from pipeline.contract import GROUP_COUNTS, METRIC_COUNTS, PublishedCountValue, is_count_name
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.metrics import wilson_interval

COMPARISON_VALUES = (*COMPARISON_COLUMNS, "outside_fair_range")
"""Group-metric columns that compare a group with its reference group."""
TEST_VALUES = ("significant", "flag", "p_value", "gated")
"""Group-metric columns of a flaggable comparison: hidden with the comparison (against the
reference group) or with the value (calibration against 1)."""
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
    "q_value",
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
    ``group_metrics.parquet`` before its flags (:func:`flag_group_metrics`).

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
    against_one = pl.col("comparator") == "1 (calibration)"
    masked = _hide(
        compared,
        COMPARISON_VALUES,
        pl.col("suppressed") | pl.col("_ref_h").fill_null(True),
        "comparison_suppressed",
    ).with_columns(
        pl.when(pl.when(against_one).then("suppressed").otherwise("comparison_suppressed"))
        .then(None)
        .otherwise(pl.col(c))
        .alias(c)
        for c in TEST_VALUES
    )
    return masked.drop(
        "numerator_raw",
        "denominator_raw",
        "complement_raw",
        "group_n_raw",
        "_ref",
        "_ref_h",
        *[c for c in GROUP_COUNTS if c not in ("n", "n_events", "n_selected")],
    )


def flag_group_metrics(
    metrics: pl.DataFrame,
    funnels: pl.DataFrame,
    *,
    fair_low: float,
    fair_high: float,
    oe_material: float,
    fdr: float,
    risk_factor_dimensions: Sequence[str] = (),
) -> pl.DataFrame:
    """Flags of the published group metrics (:mod:`pipeline.audit.flags`): a comparison is
    flagged when gated by its own denominator, its interval excludes 1, it is material in the
    disadvantaging direction (TPR: fewer cases reached, never in ``risk_factor_dimensions``)
    and its Benjamini-Hochberg q-value within the dimension is below ``fdr``. Geographies in
    ``funnels`` (the published ``funnel.parquet``) take their comparisons and flags from it;
    ``fair_high`` only marks ``outside_fair_range``."""
    outside = ~pl.col("is_reference") & (
        (pl.col("ratio") < fair_low) | (pl.col("ratio") > fair_high)
    )
    rated = metrics.with_columns(outside.alias("outside_fair_range"))
    geography = pl.col("dimension").is_in(funnels["dimension"].unique().to_list())
    tested = with_q_values_of(rated.filter(~geography))
    material = flags.material_expr(
        fair_low=fair_low, oe_material=oe_material, risk_factor_dimensions=risk_factor_dimensions
    )
    flagged = tested.with_columns(  # null stays null: a hidden comparison has no flag
        pl.when(pl.col("flag").is_not_null())
        .then(pl.col("flag") & material & (pl.col("q_value") < fdr).fill_null(False))
        .alias("flag")
    )
    return (
        pl.concat(
            [flagged, _funnel_comparisons(rated.filter(geography), funnels)], how="diagonal_relaxed"
        )
        .with_columns(
            pl.col("flag").fill_null(False).alias("flagged"),
            pl.when(pl.col("flag").fill_null(False)).then(flags.reason_expr()).alias("flag_reason"),
        )
        .drop("gated")
    )


def with_q_values_of(frame: pl.DataFrame) -> pl.DataFrame:
    """``q_value`` of each row's ``p_value`` (Benjamini-Hochberg within its dimension)."""
    return flags.with_q_values(frame, over=["dimension"])


def _funnel_comparisons(metrics: pl.DataFrame, funnels: pl.DataFrame) -> pl.DataFrame:
    """Geography rows: no reference area; the funnel metrics' ratio is the standardised ratio
    (interval: ratio +- the 95% funnel half-width) with the funnel's p, q and flag."""
    points = funnels.select(
        "dimension",
        "group",
        "metric",
        pl.col("ratio").alias("_ratio"),
        (pl.col("limit_95_high") - 1.0).alias("_half"),
        pl.col("p_value").alias("_p"),
        pl.col("q_value").alias("_q"),
        pl.col("flagged").alias("_flag"),
        (
            (pl.col("limit_95_low") > pl.col("ratio")) | (pl.col("ratio") > pl.col("limit_95_high"))
        ).alias("_significant"),
    )
    joined = metrics.join(points, on=["dimension", "group", "metric"], how="left")
    nothing = pl.lit(None, dtype=pl.Float64)
    return joined.with_columns(
        pl.lit(None, dtype=pl.String).alias("reference_group"),
        pl.lit(False).alias("is_reference"),
        *(nothing.alias(c) for c in ("difference", "difference_ci_low", "difference_ci_high")),
        pl.col("_ratio").alias("ratio"),
        (pl.col("_ratio") - pl.col("_half")).clip(lower_bound=0.0).alias("ratio_ci_low"),
        (pl.col("_ratio") + pl.col("_half")).alias("ratio_ci_high"),
        pl.lit(None, dtype=pl.Boolean).alias("outside_fair_range"),
        pl.when(pl.col("_ratio").is_not_null())
        .then(pl.lit("population (funnel)"))
        .alias("comparator"),
        pl.col("_p").alias("p_value"),
        pl.col("_q").alias("q_value"),
        pl.col("_significant").alias("significant"),
        pl.when(pl.col("_ratio").is_not_null()).then(pl.col("_flag")).alias("flag"),
        pl.col("_ratio").is_null().alias("comparison_suppressed"),
    ).drop("_ratio", "_half", "_p", "_q", "_flag", "_significant")


def funnel_table(
    raw: pl.DataFrame,
    groups: pl.DataFrame,
    *,
    fair_low: float,
    oe_material: float,
    fdr: float,
    min_group_events: int,
) -> pl.DataFrame:
    """Raw standardised counts (:func:`pipeline.audit.funnel.standardised_counts`) + published
    group counts -> ``funnel.parquet``: the statistics run on the *published* observed count
    (a point whose count, group size or events are hidden is suppressed), expected counts are
    published to one decimal; flagged: a flaggable metric outside the adjusted 99.8% limits,
    material, gated by ``min_group_events`` events, with a q-value (BH within the dimension)
    below ``fdr``."""
    observed = pl.col("metric").replace_strict(funnel.FUNNEL_METRICS, default=None)
    joined = raw.join(
        groups.select("dimension", "group", *GROUP_COUNTS),
        on=["dimension", "group"],
        how="left",
        maintain_order="left",
    ).with_columns(_pick(observed).alias("n_observed"))
    hidden = hidden_expr(["n", "n_events", "n_observed"])
    shown = joined.with_columns(
        pl.when(hidden).then(None).otherwise(published_number("n_observed")).alias("observed"),
        hidden.alias("suppressed"),
        pl.col("expected").round(1),
    )
    stats = funnel.funnel_statistics(shown)
    flaggable = pl.col("metric").is_in(list(flags.FLAG_COMPARATORS))
    tested = flags.with_q_values(
        stats.with_columns(pl.when(flaggable).then("p_value").alias("p_value")), over=["dimension"]
    )
    outside = (pl.col("ratio") < pl.col("limit_998_low")) | (
        pl.col("ratio") > pl.col("limit_998_high")
    )
    flagged = (
        flaggable
        & outside
        & (published_number("n_events") >= min_group_events)
        & (pl.col("q_value") < fdr)
        & _funnel_material(fair_low=fair_low, oe_material=oe_material)
    ).fill_null(False)
    return tested.with_columns(
        flagged.alias("flagged"),
        pl.when(flagged).then(_funnel_reason()).alias("flag_reason"),
    ).select(list(contract.FUNNEL_SCHEMA))


def _funnel_material(*, fair_low: float, oe_material: float) -> pl.Expr:
    """A standardised ratio large enough to act on: TPR below the fair range (an area whose
    cases are reached less than the population's; reached more is context), O/E at least
    ``oe_material`` (or at most its inverse)."""
    ratio = pl.col("ratio")
    return (
        pl.when(pl.col("metric") == "oe_ratio")
        .then((ratio >= oe_material) | (ratio <= 1.0 / oe_material))
        .otherwise(ratio < fair_low)
    )


def _funnel_reason() -> pl.Expr:
    higher = pl.col("ratio") > 1.0
    return (
        pl.when(pl.col("metric") == "oe_ratio")
        .then(pl.when(higher).then(pl.lit("under-prediction")).otherwise(pl.lit("over-prediction")))
        .otherwise(
            pl.when(higher)
            .then(pl.lit("more cases reached"))
            .otherwise(pl.lit("fewer cases reached"))
        )
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


def finite(frame: pl.DataFrame) -> pl.DataFrame:
    """NaN and infinite floats -> null: an undefined estimate is never published as a number;
    the others to :data:`pipeline.io.PUBLISHED_DIGITS` significant digits (the same bytes on
    every machine)."""
    floats = pl.col(pl.Float64)
    published = frame.with_columns(pl.when(floats.is_finite()).then(floats).otherwise(None))
    return io.significant_floats(published)


def json_value(value: Any) -> Any:
    """NaN/inf -> None; other floats to :data:`pipeline.io.PUBLISHED_DIGITS` significant
    digits; numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return io.significant(value)


def json_count(count: int | float | None, *, rule: Rule) -> PublishedCountValue:
    """A count for JSON: disclosure-rounded."""
    if count is None:
        return None
    published = rule.count(round(float(count)))
    return SUPPRESSED if isinstance(published, str) else published  # the only string is "*"
