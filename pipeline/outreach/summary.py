"""``reports/outreach_summary.json``: the lists in aggregate, disclosure-controlled numbers only.

Per target: eligible and selected counts, the ICB lists' sizes, expected events reached, the test
split's observed events, the make-up of the lists by IMD quintile, ethnic group and region, and
(synthetic data only) how the lists compare with a same-size list of the people in most true
need. Counts follow ``pipeline.disclosure`` (1-7 -> ``"*"``, others rounded to the nearest 5);
rates of suppressed counts are suppressed too. Layout: ``docs/outreach.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl
import polars.selectors as cs

from pipeline import contract, selection
from pipeline.config import OutreachParams
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.errors import ContractError
from pipeline.outreach.lists import OUTREACH_COLUMNS
from pipeline.selection import CapacityMode

__all__ = [
    "MAKE_UP_DIMENSIONS",
    "SUMMARY_FILE",
    "add_aggregates",
    "need_list",
    "publish_target",
    "summarise_target",
    "summary_aggregates",
    "target_true_need",
    "with_need_list",
    "with_true_need",
    "write_summary",
]

MAKE_UP_DIMENSIONS: Final = ("imd_quintile", "ethnicity_group", "region")
SUMMARY_FILE: Final = "outreach_summary.json"


HIDDEN: Final = "_hidden_"
"""Prefix of a make-up row's flags: the count was hidden by complementary suppression."""
SECONDARY_COUNTS: Final = (
    "n_eligible",
    "n_selected",
    "test_selected",
    "test_events",
    "test_events_reached",
    "n_need_list",
)
"""Make-up counts whose groups add up to a published total (complementary suppression)."""


def _count(rule: Rule, value: float | int | None) -> int | str | None:
    return rule.count(None if value is None else round(value))


def _published(rule: Rule, row: Mapping[str, Any], column: str) -> int | str | None:
    """A row's count as published: ``'*'`` when complementary suppression hid it."""
    if row.get(HIDDEN + column):
        return SUPPRESSED
    return _count(rule, row[column])


def _share(rule: Rule, row: Mapping[str, Any], numerator: str, denominator: str) -> Any:
    """The share of two of a row's published counts (:meth:`Rule.share_of_published`)."""
    return rule.share_of_published(
        _published(rule, row, numerator), _published(rule, row, denominator)
    )


def _hide_secondary(rows: pl.DataFrame, *, rule: Rule) -> pl.DataFrame:
    """Flag the counts of one dimension's groups hidden by complementary suppression."""
    present = [c for c in SECONDARY_COUNTS if c in rows.columns]
    return rows.with_columns(pl.lit(0).alias("_all")).with_columns(
        rule.secondary_expr(pl.col(c), over="_all").alias(HIDDEN + c) for c in present
    )


def _mean(total: float | None, count: int) -> float | None:
    return None if not count or total is None else float(total) / count


def _rounded_mean(rule: Rule, value: float | None, count: int) -> float | str | None:
    if value is None:
        return None
    return rule.rate(count, count, round(float(value), 4))


def target_true_need(oracle: pl.DataFrame, target: str) -> pl.DataFrame:
    """``person_id``, ``true_need``: the target's own true need from ``data/truth/oracle.parquet``
    (for CVD the true 5-year CVD risk as if everything were recorded; not the generic
    emergency-admission need index of ``data/truth/people.parquet``).

    Raises
    ------
    ContractError
        When the oracle holds no row for ``target``.
    """
    own = oracle.filter(pl.col("target") == target).select("person_id", "true_need")
    if own.height == 0:
        raise ContractError(
            f"data/truth/oracle.parquet: no true_need for target {target!r} "
            "(column target, rule: one row per eligible person and target)"
        )
    return own


def with_true_need(cohort: pl.DataFrame, truth_need: pl.DataFrame) -> pl.DataFrame:
    """Add each person's ``true_need`` (null when ``truth_need`` has none), order kept."""
    if truth_need["person_id"].equals(cohort["person_id"]):
        # the usual chunk: the oracle and the scores are both sorted by person_id
        return cohort.with_columns(truth_need["true_need"])
    # a column added in place: only person_id and true_need take part in the join
    true_need = (
        cohort.select("person_id")
        .join(
            truth_need.select("person_id", "true_need"),
            on="person_id",
            how="left",
            maintain_order="left",
        )
        .get_column("true_need")
    )
    return cohort.with_columns(true_need)


