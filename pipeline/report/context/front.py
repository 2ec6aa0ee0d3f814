"""Context of the parts around the sections: title line, introduction and methods."""

from __future__ import annotations

from typing import Any

from pipeline.disclosure import Rule
from pipeline.report.context.blocks import heading
from pipeline.report.context.capacity import capacity_context
from pipeline.report.model import ReportView


def subtitle(view: ReportView) -> str:
    """'Equity audit of 2 risk models · synthetic data'."""
    plural = "s" if len(view.targets) != 1 else ""
    source = "synthetic data" if view.source == "synthetic" else "data extract"
    return f"Equity audit of {len(view.targets)} risk model{plural} · {source}"


def intro_context(view: ReportView) -> dict[str, Any]:
    """The models audited, the audit's operating point and the outreach lists' capacity."""
    operating = view.targets[0].operating_point if view.targets else {}
    return {
        "targets": [heading(target) for target in view.targets],
        "operating": capacity_context(operating),
        "lists": capacity_context(view.outreach_meta),
        "policy": str(view.outreach_meta.get("policy", "risk")).replace("_", " "),
        "synthetic": view.source == "synthetic",
    }


def methods_context(view: ReportView, sdc: Rule) -> dict[str, Any]:
    """The confidence level, the fair band and the disclosure rule in force."""
    return {
        "level": f"{round(view.confidence * 100)}%",
        "fair_low": view.fair_low,
        "fair_high": view.fair_high,
        "round_to": sdc.round_to,
        "largest_suppressed": sdc.suppress_below - 1,
    }
