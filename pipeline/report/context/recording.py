"""Synthetic data only: how much illness the records miss, most vs least deprived decile."""

from __future__ import annotations

from typing import Any, Final

from pipeline.report.context.blocks import Table
from pipeline.report.fmt import is_number, rate_cell, text_cell

RECORDING_COLUMNS: Final = [
    ("Condition", ""),
    ("Decile 1: true", "most deprived tenth of areas"),
    ("Decile 1: recorded", ""),
    ("Decile 1: share recorded", ""),
    ("Decile 10: true", "least deprived tenth"),
    ("Decile 10: recorded", ""),
    ("Decile 10: share recorded", ""),
    ("QOF decile 1", "published recorded prevalence"),
    ("QOF decile 10", ""),
]


def recorded_share(row: dict[str, Any]) -> float | None:
    """Recorded over true prevalence (``None`` when either is missing or the truth is 0)."""
    true, recorded = row.get("true_prevalence"), row.get("recorded_prevalence")
    return recorded / true if is_number(true) and is_number(recorded) and true else None


def recording_table(calibration: dict[str, Any]) -> Table | None:
    """True and recorded prevalence per condition at both ends of deprivation (``None``
    without the synthesizer's calibration summary)."""
    conditions = calibration.get("conditions") or {}
    if not conditions:
        return None
    rows = []
    for name, block in sorted(conditions.items()):
        deciles = {row.get("imd_decile"): row for row in block.get("by_imd_decile") or []}
        most, least = deciles.get(1) or {}, deciles.get(10) or {}
        rows.append(
            [
                text_cell(name.replace("_", " ").capitalize()),
                rate_cell(most.get("true_prevalence")),
                rate_cell(most.get("recorded_prevalence")),
                rate_cell(recorded_share(most), digits=0),
                rate_cell(least.get("true_prevalence")),
                rate_cell(least.get("recorded_prevalence")),
                rate_cell(recorded_share(least), digits=0),
                rate_cell(most.get("reference_prevalence")),
                rate_cell(least.get("reference_prevalence")),
            ]
        )
    caption = "True and recorded prevalence, most vs least deprived decile"
    return Table(RECORDING_COLUMNS, rows, caption=caption)
