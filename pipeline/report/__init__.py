"""Stage ``report``: the self-contained, disclosure-controlled equity report (HTML).

``run(params, paths)`` reads everything under ``reports/`` plus the models' metrics, renders
``reports/equity_report.html`` (inline CSS and SVG charts, nothing fetched when opened), refuses
to publish when the disclosure scanner (:mod:`pipeline.report.scan`) finds a violation, and logs
the report to each model's MLflow run.
"""

from pipeline.report.build import render_report, run

__all__ = ["render_report", "run"]
