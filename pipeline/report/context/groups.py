"""The audit's per-group metrics as table rows and forest plots.

:func:`wide_groups` turns the long ``groups`` frame (one row per group and metric) into one
record per group; the rest build cells from those records, hiding every value whose counts are
suppressed.
"""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from pipeline.contract import TableSchema
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Table
from pipeline.report.context.labels import (
    METRIC_LABELS,
    PERCENT_METRICS,
    dimension_label,
    group_label,
)
from pipeline.report.fmt import (
    Cell,
    count_cell,
    is_number,
    rate_cell,
    ratio_style,
    text_cell,
)
from pipeline.report.model import ReportView, TargetView
from pipeline.report.scan import METRIC_COUNTS

Group = dict[str, Any]

GROUP_COLUMNS: Final = [
    ("Group", ""),
    ("People", "eligible people in the audited split (rounded to 5; * = 1-7)"),
    ("With outcome", "people who had the outcome in the follow-up window"),
    ("Selected", "people the outreach capacity would select"),
    ("Outcome rate", "share who had the outcome, with 95% CI"),
    ("Selected %", "share selected for outreach, with 95% CI"),
    ("Cases reached", "share of people with the outcome who were selected (sensitivity)"),
    ("Selected: ratio", "selection rate relative to the reference group, 95% CI"),
    ("Cases reached: ratio", "cases reached relative to the reference group, 95% CI"),
    ("Observed / expected", "calibration: 1 = as many events as the model predicted"),
    ("Note", "reference group, small group, or a flag (Methods: comparators and flags)"),
]
GEOGRAPHY_COLUMNS: Final = [
    (name, help_text)
    if "ratio" not in name
    else (
        name.replace("ratio", "standardised ratio"),
        "observed / expected count if the area's people fared like the whole population "
        "(age band x sex); 1 = as expected; interval: 95% funnel limits around the area's ratio",
    )
    for name, help_text in GROUP_COLUMNS
]
FLAG_METRICS: Final = ("tpr", "oe_ratio")
"""The metrics the audit can flag (pipeline.audit.flags)."""
RATIO_SCHEMA: Final[TableSchema] = {
    "group": pl.String,
    "group_order": pl.Int32,
    "ratio": pl.Float64,
    "ratio_ci_low": pl.Float64,
    "ratio_ci_high": pl.Float64,
    "flagged": pl.Boolean,
}
ESTIMATE_SCHEMA: Final[TableSchema] = {
    "group": pl.String,
    "group_order": pl.Int32,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
}


def wide_groups(view: TargetView, dimension: str) -> list[Group]:
    """One record per group of ``dimension``: counts, and per metric its row (value, CI, ratio,
    flag), in the audit's group order."""
    frame = view.groups.filter(pl.col("dimension") == dimension)
    out: dict[str, Group] = {}
    for row in frame.sort("group_order", "group", nulls_last=True).iter_rows(named=True):
        group = out.setdefault(
            row["group"],
            {
                key: row[key]
                for key in ("group", "group_order", "n", "n_events", "n_selected", "stable")
            }
            | {"is_reference": row["is_reference"], "metrics": {}},
        )
        group["metrics"][row["metric"]] = row
    return list(out.values())


def hidden_by_counts(row: dict[str, Any], metric: str) -> bool:
    """``row``'s group size, or one of its published counts (``n``, ``n_events``,
    ``n_selected``) that ``metric`` is computed from, is ``'*'``."""
    counts = {"n": row["n"], "n_events": row["n_events"], "n_selected": row["n_selected"]}
    if counts["n"] == SUPPRESSED:
        return True
    return any(counts.get(name) == SUPPRESSED for name in METRIC_COUNTS.get(metric, ()))


def suppressed(group: Group, metric: str) -> bool:
    """A metric is suppressed upstream, or one of the counts it is computed from is ``'*'``."""
    row = group["metrics"].get(metric)
    if row is not None and row["suppressed"]:
        return True
    return hidden_by_counts(group, metric)


def metric_cell(group: Group, metric: str) -> Cell:
    """A group's value of ``metric`` with its CI (``'*'`` when suppressed)."""
    row = group["metrics"].get(metric)
    if row is None:
        return rate_cell(None)
    return rate_cell(
        row["value"],
        row["ci_low"],
        row["ci_high"],
        percent=metric in PERCENT_METRICS,
        suppressed=suppressed(group, metric),
    )


def ratio_cell(group: Group, metric: str, *, fair_low: float, fair_high: float) -> Cell:
    """A group's ratio to the reference on ``metric``, shaded outside the fair band."""
    row = group["metrics"].get(metric)
    if row is not None and row["is_reference"]:  # per metric: a reference must be usable
        return Cell("ref", "r", "1")
    if row is not None and suppressed(group, metric):
        return rate_cell(SUPPRESSED)
    if row is None or not is_number(row["ratio"]):
        return rate_cell(None)
    return rate_cell(
        row["ratio"],
        row["ratio_ci_low"],
        row["ratio_ci_high"],
        percent=False,
        style=ratio_style(row["ratio"], low=fair_low, high=fair_high),
    )


def status_cell(group: Group, metrics: tuple[str, ...]) -> Cell:
    """'reference', 'small group' and the metrics flagged outside the fair band."""
    notes = []
    if group["is_reference"]:
        notes.append("reference")
    if group["stable"] is False:
        notes.append("small group")
    flags = []
    for metric in metrics:
        row = group["metrics"].get(metric)
        if row is None or not row["flagged"] or suppressed(group, metric):
            continue
        reason = row.get("flag_reason") or METRIC_LABELS.get(metric, metric).lower()
        flags.append(str(reason))
    if flags:
        notes.append("flag: " + ", ".join(flags))
    return text_cell("; ".join(notes))


