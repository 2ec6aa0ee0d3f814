"""Context of the outreach section: who the lists reach against who is eligible and in need."""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, Table, heading
from pipeline.report.context.capacity import capacity_context
from pipeline.report.context.labels import dimension_label, group_label, relabel
from pipeline.report.fmt import (
    Cell,
    count_cell,
    is_number,
    rate_cell,
    ratio_style,
    text_cell,
)
from pipeline.report.model import ReportView, TargetView

OUTREACH_DIMENSIONS: Final = ("imd_quintile", "ethnicity_group", "region")
SHARES: Final = ("share_eligible", "share_list", "share_need")


def share_figure(
    part: pl.DataFrame, dimension: str, *, need_label: str, target: str
) -> Figure | None:
    """Bars of each group's share of the eligible, of the list and of need (``None`` when no
    share is known)."""
    names = {"share_eligible": "Share of eligible", "share_list": "Share of outreach list"}
    long = (
        relabel(part, dimension)
        .unpivot(
            index=["group", "group_order"],
            on=list(SHARES),
            variable_name="measure",
            value_name="share",
        )
        .with_columns(
            pl.col("measure").replace_strict(
                names | {"share_need": need_label}, return_dtype=pl.String
            )
        )
        .drop_nulls("share")
    )
    if long.is_empty():
        return None
    title = f"Outreach list make-up by {dimension_label(dimension).lower()}"
    chart = charts.share_vs_need_chart(long, title=title)
    return Figure(charts.to_svg(chart, description=f"{target}: {title}"), title)


def make_up_row(row: dict[str, Any], dimension: str, report: ReportView, sdc: Rule) -> list[Cell]:
    """A group's list count, its three shares and list share / need share."""
    share_list, share_need = row["share_list"], row["share_need"]
    ratio = (
        share_list / share_need
        if is_number(share_list) and is_number(share_need) and share_need > 0
        else None
    )
    # A row whose list count is suppressed shows no shares at all: the published table never
    # pairs a '*' count with a rate (the scanner's rule).
    hidden = row["n_list"] == SUPPRESSED
    style = ratio_style(ratio, low=report.fair_low, high=report.fair_high)
    return [
        text_cell(group_label(dimension, row["group"])),
        count_cell(row["n_list"], sdc),
        *[rate_cell(row[share], suppressed=hidden) for share in SHARES],
        rate_cell(ratio, percent=False, suppressed=hidden, style=style),
    ]


def make_up_table(
    part: pl.DataFrame,
    dimension: str,
    *,
    need_label: str,
    target: str,
    report: ReportView,
    sdc: Rule,
) -> Table:
    """The list make-up of one dimension's groups."""
    columns = [
        ("Group", ""),
        ("On the list", "people selected (rounded to 5; * = 1-7)"),
        ("Share of eligible", ""),
        ("Share of list", ""),
        (need_label, ""),
        ("List share / need share", "below 0.8: under-served"),
    ]
    rows = [make_up_row(row, dimension, report, sdc) for row in part.iter_rows(named=True)]
    caption = f"{target}: list make-up by {dimension_label(dimension).lower()}"
    return Table(columns, rows, caption=caption, compact=True)


def outreach_target(view: TargetView, report: ReportView, sdc: Rule) -> list[dict[str, Any]]:
    """One target's figure and table per dimension (dimensions without shares left out)."""
    need_label = "Share of true need" if report.has_truth else "Share of events (test split)"
    parts = []
    for dimension in OUTREACH_DIMENSIONS:
        part = view.outreach.filter(pl.col("dimension") == dimension).sort("group_order", "group")
        if part.is_empty():
            continue
        figure = share_figure(part, dimension, need_label=need_label, target=view.target)
        if figure is None:
            continue
        table = make_up_table(
            part, dimension, need_label=need_label, target=view.target, report=report, sdc=sdc
        )
        parts.append({"figure": figure, "table": table})
    return parts


def outreach_section(report: ReportView, sdc: Rule) -> Section:
    """Who the outreach lists reach, against who is eligible and who is in need."""
    meta = report.outreach_meta
    targets = [
        {"heading": heading(view), "dimensions": outreach_target(view, report, sdc)}
        for view in report.targets
        if not view.outreach.is_empty()
    ]
    context = {
        "capacity": capacity_context(meta),
        "policy": meta.get("policy", "risk"),
        "missing": not meta,
        "targets": targets,
    }
    return Section("outreach", "Outreach lists against need", "sections/outreach.html.j2", context)
