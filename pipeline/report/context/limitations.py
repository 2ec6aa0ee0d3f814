"""Context of the limitations section: the source, and what the inputs noted as missing."""

from __future__ import annotations

from pipeline.report.context.blocks import Section
from pipeline.report.model import ReportView


def limitations_section(report: ReportView) -> Section:
    """What the report cannot tell you (the standing limits are in the template)."""
    notes = [f"{view.target}: {note}" for view in report.targets for note in view.notes]
    context = {"synthetic": report.source == "synthetic", "notes": notes + list(report.notes)}
    return Section("limitations", "Limitations", "sections/limitations.html.j2", context)
