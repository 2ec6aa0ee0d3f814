"""Context of the deprivation section: SII/RII gradients, their chart, the IMD quintile table."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.disclosure import Rule
from pipeline.report import charts
from pipeline.report.context.blocks import Figure, Section, Table, heading
from pipeline.report.context.groups import dimension_blocks
from pipeline.report.context.labels import INDICATOR_LABELS
from pipeline.report.fmt import Cell, is_number, rate_cell, text_cell
from pipeline.report.model import ReportView, TargetView

GRADIENT_COLUMNS = [
    ("Indicator", ""),
    ("SII, points (95% CI)", "least minus most deprived end, in percentage points"),
    ("RII (95% CI)", "least / most deprived end"),
    ("Reading it", ""),
]


def gradient_line(view: TargetView, indicator: str) -> pl.DataFrame | None:
    """The SII line's two end points: y(0) = most deprived end, y(1) = least deprived end.

    From SII = b and RII = (a + b) / a: a = b / (RII - 1).
    """
    lines = view.gradient_lines if not view.gradient_lines.is_empty() else view.gradients
    frame = lines.filter(pl.col("indicator") == indicator)
    values = {row["measure"]: row["value"] for row in frame.iter_rows(named=True)}
    sii, rii = values.get("sii"), values.get("rii")
    if not (is_number(sii) and is_number(rii)) or abs(rii - 1.0) < 1e-9:
        return None
    intercept = sii / (rii - 1.0)
    return pl.DataFrame({"x": [0.0, 1.0], "y": [intercept, intercept + sii]})


def gradient_reading(indicator: str, sii: dict | None) -> str:
    """The SII in words for the table's last column (empty without a full interval)."""
    if not sii or not all(is_number(sii[k]) for k in ("value", "ci_low", "ci_high")):
        return ""
    gap = abs(sii["value"]) * 100
    if sii["ci_low"] <= 0 <= sii["ci_high"]:
        return "no clear gradient (the interval includes 0)"
    higher_in_deprived = sii["value"] < 0
    favourable = indicator in {"selection_rate", "need_reached"}
    where = "higher" if higher_in_deprived else "lower"
    text = f"{where} in the most deprived areas, by about {gap:.1f} points end to end"
    if favourable and not higher_in_deprived:
        text += " (the deprived end is under-served)"
    return text


def _estimate_cell(row: dict | None, *, scale: float, digits: int | None = None) -> Cell:
    if row is None:
        return rate_cell(None, percent=False, digits=digits)
    value, low, high = (
        row[key] * scale if is_number(row[key]) else row[key]
        for key in ("value", "ci_low", "ci_high")
    )
    return rate_cell(value, low, high, percent=False, digits=digits)


def gradient_table(view: TargetView) -> Table:
    """SII (in points) and RII of each indicator, with CIs and a reading."""
    rows = []
    for indicator, label in INDICATOR_LABELS.items():
        part = view.gradients.filter(pl.col("indicator") == indicator)
        measures = {row["measure"]: row for row in part.iter_rows(named=True)}
        if not measures:
            continue
        sii, rii = measures.get("sii"), measures.get("rii")
        rows.append(
            [
                text_cell(label),
                _estimate_cell(sii, scale=100, digits=1),
                _estimate_cell(rii, scale=1),
                text_cell(gradient_reading(indicator, sii)),
            ]
        )
    caption = f"{view.target}: gradients across IMD deciles"
    return Table(GRADIENT_COLUMNS, rows, caption=caption, compact=True)


def gradient_figure(view: TargetView) -> Figure | None:
    """A panel per indicator: group values by population rank, and the fitted SII line."""
    panels = []
    for indicator, label in INDICATOR_LABELS.items():
        part = view.gradient_points.filter(pl.col("indicator") == indicator).drop_nulls("value")
        if part.is_empty():
            continue
        line = gradient_line(view, indicator)
        panels.append(charts.gradient_panel(part.sort("rank_mid"), line, title=label, percent=True))
    if not panels:
        return None
    description = f"{view.target}: deprivation gradients"
    return Figure(charts.to_svg(charts.grid(panels), description=description), description)


def deprivation_target(view: TargetView, report: ReportView, sdc: Rule) -> dict[str, Any]:
    """One target's part: the gradients (``None`` without them) and the IMD quintile table."""
    has_gradients = not view.gradients.is_empty()
    return {
        "heading": heading(view),
        "gradients": gradient_table(view) if has_gradients else None,
        "gradient_figure": gradient_figure(view) if has_gradients else None,
        "imd": dimension_blocks(view, report, "imd_quintile", sdc),
        "imd_unaudited": view.unaudited.get("imd_quintile"),
    }


def deprivation_section(report: ReportView, sdc: Rule) -> Section:
    """Equity by deprivation: SII/RII gradients, charts and the IMD quintile table."""
    targets = [deprivation_target(view, report, sdc) for view in report.targets]
    context = {"targets": targets}
    return Section("deprivation", "Equity by deprivation", "sections/deprivation.html.j2", context)
