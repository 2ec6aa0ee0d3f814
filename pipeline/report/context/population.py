"""Context of the population section: cohort sizes and the audited population's mix."""

from __future__ import annotations

from typing import Final

import polars as pl

from pipeline.disclosure import Rule
from pipeline.report.context import data_quality, recording
from pipeline.report.context.blocks import Section, Table
from pipeline.report.context.labels import dimension_label, group_label
from pipeline.report.fmt import Cell, count_cell, count_text, rate_cell, text_cell
from pipeline.report.model import ReportView

MIX_DIMENSIONS: Final = ("imd_quintile", "region", "ethnicity_group", "age_band", "sex")
COHORT_COLUMNS: Final = [
    ("Target", ""),
    ("Outcome", ""),
    ("Eligible people", "the target's cohort (rounded to 5)"),
    ("Audited", "people in the split the audit measures (the test split)"),
    ("With outcome", "audited people who had the outcome"),
    ("Selected", "audited people the outreach capacity selects"),
]


def cohort_table(report: ReportView, sdc: Rule) -> Table:
    """Each target's eligible, audited, event and selected counts."""
    rows = [
        [
            text_cell(view.target),
            text_cell(view.description or view.outcome),
            *[
                count_cell(view.counts.get(key), sdc)
                for key in ("n_eligible", "n_audited", "n_events", "n_selected")
            ],
        ]
        for view in report.targets
    ]
    return Table(COHORT_COLUMNS, rows, caption="Eligible cohorts")


def with_shares(part: pl.DataFrame) -> pl.DataFrame:
    """Add ``share``: a group's published count over its target's total of published counts
    (null where the count is '*' or the total is 0)."""
    count = pl.col("n").cast(pl.Int64, strict=False)
    total = count.sum().over("target")
    return part.with_columns(
        pl.when(count.is_not_null() & (total > 0)).then(count / total).alias("share")
    )


def mix_table(part: pl.DataFrame, dimension: str, targets: list[str], sdc: Rule) -> Table:
    """Audited people by the groups of one dimension: a count and a share per target."""
    shared = with_shares(part)
    cells = {
        (row["group"], row["target"]): (row["n"], row["share"])
        for row in shared.iter_rows(named=True)
    }
    rows = []
    for group in part.sort("group_order", "group")["group"].unique(maintain_order=True):
        row: list[Cell] = [text_cell(group_label(dimension, str(group)))]
        for target in targets:
            n, share = cells.get((group, target), (None, None))
            row += [count_cell(n, sdc), rate_cell(share, of=(n,))]
        rows.append(row)
    columns = [(dimension_label(dimension), "")]
    for target in targets:
        columns += [(f"People: {target}", "audited split, rounded to 5"), ("Share", "")]
    caption = f"Audited people by {dimension_label(dimension).lower()}"
    return Table(columns, rows, caption=caption, compact=True)


def mix_tables(mix: pl.DataFrame, sdc: Rule) -> list[Table]:
    """One :func:`mix_table` per dimension present in ``mix``, in the report's order."""
    targets = mix["target"].unique(maintain_order=True).to_list()
    return [
        mix_table(part, dimension, targets, sdc)
        for dimension in MIX_DIMENSIONS
        if not (part := mix.filter(pl.col("dimension") == dimension)).is_empty()
    ]


def population_section(report: ReportView, sdc: Rule) -> Section:
    """Size and mix of the population and of each target's eligible cohort; data quality."""
    total = report.population_total
    return Section(
        "population",
        "The population",
        "sections/population.html.j2",
        {
            "synthetic": report.source == "synthetic",
            "total": None if total is None else count_text(total, sdc),
            "cohorts": cohort_table(report, sdc),
            "mix_missing": report.population.is_empty(),
            "mix": mix_tables(report.population, sdc),
            "quality": data_quality.quality_context(report.data_quality, sdc),
            "recording": recording.recording_table(report.synthetic_calibration or {}),
        },
        lead="Who is in the data, and how complete the records are.",
    )
