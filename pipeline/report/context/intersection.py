"""Context of the intersection section: ethnic group x IMD quintile heat grids and their table."""

from __future__ import annotations

from typing import Any, Final

import altair as alt
import polars as pl

from pipeline.contract import BROAD_ETHNIC_GROUPS, TableSchema
from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, heading
from pipeline.report.context.groups import Group, group_table, suppressed, wide_groups
from pipeline.report.context.labels import METRIC_LABELS
from pipeline.report.fmt import is_number, pct_text, to_float
from pipeline.report.model import ReportView, TargetView

INTERSECTION: Final = "ethnicity_group_x_imd_quintile"
ETHNIC_ORDER: Final = {name: i for i, name in enumerate(BROAD_ETHNIC_GROUPS)}
GRID_METRICS: Final = ("tpr", "selection_rate")
GRID_SCHEMA: Final[TableSchema] = {
    "ethnicity": pl.String,
    "group_order": pl.Int32,
    "imd": pl.String,
    "value": pl.Float64,
    "text": pl.String,
}


def grid_cell(group: Group, metric: str) -> dict[str, Any]:
    """One cell of the grid: its ethnic group, IMD quintile, value and printed text."""
    ethnicity, _, quintile = group["group"].rpartition(", IMD ")
    row = group["metrics"].get(metric)
    hidden = suppressed(group, metric)
    value = None if row is None or hidden else row["value"]
    name = ethnicity or group["group"]
    return {
        "ethnicity": name,
        # one fixed order (the contract's) in both grids, whatever each grid holds
        "group_order": ETHNIC_ORDER.get(name, len(ETHNIC_ORDER)),
        "imd": quintile or "?",
        "value": value if is_number(value) else None,
        "text": SUPPRESSED if hidden else pct_text(value, digits=0),
    }


def grid_chart(view: TargetView, groups: list[Group], metric: str) -> charts.LayeredChart:
    """A heat grid of ``metric``, coloured against the overall value (else the cells' mean)."""
    frame = pl.DataFrame([grid_cell(group, metric) for group in groups], schema=GRID_SCHEMA)
    overall = view.audit_headline.get(f"overall_{metric}")
    known = frame["value"].drop_nulls()
    reference = (
        float(overall) if is_number(overall) else (to_float(known.mean()) if len(known) else 0.0)
    )
    return charts.heat_grid_chart(
        frame,
        x="imd",
        y="ethnicity",
        x_title="IMD quintile (1 = most deprived)",
        title=f"{METRIC_LABELS[metric]} by ethnic group and IMD quintile",
        value_label=METRIC_LABELS[metric],
        reference=reference,
        percent=True,
    )


def grids_figure(view: TargetView, groups: list[Group]) -> Figure:
    """Cases reached and selection side by side, each on its own colour scale."""
    grids = [grid_chart(view, groups, metric) for metric in GRID_METRICS]
    description = f"{view.target}: cases reached and selection by ethnic group and IMD quintile"
    chart = alt.hconcat(*grids).resolve_scale(color="independent")
    return Figure(charts.to_svg(chart, description=description), description)


def intersection_target(view: TargetView, report: ReportView, sdc: Rule) -> dict[str, Any]:
    """One target's part: the grids and the (collapsed) table behind them, or ``None`` parts
    when the audit has no intersection."""
    groups = wide_groups(view, INTERSECTION)
    return {
        "heading": heading(view),
        "grids": grids_figure(view, groups) if groups else None,
        "table": group_table(view, report, INTERSECTION, sdc, sortable=True),
        "unaudited": view.unaudited.get(INTERSECTION),
    }


def intersection_section(report: ReportView, sdc: Rule) -> Section:
    """Ethnicity x deprivation: heat grids of cases reached and selection."""
    targets = [intersection_target(view, report, sdc) for view in report.targets]
    return Section(
        "intersection",
        "Ethnicity and deprivation together",
        "sections/intersection.html.j2",
        {"targets": targets},
    )