def with_need_list(
    cohort: pl.DataFrame,
    truth_need: pl.DataFrame,
    *,
    capacity: pl.DataFrame,
    capacity_mode: CapacityMode,
) -> pl.DataFrame:
    """Add ``true_need`` and ``need_list``: the same-size list of the people in most true need
    per capacity unit (ties by person_id), to compare the policy's lists with."""
    return need_list(
        with_true_need(cohort, truth_need), capacity=capacity, capacity_mode=capacity_mode
    )


def need_list(
    frame: pl.DataFrame, *, capacity: pl.DataFrame, capacity_mode: CapacityMode
) -> pl.DataFrame:
    """Add ``unit``, ``list_size`` and ``need_list`` to people with ``true_need``: the first
    ``list_size`` people of each unit by true need (missing last), then ``person_id``, both
    highest first.

    A total order, so the need list of a cohort is the need list of the union of its chunks'
    need lists (``pipeline.outreach.cohort``)."""
    # everyone's ordinal position by need (then person_id, both highest first) as the inverse
    # of one sort, ranked within each unit: the same numbers as ranking a struct, ~2x faster
    need_order = pl.arg_sort_by(
        [pl.col("true_need").fill_null(-math.inf), pl.col("person_id")], descending=[True, True]
    ).arg_sort()
    return (
        frame.with_columns(selection.unit_expr(capacity_mode))
        .with_columns(selection.unit_list_size(capacity))
        .with_columns(
            (need_order.rank("ordinal").over("unit") <= pl.col("list_size")).alias("need_list")
        )
    )


def _aggregates(*, has_truth: bool) -> list[pl.Expr]:
    """The sums every level of the summary (overall, per group) is built from."""
    test, event, chosen = pl.col("split") == "test", pl.col("outcome") == 1, pl.col("selected")
    aggregates = [
        pl.len().alias("n_eligible"),
        chosen.sum().alias("n_selected"),
        pl.col("risk_score").filter(chosen).sum().alias("expected_selected"),
        pl.col("risk_score").sum().alias("expected_eligible"),
        (test & chosen).sum().alias("test_selected"),
        (test & event).sum().alias("test_events"),
        (test & event & chosen).sum().alias("test_events_reached"),
        pl.col("risk_score").filter(test & chosen).sum().alias("test_expected_reached"),
    ]
    if has_truth:
        # sums and counts, not means: every aggregate adds up across chunks
        aggregates += [
            pl.col("need_list").sum().alias("n_need_list"),
            (pl.col("need_list") & chosen).sum().alias("n_overlap"),
            pl.col("true_need").sum().alias("true_need_total"),
            pl.col("true_need").count().alias("n_true_need"),
            pl.col("true_need").filter(chosen).sum().alias("true_need_selected"),
            pl.col("true_need").filter(chosen).count().alias("n_true_need_selected"),
        ]
    return aggregates


def _test_block(rule: Rule, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n_selected": _published(rule, row, "test_selected"),
        "n_events": _published(rule, row, "test_events"),
        "n_events_reached": _published(rule, row, "test_events_reached"),
        "n_expected_events_reached": _count(rule, row["test_expected_reached"]),
        "event_capture_rate": _share(rule, row, "test_events_reached", "test_events"),
        "precision": _share(rule, row, "test_events_reached", "test_selected"),
    }


def _expected_events_block(rule: Rule, overall: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n_expected_events_reached": _count(rule, overall["expected_selected"]),
        "n_expected_events_eligible": _count(rule, overall["expected_eligible"]),
        "share_of_expected_events_reached": _share(
            rule, overall, "expected_selected", "expected_eligible"
        ),
    }


def _true_need_block(rule: Rule, overall: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n_need_list": _count(rule, overall["n_need_list"]),
        "n_overlap": _count(rule, overall["n_overlap"]),
        "overlap_share": _share(rule, overall, "n_overlap", "n_need_list"),
        "mean_true_need_selected": _rounded_mean(
            rule,
            _mean(overall["true_need_selected"], overall["n_true_need_selected"]),
            int(overall["n_selected"]),
        ),
        "mean_true_need_eligible": _rounded_mean(
            rule,
            _mean(overall["true_need_total"], overall["n_true_need"]),
            int(overall["n_eligible"]),
        ),
    }