def _group_name_cell(group: Group, dimension: str, icb_names: dict[str, str]) -> Cell:
    if dimension == "icb_code":
        name = icb_names.get(group["group"])
        label = f"{group['group']} {name}" if name else group["group"]
    else:
        label = group_label(dimension, group["group"])
    # numeric order where groups have one (IMD, age), else by name
    order = f"{group['group_order']:05d}" if group["group_order"] else str(group["group"])
    return text_cell(label, sort=order)


def group_row(group: Group, dimension: str, report: ReportView, sdc: Rule) -> list[Cell]:
    """One row of the standard group table (columns: :data:`GROUP_COLUMNS`)."""
    bounds = {"fair_low": report.fair_low, "fair_high": report.fair_high}
    return [
        _group_name_cell(group, dimension, report.icb_names),
        count_cell(group["n"], sdc),
        count_cell(group["n_events"], sdc),
        count_cell(group["n_selected"], sdc),
        metric_cell(group, "base_rate"),
        metric_cell(group, "selection_rate"),
        metric_cell(group, "tpr"),
        ratio_cell(group, "selection_rate", **bounds),
        ratio_cell(group, "tpr", **bounds),
        metric_cell(group, "oe_ratio"),
        status_cell(group, FLAG_METRICS),
    ]


def group_table(
    view: TargetView, report: ReportView, dimension: str, sdc: Rule, *, sortable: bool = False
) -> Table | None:
    """The standard per-group table of one dimension (``None`` when the audit has none)."""
    groups = wide_groups(view, dimension)
    if not groups:
        return None
    geography = any(
        row.get("comparator") == "population (funnel)"
        for group in groups
        for row in group["metrics"].values()
    )
    return Table(
        GEOGRAPHY_COLUMNS if geography else GROUP_COLUMNS,
        [group_row(group, dimension, report, sdc) for group in groups],
        caption=f"{view.target}: {dimension_label(dimension).lower()}",
        sortable=sortable,
    )


def _number_or_none(value: Any) -> Any:
    return value if is_number(value) else None


def ratio_frame(groups: list[Group], dimension: str, metric: str) -> pl.DataFrame:
    """Each published, non-reference group's ratio on ``metric``, for the forest plot."""
    rows = [
        {
            "group": group_label(dimension, group["group"]),
            "group_order": group["group_order"] or 0,
            "ratio": row["ratio"],
            "ratio_ci_low": _number_or_none(row["ratio_ci_low"]),
            "ratio_ci_high": _number_or_none(row["ratio_ci_high"]),
            "flagged": bool(row["flagged"]),
        }
        for group in groups
        if (row := group["metrics"].get(metric)) is not None
        and not group["is_reference"]
        and not suppressed(group, metric)
    ]
    return pl.DataFrame(rows, schema=RATIO_SCHEMA)


def ratio_figure(
    view: TargetView, report: ReportView, dimension: str, metric: str = "tpr"
) -> Figure | None:
    """Forest plot of one metric's ratio to the reference across a dimension's groups."""
    groups = wide_groups(view, dimension)
    frame = ratio_frame(groups, dimension, metric)
    frame = frame.filter(pl.col("ratio").is_not_null() & (pl.col("ratio") > 0)).with_columns(
        # the chart's legend reads "outside 0.8-1.25": flags themselves also need the FDR
        ((pl.col("ratio") < report.fair_low) | (pl.col("ratio") > report.fair_high)).alias(
            "flagged"
        )
    )
    if frame.is_empty():
        return None
    reference = next((g for g in groups if g["is_reference"]), {"group": "reference"})
    label = METRIC_LABELS.get(metric, metric)
    versus = group_label(dimension, reference["group"])
    title = f"{label} by {dimension_label(dimension).lower()}, relative to {versus}"
    chart = charts.ratio_chart(
        frame, title=title, fair_low=report.fair_low, fair_high=report.fair_high, metric_label=label
    )
    return Figure(charts.to_svg(chart, description=title), title)


def estimate_frame(view: TargetView, dimension: str, metric: str) -> pl.DataFrame:
    """Each published group's value of ``metric`` with its CI (the value when a bound is
    missing), for a dot-and-interval chart."""
    rows = [
        {
            "group": group_label(dimension, group["group"]),
            "group_order": group["group_order"] or 0,
            "value": row["value"],
            "ci_low": row["ci_low"] if is_number(row["ci_low"]) else row["value"],
            "ci_high": row["ci_high"] if is_number(row["ci_high"]) else row["value"],
        }
        for group in wide_groups(view, dimension)
        if (row := group["metrics"].get(metric)) is not None
        and not suppressed(group, metric)
        and is_number(row["value"])
    ]
    return pl.DataFrame(rows, schema=ESTIMATE_SCHEMA)


def dimension_blocks(
    view: TargetView, report: ReportView, dimension: str, sdc: Rule
) -> dict[str, Any]:
    """A dimension's group table and the forest plot of its cases-reached ratios (either may be
    ``None``: the template says the table is not available and leaves the plot out)."""
    return {
        "table": group_table(view, report, dimension, sdc),
        "ratios": ratio_figure(view, report, dimension, "tpr"),
    }
