"""The ethnicity x deprivation heat grids: suppressed cells are drawn grey (not left white) and
both grids list ethnic groups in one fixed order."""

from __future__ import annotations

import polars as pl

from pipeline.contract import BROAD_ETHNIC_GROUPS
from pipeline.report import charts
from pipeline.report.context.intersection import GRID_SCHEMA, grid_cell


def _group(name: str, value: float | None) -> dict:
    row = {"value": value, "ci_low": None, "ci_high": None, "suppressed": value is None}
    counts = {"n": "100" if value is not None else "*", "n_events": "20", "n_selected": "10"}
    return {"group": name, **counts, "metrics": {"tpr": row}}


def test_suppressed_cells_render_grey() -> None:
    frame = pl.DataFrame(
        [
            grid_cell(_group("White, IMD 1", 0.3), "tpr"),
            grid_cell(_group("Asian, IMD 2", None), "tpr"),
        ],
        schema=GRID_SCHEMA,
    )
    chart = charts.heat_grid_chart(
        frame,
        x="imd",
        y="ethnicity",
        x_title="IMD",
        title="t",
        value_label="v",
        reference=0.3,
        percent=True,
    )
    svg = str(charts.to_svg(chart, description="grid"))
    assert "#d9d9d9" in svg


def test_both_grids_share_the_contracts_ethnic_order() -> None:
    names = ["Not recorded", "Black", "White", "Asian"]
    for metric_value in (0.1, None):
        cells = [grid_cell(_group(f"{n}, IMD 1", metric_value), "tpr") for n in names]
        order = [c["ethnicity"] for c in sorted(cells, key=lambda c: c["group_order"])]
        assert order == [g for g in BROAD_ETHNIC_GROUPS if g in names]
