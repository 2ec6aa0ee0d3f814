"""PNG charts of a trained model for MLflow: ROC and calibration of the test split.

Drawn from ``metrics/<target>/plots/*.csv`` (aggregate curves, a few hundred points), so nothing
row-level reaches MLflow; rendered with altair + vl-convert as the report's charts are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import altair as alt
import polars as pl
import vl_convert as vlc

SIZE: Final = 360


def _diagonal(x: str, y: str, *, end: float = 1.0) -> alt.Chart:
    """The dashed reference line from (0, 0) to (``end``, ``end``)."""
    return (
        alt.Chart(pl.DataFrame({x: [0.0, end], y: [0.0, end]}))
        .mark_line(color="#999999", strokeDash=[4, 4])
        .encode(x=f"{x}:Q", y=f"{y}:Q")
    )


def roc_chart(roc: pl.DataFrame, *, target: str) -> alt.LayerChart:
    """ROC curve (``fpr``, ``tpr``) with the chance diagonal."""
    curve = (
        alt.Chart(roc)
        .mark_line(color="#1f5fa6")
        .encode(
            x=alt.X("fpr:Q", title="False positive rate", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("tpr:Q", title="True positive rate", scale=alt.Scale(domain=[0, 1])),
        )
    )
    return alt.LayerChart(
        layer=[_diagonal("fpr", "tpr"), curve],
        title=f"ROC, test split - {target}",
        width=SIZE,
        height=SIZE,
    )


def calibration_chart(bins: pl.DataFrame, *, target: str) -> alt.LayerChart:
    """Observed against mean predicted risk per bin, with the perfect-calibration diagonal."""
    top = bins.select(pl.max_horizontal(pl.col("mean_predicted", "observed_rate").max())).item()
    end = min(1.0, float(top or 1.0) * 1.05)
    scale = alt.Scale(domain=[0, end], nice=False)
    points = (
        alt.Chart(bins)
        .mark_line(point=True, color="#1f5fa6")
        .encode(
            x=alt.X("mean_predicted:Q", title="Mean predicted risk", scale=scale),
            y=alt.Y("observed_rate:Q", title="Observed rate", scale=scale),
        )
    )
    return alt.LayerChart(
        layer=[_diagonal("mean_predicted", "observed_rate", end=end), points],
        title=f"Calibration, test split - {target}",
        width=SIZE,
        height=SIZE,
    )


def to_png(chart: alt.TopLevelMixin) -> bytes:
    """The chart as PNG bytes (vl-convert, no browser)."""
    return bytes(vlc.vegalite_to_png(vl_spec=chart.to_json(), scale=2))


def model_images(plots: Path, *, target: str) -> dict[str, bytes]:
    """``roc.png`` and ``calibration.png`` from the stage's plot tables under ``plots``."""
    return {
        "roc.png": to_png(roc_chart(pl.read_csv(plots / "roc.csv"), target=target)),
        "calibration.png": to_png(
            calibration_chart(pl.read_csv(plots / "calibration.csv"), target=target)
        ),
    }
