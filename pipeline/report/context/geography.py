"""Context of the geography section: regions and every ICB against the population value
(funnel plots, age/sex standardised), their tables, and the regions' HEAT summaries."""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from pipeline.disclosure import Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, heading
from pipeline.report.context.groups import group_table
from pipeline.report.context.heat import heat_table
from pipeline.report.context.labels import METRIC_LABELS, dimension_label, group_label
from pipeline.report.model import ReportView, TargetView

FUNNEL_ORDER: Final = ("tpr", "oe_ratio", "selection_rate", "base_rate")
"""Flagged metrics first, then the context (selection follows need; outcome rate)."""
AREA_WORDS: Final = {"region": "NHS region", "icb_code": "integrated care board (ICB)"}
FUNNEL_TITLES: Final = {
    "tpr": "Cases reached (equal opportunity)",
    "oe_ratio": "Observed / expected events (calibration)",
    "selection_rate": "Selected (context: should follow need)",
    "base_rate": "Outcome rate (context)",
}


def area_name(dimension: str, group: str, icb_names: dict[str, str]) -> str:
    """An area by name: the ICB's name (its code when unknown), else the group's label."""
    if dimension == "icb_code":
        return icb_names.get(group, group)
    return group_label(dimension, group)


def funnel_points(frame: pl.DataFrame, dimension: str, icb_names: dict[str, str]) -> pl.DataFrame:
    """The published, unsuppressed points of one funnel with their status and a name on the
    flagged ones."""
    shown = frame.filter(pl.col("ratio").is_not_null() & (pl.col("expected") > 0))
    outside = (pl.col("ratio") < pl.col("limit_95_low")) | (
        pl.col("ratio") > pl.col("limit_95_high")
    )
    names = {g: area_name(dimension, g, icb_names) for g in shown["group"].to_list()}
    return shown.select(
        pl.col("group").replace_strict(names, default=pl.col("group")).alias("group"),
        "expected",
        "ratio",
        pl.when(pl.col("flagged"))
        .then(pl.lit(charts.FUNNEL_STATUS[2]))
        .when(outside)
        .then(pl.lit(charts.FUNNEL_STATUS[1]))
        .otherwise(pl.lit(charts.FUNNEL_STATUS[0]))
        .alias("status"),
        pl.when(pl.col("flagged"))
        .then(pl.col("group").replace_strict(names, default=pl.col("group")))
        .otherwise(pl.lit(""))
        .alias("label"),
    )


def funnel_figure(view: TargetView, report: ReportView, dimension: str) -> Figure | None:
    """One small-multiple figure of a geography's funnel plots, a panel per metric."""
    part = view.funnel.filter(pl.col("dimension") == dimension)
    panels = []
    for metric in FUNNEL_ORDER:
        frame = part.filter(pl.col("metric") == metric)
        points = funnel_points(frame, dimension, report.icb_names)
        if points.is_empty():
            continue
        first = frame.row(0, named=True)
        curves = charts.funnel_curves(
            points["expected"].to_list(),
            variance_per_expected=float(first["variance_per_expected"]),
            tau2=float(first["tau2"] or 0.0),
        )
        panels.append(
            charts.funnel_chart(
                points,
                curves,
                title=FUNNEL_TITLES[metric],
                y_title=f"{METRIC_LABELS[metric]}: standardised ratio",
            )
        )
    if not panels:
        return None
    areas = AREA_WORDS.get(dimension, dimension_label(dimension).lower())
    title = f"{view.target}: every {areas} against the population value (funnel plots)"
    return Figure(charts.to_svg(charts.grid(panels), description=title), title)


def funnel_notes(view: TargetView, dimension: str) -> dict[str, Any]:
    """What the captions say: over-dispersion per metric, hidden points, flags."""
    part = view.funnel.filter(pl.col("dimension") == dimension)
    dispersed = part.filter(pl.col("overdispersed"))["metric"].unique(maintain_order=True).to_list()
    return {
        "overdispersed": [METRIC_LABELS[m].lower() for m in dispersed],
        "hidden": int(part.filter(pl.col("metric") == "tpr")["suppressed"].sum()),
        "flagged": int(part["flagged"].sum()),
    }


def geography_target(view: TargetView, report: ReportView, sdc: Rule) -> dict[str, Any]:
    """One target's part: funnel plots and tables of regions and ICBs, HEAT by region."""
    return {
        "heading": heading(view),
        "region_funnel": funnel_figure(view, report, "region"),
        "region_notes": funnel_notes(view, "region"),
        "region": group_table(view, report, "region", sdc),
        "icb_funnel": funnel_figure(view, report, "icb_code"),
        "icb_notes": funnel_notes(view, "icb_code"),
        "icb": group_table(view, report, "icb_code", sdc, sortable=True),
        "heat": heat_table(view, "region"),
        "region_unaudited": view.unaudited.get("region"),
        "icb_unaudited": view.unaudited.get("icb_code"),
    }


def geography_section(report: ReportView, sdc: Rule) -> Section:
    """Regions and every ICB against the population value (funnel plots), with their tables."""
    targets = [geography_target(view, report, sdc) for view in report.targets]
    context = {"targets": targets}
    return Section("geography", "Equity by geography", "sections/geography.html.j2", context)