def _group_block(
    rule: Rule,
    row: Mapping[str, Any],
    overall: Mapping[str, Any],
    *,
    has_truth: bool,
    min_group_size: int,
) -> dict[str, Any]:
    n_eligible, n_selected = (
        _published(rule, row, "n_eligible"),
        _published(rule, row, "n_selected"),
    )
    block: dict[str, Any] = {
        "group": row["group"],
        "n_eligible": n_eligible,
        "n_selected": n_selected,
        "share_of_eligible": rule.share_of_published(
            n_eligible, _count(rule, overall["n_eligible"])
        ),
        "share_of_selected": rule.share_of_published(
            n_selected, _count(rule, overall["n_selected"])
        ),
        "selection_rate": rule.share_of_published(n_selected, n_eligible),
        "test_split": _test_block(rule, row),
        "stable": row["n_selected"] >= min_group_size,
    }
    if not block["stable"]:
        block["note"] = "small group"
    if has_truth:
        need_total = float(overall["true_need_total"] or 0.0)
        block["n_need_list"] = _published(rule, row, "n_need_list")
        block["share_of_need_list"] = rule.share_of_published(
            block["n_need_list"], _count(rule, overall["n_need_list"])
        )
        # true need is a score, not a count: its share is published to 4 decimals, and not
        # where the group's size is hidden
        share = float(row["true_need_total"] or 0.0) / need_total if need_total else None
        hidden = n_eligible == SUPPRESSED
        block["share_of_true_need"] = SUPPRESSED if hidden else share and round(share, 4)
    return block


def _group_expr(dimension: str) -> pl.Expr:
    return pl.col(dimension).cast(pl.String).fill_null("missing").alias("group")


def summary_aggregates(frame: pl.DataFrame, *, has_truth: bool) -> dict[str, pl.DataFrame]:
    """The sums the summary is published from, per level: ``overall`` (one row), each make-up
    dimension (one row per ``group``) and ``icb_code`` (people selected per ICB, ``n``).

    Every value is a count or a sum, so the aggregates of a cohort's chunks add up to the
    cohort's (:func:`add_aggregates`).

    Parameters
    ----------
    frame
        Eligible people with ``selected`` and, with ``has_truth``, ``true_need`` and
        ``need_list`` (:func:`with_need_list`); the columns of :func:`summarise_target`.
    has_truth
        Whether the true-need sums are wanted.
    """
    counts = cs.unsigned_integer()  # Int64 counts: England's sums over chunks stay exact
    aggregates = {"overall": frame.select(_aggregates(has_truth=has_truth))}
    for dimension in MAKE_UP_DIMENSIONS:
        aggregates[dimension] = frame.group_by(_group_expr(dimension)).agg(
            _aggregates(has_truth=has_truth)
        )
    aggregates["icb_code"] = frame.group_by("icb_code").agg(pl.col("selected").sum().alias("n"))
    # groups sorted on their key (the first column); the one overall row as it is
    return {
        level: rows.with_columns(counts.cast(pl.Int64)).sort(rows.columns[0])
        if level != "overall"
        else rows.with_columns(counts.cast(pl.Int64))
        for level, rows in aggregates.items()
    }


