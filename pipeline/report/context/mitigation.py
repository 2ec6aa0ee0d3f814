"""Context of the mitigation section: each strategy's events reached, gaps and list shares."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.disclosure import SUPPRESSED, Rule
from pipeline.report.context.blocks import Section, Table, heading
from pipeline.report.context.labels import STRATEGY_LABELS, group_label
from pipeline.report.fmt import Cell, count_cell, rate_cell, text_cell
from pipeline.report.model import ReportView, TargetView


def mitigation_columns(
    view: TargetView, share_groups: list[str], *, averted: bool = False
) -> list[tuple[str, str]]:
    """Strategy, events reached (and averted, when the audit simulates it), the gap(s) in
    points, then a list share per group."""
    events_help = (
        "events expected on the list from people's true risk (simulation)"
        if view.truth_events
        else "people on the list who had the recorded outcome"
    )
    gaps = [
        (
            "Gap in recorded cases reached (points)",
            "best minus worst IMD quintile: share of people with the recorded outcome selected",
        )
    ]
    if "true need" in view.case_definition:
        gaps.append(
            (
                "Gap in need reached (points)",
                f"best minus worst IMD quintile: share of the {view.case_definition} selected",
            )
        )
    shares = [
        (f"List share: {group_label('imd_quintile', g) if g.isdigit() else g}", "")
        for g in share_groups
    ]
    return [
        ("Strategy", ""),
        ("Events reached", events_help),
        ("Share of all events", events_help),
        *([("Events averted (simulated)", "events the outreach would prevent")] if averted else []),
        *gaps,
        *shares,
    ]


def strategy_row(
    part: pl.DataFrame,
    *,
    gap_keys: tuple[str, ...],
    share_groups: list[str],
    sdc: Rule,
    averted: bool = False,
) -> list[Cell]:
    """One strategy's row (``part``: its rows, one per group share)."""
    first = part.row(0, named=True)
    shares = dict(zip(part["group"].to_list(), part["selection_share"].to_list(), strict=True))
    strategy = first["strategy"]
    return [
        text_cell(first["label"] or STRATEGY_LABELS.get(strategy, strategy)),
        count_cell(first["events_reached"], sdc),
        rate_cell(
            first["share_of_events_reached"], suppressed=first["events_reached"] == SUPPRESSED
        ),
        *([count_cell(first.get("events_averted"), sdc)] if averted else []),
        *[
            rate_cell(None if first[key] is None else first[key] * 100, percent=False, digits=1)
            for key in gap_keys
        ],
        *[rate_cell(shares.get(group)) for group in share_groups],
    ]


def mitigation_table(view: TargetView, sdc: Rule) -> Table | None:
    """The trade-off table (``None`` when the audit has no mitigation results)."""
    frame = view.mitigation
    if frame.is_empty():
        return None
    share_groups = [
        g
        for g in frame["group"].unique(maintain_order=True).to_list()
        if g is not None and "imd_quintile" not in view.unaudited  # no IMD: no list shares by it
    ]
    truth = "true need" in view.case_definition
    gap_keys = ("recorded_gap", "tpr_gap") if truth else ("recorded_gap",)
    averted = "events_averted" in frame.columns and frame["events_averted"].is_not_null().any()
    rows = [
        strategy_row(
            frame.filter(pl.col("strategy") == strategy),
            gap_keys=gap_keys,
            share_groups=share_groups,
            sdc=sdc,
            averted=averted,
        )
        for strategy in frame["strategy"].unique(maintain_order=True).to_list()
    ]
    columns = mitigation_columns(view, share_groups, averted=averted)
    return Table(columns, rows, caption=f"{view.target}: mitigation trade-off")


def mitigation_section(report: ReportView, sdc: Rule) -> Section:
    """The mitigation trade-off table: events reached against the TPR gap and group shares."""
    targets: list[dict[str, Any]] = [
        {"heading": heading(view), "table": mitigation_table(view, sdc)} for view in report.targets
    ]
    context = {"targets": targets}
    return Section(
        "mitigation", "Mitigation: the trade-off", "sections/mitigation.html.j2", context
    )
