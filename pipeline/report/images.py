"""The report's equity charts as PNG images, for the training run of each registered model.

A model reviewer opening the run in MLflow sees how the model's selection falls across
deprivation and ethnic groups next to its ROC and calibration charts. The images are the
report's own figures (aggregate, disclosure-controlled, already scanned), rendered to PNG.
"""

from __future__ import annotations

from typing import Final

import vl_convert as vlc

from pipeline.report.context.blocks import Figure
from pipeline.report.context.deprivation import gradient_figure
from pipeline.report.context.groups import ratio_figure
from pipeline.report.model import ReportView, TargetView

EQUITY_ARTIFACT_DIR: Final = "equity"


def equity_figures(view: TargetView, report: ReportView) -> dict[str, Figure]:
    """File name -> figure, for the figures this target has."""
    figures = {
        "deprivation_gradients.png": gradient_figure(view),
        "cases_reached_by_imd_quintile.png": ratio_figure(view, report, "imd_quintile", "tpr"),
        "cases_reached_by_ethnic_group.png": ratio_figure(view, report, "ethnicity_group", "tpr"),
    }
    return {name: figure for name, figure in figures.items() if figure is not None}


def equity_images(view: TargetView, report: ReportView) -> dict[str, bytes]:
    """File name -> PNG bytes of :func:`equity_figures`."""
    return {
        name: bytes(vlc.svg_to_png(str(figure.svg), scale=1.5))
        for name, figure in equity_figures(view, report).items()
    }
