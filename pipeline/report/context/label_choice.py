"""Context of the label-choice section (Obermeyer et al. 2019): need by risk-score percentile
per group, and how far each group's need exceeds the reference's at the same score."""

from __future__ import annotations

from typing import Any, Final

import altair as alt
import polars as pl

from pipeline.disclosure import Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, Table, heading
from pipeline.report.context.labels import (
    NEED_LABELS,
    dimension_label,
    dimension_rank,
    group_label,
    relabel,
)
from pipeline.report.fmt import Cell, count_cell, is_number, rate_cell, text_cell
from pipeline.report.model import ReportView, TargetView

SUMMARY_HELP: Final = [
    ("People", "audited split"),
    (
        "Need gap, same score",
        "mean need minus the reference group's, averaged over score percentiles, 95% CI",
    ),
    ("Need ratio, same score", "above 1: sicker than the reference at the same score"),
    ("Need gap among the selected", "at the cut-off"),
    ("Share of list, ranked by score", ""),
    ("Share of list, ranked by true need", "synthetic data only"),
    ("Note", ""),
]


def need_figure(frame: pl.DataFrame, dimension: str, *, target: str, cutoff: Any) -> Figure:
    """A panel per need measure: mean need by score percentile, a line per group."""
    panels = []
    part = frame.filter(pl.col("dimension") == dimension)
    for need in sorted(set(part["need_measure"])):
        lines = relabel(part.filter(pl.col("need_measure") == need), dimension)
        need_label = NEED_LABELS.get(need, need)
        chart = charts.need_by_percentile_chart(
            lines.sort("group_order", "percentile"),
            need_label=need_label,
            cutoff=cutoff if is_number(cutoff) else None,
        )
        panels.append(chart.properties(title=need_label, width=340))
    title = f"Need by risk-score percentile, by {dimension_label(dimension).lower()}"
    figure = alt.hconcat(*panels).properties(title=title)
    return Figure(charts.to_svg(figure, description=f"{target}: {title}"), title)


def _note(row: dict[str, Any]) -> str:
    note = (
        "reference"
        if row["is_reference"]
        else "sicker at the same score"
        if row["disadvantaged"]
        else ""
    )
    if row["stable"] is False:
        note = "; ".join(filter(None, [note, "small group"]))
    return note


def summary_row(row: dict[str, Any], dimension: str, sdc: Rule) -> list[Cell]:
    """One group's need gap and ratio at the same score, and its share of the list."""
    return [
        text_cell(group_label(dimension, row["group"])),
        count_cell(row["n"], sdc),
        rate_cell(row["need_gap"], row["need_gap_ci_low"], row["need_gap_ci_high"], percent=False),
        rate_cell(
            row["need_ratio"], row["need_ratio_ci_low"], row["need_ratio_ci_high"], percent=False
        ),
        rate_cell(row["cutoff_gap"], percent=False),
        rate_cell(row["share_selected_by_score"]),
        rate_cell(row["share_selected_by_need"]),
        text_cell(_note(row)),
    ]


def summary_tables(summary: pl.DataFrame, *, target: str, sdc: Rule) -> list[Table]:
    """One table per (need measure, dimension) of the label-choice summary."""
    tables = []
    ordered = summary.sort("need_measure", "dimension", "group_order", "group")
    for (need, code), part in ordered.group_by(["need_measure", "dimension"], maintain_order=True):
        dimension = str(code)
        rows = [summary_row(row, dimension, sdc) for row in part.iter_rows(named=True)]
        need_label = NEED_LABELS.get(str(need), str(need))
        caption = (
            f"{target}: {need_label.lower()} at the same score, by "
            f"{dimension_label(dimension).lower()}"
        )
        columns = [(dimension_label(dimension), ""), *SUMMARY_HELP]
        tables.append(Table(columns, rows, caption=caption, compact=True))
    return tables


def label_choice_target(view: TargetView, sdc: Rule) -> dict[str, Any] | None:
    """One target's part: a figure per dimension and the summary tables (``None`` when the
    audit has no label-choice curves)."""
    frame = view.label_choice
    if frame.is_empty():
        return None
    cutoff = view.operating_point.get("cutoff_percentile")
    dimensions = sorted(set(frame["dimension"].to_list()), key=dimension_rank)
    return {
        "figures": [need_figure(frame, d, target=view.target, cutoff=cutoff) for d in dimensions],
        "tables": summary_tables(view.label_summary, target=view.target, sdc=sdc),
    }


def label_choice_section(report: ReportView, sdc: Rule) -> Section:
    """Obermeyer's label-choice audit: need by score percentile per group."""
    targets = [
        {
            "heading": heading(view),
            "audit": label_choice_target(view, sdc),
            "unaudited": "; ".join(dict.fromkeys(view.unaudited.values())),
        }
        for view in report.targets
    ]
    return Section(
        "label-choice",
        "Does the score reflect need?",
        "sections/label_choice.html.j2",
        {"targets": targets},
    )
