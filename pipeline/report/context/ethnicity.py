"""Context of the ethnicity section: the ethnic-group table, its plot and HEAT summaries."""

from __future__ import annotations

from typing import Any

from pipeline.disclosure import Rule
from pipeline.report.context.blocks import Section, heading
from pipeline.report.context.groups import dimension_blocks
from pipeline.report.context.heat import heat_table
from pipeline.report.model import ReportView, TargetView


def ethnicity_target(view: TargetView, report: ReportView, sdc: Rule) -> dict[str, Any]:
    """One target's part: the ethnic-group table and plot, HEAT by ethnic group."""
    return {
        "heading": heading(view),
        "ethnicity": dimension_blocks(view, report, "ethnicity_group", sdc),
        "heat": heat_table(view, "ethnicity_group"),
        "unaudited": view.unaudited.get("ethnicity_group"),
    }


def ethnicity_section(report: ReportView, sdc: Rule) -> Section:
    """Equity by ethnic group (5 broad groups and not recorded)."""
    targets = [ethnicity_target(view, report, sdc) for view in report.targets]
    context = {"targets": targets}
    return Section("ethnicity", "Equity by ethnicity", "sections/ethnicity.html.j2", context)
