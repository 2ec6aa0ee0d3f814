"""Context of the geography section: regions, every ICB, and the regions' HEAT summaries."""

from __future__ import annotations

from typing import Any

from pipeline.disclosure import Rule
from pipeline.report.context.blocks import Section, heading
from pipeline.report.context.groups import dimension_blocks, group_table
from pipeline.report.context.heat import heat_table
from pipeline.report.model import ReportView, TargetView


def geography_target(view: TargetView, report: ReportView, sdc: Rule) -> dict[str, Any]:
    """One target's part: the region table and plot, the sortable ICB table, HEAT by region."""
    return {
        "heading": heading(view),
        "region": dimension_blocks(view, report, "region", sdc),
        "icb": group_table(view, report, "icb_code", sdc, sortable=True),
        "heat": heat_table(view, "region"),
    }


def geography_section(report: ReportView, sdc: Rule) -> Section:
    """Regions and every ICB (sortable table with heat-shaded ratios)."""
    targets = [geography_target(view, report, sdc) for view in report.targets]
    context = {"targets": targets}
    return Section("geography", "Equity by geography", "sections/geography.html.j2", context)