def add_aggregates(parts: Sequence[Mapping[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """The sums of several chunks' :func:`summary_aggregates`, added in the order given (float
    sums depend on it, so callers pass chunks in one fixed order)."""
    added = {}
    for level in parts[0]:
        rows = pl.concat([part[level] for part in parts], how="vertical")
        if level == "overall":
            added[level] = rows.sum()
        else:
            key = rows.columns[0]
            added[level] = rows.group_by(key, maintain_order=True).agg(pl.all().sum()).sort(key)
    return added


def _make_up(
    rule: Rule,
    aggregates: Mapping[str, pl.DataFrame],
    overall: Mapping[str, Any],
    *,
    has_truth: bool,
    min_group_size: int,
) -> dict[str, list[dict[str, Any]]]:
    """One block per group of each make-up dimension (missing values as ``"missing"``)."""
    make_up = {}
    for dimension in MAKE_UP_DIMENSIONS:
        rows = aggregates[dimension].sort("group").pipe(_hide_secondary, rule=rule)
        make_up[dimension] = [
            _group_block(rule, row, overall, has_truth=has_truth, min_group_size=min_group_size)
            for row in rows.iter_rows(named=True)
        ]
    return make_up


def _list_sizes(per_icb: pl.DataFrame, rule: Rule) -> dict[str, dict[str, int | str | None]]:
    """People on each ICB's list, published with complementary suppression across the ICBs."""
    lists = (
        per_icb.sort("icb_code")
        .with_columns(pl.lit(0).alias("_all"))
        .with_columns(rule.secondary_expr(pl.col("n"), over="_all", tie="icb_code").alias("hidden"))
    )
    return {
        row["icb_code"]: {"n": "*" if row["hidden"] else _count(rule, row["n"])}
        for row in lists.iter_rows(named=True)
    }


def summarise_target(
    cohort: pl.DataFrame,
    *,
    capacity: pl.DataFrame,
    truth_need: pl.DataFrame | None,
    capacity_mode: CapacityMode,
    min_group_size: int,
    rule: Rule,
) -> dict[str, Any]:
    """Aggregate, disclosure-controlled description of one target's outreach lists, from its
    whole cohort held at once (the stage adds up chunks instead: :func:`publish_target`).

    Parameters
    ----------
    cohort
        Every eligible person with ``selected`` (bool), ``risk_score``, ``split``, ``outcome``,
        ``icb_code``, ``practice_id`` and the make-up dimensions.
    capacity
        From :func:`pipeline.selection.list_sizes`.
    truth_need
        ``person_id``, ``true_need``: the target's own true need (:func:`target_true_need`;
        synthetic data only) or None.
    capacity_mode
        To build the same-size "need list" (top true need per capacity unit) for comparison.
    min_group_size
        Groups with fewer selected people are marked ``"stable": false``.
    rule
        The disclosure rule every count and share is published by.

    Returns
    -------
    dict
        The target's block of the summary (``docs/outreach.md``).
    """
    has_truth = truth_need is not None
    frame = cohort
    if truth_need is not None:
        frame = with_need_list(cohort, truth_need, capacity=capacity, capacity_mode=capacity_mode)
    return publish_target(
        summary_aggregates(frame, has_truth=has_truth),
        capacity=capacity,
        capacity_mode=capacity_mode,
        min_group_size=min_group_size,
        rule=rule,
    )


def publish_target(
    aggregates: Mapping[str, pl.DataFrame],
    *,
    capacity: pl.DataFrame,
    capacity_mode: CapacityMode,
    min_group_size: int,
    rule: Rule,
) -> dict[str, Any]:
    """The target's block of the summary from its :func:`summary_aggregates` (whole cohort or
    added over chunks); arguments as :func:`summarise_target`."""
    overall = aggregates["overall"].row(0, named=True)
    has_truth = "n_need_list" in overall
    n_eligible, n_selected = int(overall["n_eligible"]), int(overall["n_selected"])
    whole_units = capacity.filter(pl.col("list_size") >= pl.col("n_eligible")).height
    return {
        "n_eligible": _count(rule, n_eligible),
        "n_selected": _count(rule, n_selected),
        "share_selected": rule.share(n_selected, n_eligible),
        "units_whole_cohort_selected": whole_units if capacity_mode != "share" else 0,
        "lists": _list_sizes(aggregates["icb_code"], rule),
        "expected_events": _expected_events_block(rule, overall),
        "test_split": _test_block(rule, overall),
        "make_up": _make_up(
            rule, aggregates, overall, has_truth=has_truth, min_group_size=min_group_size
        ),
        "true_need": _true_need_block(rule, overall) if has_truth else None,
    }


def write_summary(
    target: Path,
    *,
    outreach: OutreachParams,
    summaries: Mapping[str, Mapping[str, Any]],
    truth_available: bool,
) -> None:
    """Write ``reports/outreach_summary.json`` (the whole document is assembled here only)."""
    summary = contract.OutreachSummary.model_validate(
        {
            "policy": outreach.policy,
            "capacity_mode": outreach.capacity_mode,
            "capacity": outreach.capacity,
            "columns": list(OUTREACH_COLUMNS),
            "truth_available": truth_available,
            "targets": dict(summaries),
        }
    )
    contract.write_summary(summary, target)
