"""Stage ``report``: the normalised view -> one self-contained HTML file, scanned, then logged.

:func:`render_report` is pure (view in, HTML out): the functions of
:mod:`pipeline.report.context` turn the view into template context and the Jinja templates under
``templates/`` hold every word and tag (docs/report.md). :func:`run` does the reading, the
disclosure scan (the stage refuses to publish when the scan finds anything), the atomic write and
the MLflow logging.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jinja2

from pipeline import console
from pipeline.disclosure import Rule
from pipeline.errors import StageError
from pipeline.io import Paths, write_text
from pipeline.report import checklist, images, provenance
from pipeline.report.context.blocks import Section
from pipeline.report.context.deprivation import deprivation_section
from pipeline.report.context.ethnicity import ethnicity_section
from pipeline.report.context.front import intro_context, methods_context, subtitle
from pipeline.report.context.geography import geography_section
from pipeline.report.context.impact import impact_section
from pipeline.report.context.intersection import intersection_section
from pipeline.report.context.label_choice import label_choice_section
from pipeline.report.context.limitations import limitations_section
from pipeline.report.context.mitigation import mitigation_section
from pipeline.report.context.outreach import outreach_section
from pipeline.report.context.performance import performance_section
from pipeline.report.context.population import population_section
from pipeline.report.context.summary import summary_context
from pipeline.report.findings import findings_context
from pipeline.report.inputs import load_view
from pipeline.report.model import ReportView
from pipeline.report.scan import Violation, scan_html, scan_reports

if TYPE_CHECKING:
    from pipeline.config import Params

log = logging.getLogger(__name__)

REPORT_FILE: Final = "equity_report.html"
ARTIFACT_DIR: Final = "report"
TEMPLATES: Final = Path(__file__).parent / "templates"
RENDER_THREADS: Final = 2


def _environment() -> jinja2.Environment:
    # trim_blocks/lstrip_blocks: a line holding only a {% tag %} leaves nothing in the output, so
    # the templates write one block of HTML per line.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


SECTION_BUILDERS: Final[tuple[Callable[[ReportView, Rule], Section], ...]] = (
    population_section,
    performance_section,
    deprivation_section,
    geography_section,
    ethnicity_section,
    intersection_section,
    label_choice_section,
    outreach_section,
    mitigation_section,
    impact_section,
)
"""The sections in report order (limitations, which draws nothing, comes last)."""


def build_sections(view: ReportView, sdc: Rule) -> list[Section]:
    """Every section's context, in report order."""
    # vl-convert renders outside the GIL: two sections at a time keep both cores busy.
    # Results come back in order, so the output does not depend on scheduling.
    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        built = list(pool.map(lambda build: build(view, sdc), SECTION_BUILDERS))
    return [*built, limitations_section(view)]


def render_report(view: ReportView, *, sdc: Rule) -> str:
    """The report HTML for ``view`` (pure: no file is read or written).

    Parameters
    ----------
    view
        The normalised inputs (see :func:`pipeline.report.inputs.load_view`).
    sdc
        The disclosure rule applied to every number shown.

    Returns
    -------
    str
        One self-contained HTML document.
    """
    sections = build_sections(view, sdc)
    titles = {section.id: section.title for section in sections}
    titles |= {"intro": "About this report", "methods": "Methods and disclosure control"}
    titles |= {"summary": "Summary and recommendation", "findings": "All headline findings"}
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=view.title,
            subtitle=subtitle(view),
            summary=summary_context(view, objective=view.objective, sdc=sdc),
            findings=findings_context(view),
            intro=intro_context(view),
            methods=methods_context(view, sdc),
            sections=sections,
            section_titles=titles,
            tripod=checklist.TRIPOD_AI,
            standing=checklist.STANDING_TOGETHER,
            inputs=list(view.inputs_used),
        )
    )


def _log_to_mlflow(view: ReportView, report: Path, paths: Paths) -> list[str]:
    """Attach the report to the training run of each target's registered version (a FINISHED
    run, never simply the newest); returns the targets logged.

    Raises
    ------
    StageError
        When the MLflow store fails (naming its URI and the fix).
    """
    from pipeline import tracking

    logged: list[str] = []
    for target in view.targets:
        model = paths.models / target.target / "model.txt"
        if not model.exists():
            log.warning("report: %s has no model file; not logged to MLflow", target.target)
            continue
        run = tracking.find_model_run(model, root=paths.root)
        if run is None:
            log.warning("report: no registered MLflow version holds %s; not logged for it", model)
            continue
        import mlflow

        with tracking.store_errors("report: logging to MLflow", root=paths.root):
            client = mlflow.MlflowClient()
            client.log_artifact(run.info.run_id, str(report), artifact_path=ARTIFACT_DIR)
            client.set_tag(run.info.run_id, "equity_report", f"{ARTIFACT_DIR}/{REPORT_FILE}")
            _log_equity_images(client, run.info.run_id, images.equity_images(target, view))
        logged.append(target.target)
    return logged


def _log_equity_images(client: Any, run_id: str, pngs: dict[str, bytes]) -> None:
    """Log the report's equity charts as PNG files under ``equity/`` of the run."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, png in pngs.items():
            (Path(folder) / name).write_bytes(png)
        if pngs:
            client.log_artifacts(run_id, folder, artifact_path=images.EQUITY_ARTIFACT_DIR)


def _refuse_if_any(findings: list[Violation]) -> None:
    if findings:
        listed = "\n".join(f"  {finding}" for finding in findings[:40])
        more = f"\n  ... and {len(findings) - 40} more" if len(findings) > 40 else ""
        raise StageError(
            f"report: the disclosure scan found {len(findings)} violation(s); nothing was "
            f"published:\n{listed}{more}"
        )


def run(params: Params, paths: Paths, *, log_mlflow: bool = True) -> Path:
    """Build, scan and write ``reports/equity_report.html``; log it to each model's MLflow run.

    Raises
    ------
    StageError
        When the disclosure scan finds anything in the report or in any JSON under
        ``reports/`` (nothing is written), or when no audit output exists at all.
    """
    if log_mlflow:
        from pipeline import tracking

        tracking.preflight(paths.root)  # fails fast when the MLflow store does not answer
    sdc = params.disclosure
    target = paths.reports / REPORT_FILE
    # Upstream files first (cheap): a violation there stops the stage before any work.
    _refuse_if_any(
        [
            finding
            for finding in scan_reports(paths.reports, rule=sdc)
            if not finding.source.endswith(REPORT_FILE)  # the old report is about to be replaced
        ]
    )
    view = dataclasses.replace(
        load_view(params, paths),
        objective=params.report.objective,
        provenance=provenance.collect(params, root=paths.root, with_models=log_mlflow),
        list_sizes=_list_sizes(paths.reports / "outreach_summary.json"),
    )
    html = render_report(view, sdc=sdc)
    _refuse_if_any(
        scan_html(
            html,
            source=str(target.relative_to(paths.root)),
            rule=sdc,
        )
    )
    write_text(html, target)
    target.chmod(0o644)  # a report to share: mkstemp's 0600 would hide it from colleagues
    if log_mlflow:
        _log_to_mlflow(view, target, paths)
    console.stage_done(
        "report", did=f"wrote {target.relative_to(paths.root)} ({len(html) // 1024} kB)"
    )
    return target


def _list_sizes(summary: Path) -> dict[str, str]:
    """Target -> people on its lists as published (``n_selected``); empty without the file."""
    if not summary.exists():
        return {}
    targets = json.loads(summary.read_text(encoding="utf-8")).get("targets") or {}
    return {name: str(block.get("n_selected", "")) for name, block in targets.items()}
