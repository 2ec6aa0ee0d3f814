"""Context of the performance section: test-split measures, curves and calibration by group."""

from __future__ import annotations

from typing import Any, Final

import altair as alt
import polars as pl

from pipeline.disclosure import Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, Table, heading
from pipeline.report.context.groups import estimate_frame
from pipeline.report.context.labels import PERFORMANCE_LABELS, dimension_label, relabel
from pipeline.report.fmt import rate_cell, text_cell
from pipeline.report.model import ReportView, TargetView

CALIBRATION_DIMENSIONS: Final = ("imd_quintile", "ethnicity_group")


def performance_table(view: TargetView) -> Table | None:
    """Each test-split measure with its CI and how to read it (``None`` without metrics)."""
    if view.performance.is_empty():
        return None
    rows = []
    for row in view.performance.iter_rows(named=True):
        label, percent, meaning = PERFORMANCE_LABELS.get(
            row["metric"], (row["metric"].replace("_", " "), False, "")
        )
        digits = 1 if percent else 3
        cell = rate_cell(
            row["value"], row["ci_low"], row["ci_high"], percent=percent, digits=digits
        )
        rows.append([text_cell(label), cell, text_cell(meaning)])
    columns = [("Measure", ""), ("Estimate (95% CI)", ""), ("Reading it", "")]
    caption = f"{view.target}: test-split performance"
    return Table(columns, rows, caption=caption, compact=True)


def curves_figure(view: TargetView) -> Figure | None:
    """Calibration curve and cumulative gain side by side (``None`` when neither exists)."""
    panels = []
    curve = view.curves.get("calibration")
    if curve is not None and not curve.is_empty():
        panels.append(
            charts.curve_chart(
                curve,
                x="mean_predicted",
                y="observed_rate",
                x_title="Predicted risk",
                y_title="Observed rate",
                title="Calibration (test split)",
                diagonal=True,
                percent=True,
            )
        )
    gain = view.curves.get("cumulative_gain")
    if gain is not None and not gain.is_empty():
        panels.append(
            charts.curve_chart(
                gain,
                x="share_selected",
                y="share_of_events",
                x_title="Share of people selected (highest risk first)",
                y_title="Share of events reached",
                title="Cumulative gain",
                diagonal=True,
                percent=True,
            )
        )
    if not panels:
        return None
    description = f"{view.target}: calibration and cumulative gain"
    return Figure(charts.to_svg(alt.hconcat(*panels), description=description), description)


def group_calibration_figures(calibration: pl.DataFrame) -> list[Figure]:
    """A calibration chart (a line per group) for each dimension present."""
    figures = []
    for dimension in CALIBRATION_DIMENSIONS:
        part = calibration.filter(pl.col("dimension") == dimension)
        if part.is_empty():
            continue
        title = f"Calibration by {dimension_label(dimension).lower()}"
        chart = charts.calibration_chart(relabel(part, dimension), title=title)
        figures.append(Figure(charts.to_svg(chart, description=title), title))
    return figures


def oe_figure(view: TargetView) -> Figure | None:
    """Observed / expected by ethnic group, when the audit has no calibration curves."""
    oe = estimate_frame(view, "ethnicity_group", "oe_ratio")
    if oe.is_empty():
        return None
    title = "Calibration (observed / expected) by ethnic group"
    chart = charts.estimate_chart(oe, title=title, x_title="Observed / expected", percent=False)
    return Figure(charts.to_svg(chart, description=title), title)


def performance_target(view: TargetView) -> dict[str, Any]:
    """One target's part: the measures table, the curves, calibration by group."""
    by_group = view.calibration
    return {
        "heading": heading(view),
        "target": view.target,
        "table": performance_table(view),
        "curves": curves_figure(view),
        "calibration": group_calibration_figures(by_group) if not by_group.is_empty() else [],
        "oe": oe_figure(view) if by_group.is_empty() else None,
    }


def performance_section(report: ReportView, sdc: Rule) -> Section:
    """Model performance on the test split, with CIs, and calibration by group."""
    targets = [performance_target(view) for view in report.targets]
    context = {"targets": targets}
    return Section("performance", "Model performance", "sections/performance.html.j2", context)
