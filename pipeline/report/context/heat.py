"""WHO HEAT summary measures of an unordered dimension as a table."""

from __future__ import annotations

from typing import Final

import polars as pl

from pipeline.report.context.blocks import Table
from pipeline.report.context.labels import (
    HEAT_HELP,
    HEAT_LABELS,
    INDICATOR_LABELS,
    dimension_label,
    group_label,
)
from pipeline.report.fmt import Cell, rate_cell, text_cell
from pipeline.report.model import TargetView

PERCENT_MEASURES: Final = frozenset(
    {"mean_difference_from_best", "population_attributable_fraction"}
)
HEAT_COLUMNS: Final = [
    ("Indicator", ""),
    *[(label + " (95% CI)", HEAT_HELP[measure]) for measure, label in HEAT_LABELS.items()],
    ("Best group", "the group with the best value among groups large enough to compare"),
]


def _measure_cell(row: dict | None, measure: str) -> Cell:
    percent = measure in PERCENT_MEASURES
    digits = 1 if percent else 5
    if row is None:
        return rate_cell(None, percent=percent, digits=digits)
    return rate_cell(row["value"], row["ci_low"], row["ci_high"], percent=percent, digits=digits)


def heat_row(part: pl.DataFrame, indicator: str, dimension: str) -> list[Cell]:
    """One indicator's measures with CIs and the best group."""
    by_measure = {
        row["measure"]: row
        for row in part.filter(pl.col("indicator") == indicator).iter_rows(named=True)
    }
    best = next(iter(by_measure.values()))["best_group"] if by_measure else None
    return [
        text_cell(INDICATOR_LABELS[indicator]),
        *[_measure_cell(by_measure.get(measure), measure) for measure in HEAT_LABELS],
        text_cell(group_label(dimension, best) if best else ""),
    ]


def heat_table(view: TargetView, dimension: str) -> Table | None:
    """A row per indicator, a column per HEAT measure (``None`` when the audit has none)."""
    part = view.heat.filter(pl.col("dimension") == dimension)
    if part.is_empty():
        return None
    present = set(part["indicator"].to_list())
    rows = [
        heat_row(part, indicator, dimension)
        for indicator in INDICATOR_LABELS
        if indicator in present
    ]
    caption = (
        f"{view.target}: inequality summaries across {dimension_label(dimension).lower()} "
        "(WHO HEAT)"
    )
    return Table(HEAT_COLUMNS, rows, caption=caption)
