"""Stage ``report``: the normalised view -> one self-contained HTML file, scanned, then logged.

:func:`render_report` is pure (view in, HTML out); :func:`run` does the reading, the disclosure
scan (the stage refuses to publish when the scan finds anything), the atomic write and the
MLflow logging.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final

import jinja2
from markupsafe import Markup

from pipeline.errors import StageError
from pipeline.io import Paths, write_text
from pipeline.report import checklist, sections
from pipeline.report.findings import headline_findings, summary_sentence
from pipeline.report.fmt import Disclosure, pct_text
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
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )


def _selection_text(selection: dict, *, fallback: str) -> str:
    """'the top 5% of each eligible cohort by predicted risk' (or per ICB / practice)."""
    capacity = selection.get("capacity")
    mode = selection.get("capacity_mode", "share")
    if not isinstance(capacity, int | float):
        return fallback
    if mode == "share":
        return f"the top {pct_text(capacity, digits=0)} of each eligible cohort by predicted risk"
    unit = "ICB" if mode == "per_icb" else "GP practice"
    return f"the top {int(capacity):,} people per {unit} by predicted risk"


def _intro(view: ReportView) -> list[Markup]:
    targets = Markup(", ").join(
        Markup("<strong>{}</strong> ({})").format(t.target, t.description or t.outcome)
        for t in view.targets
    )
    operating = _selection_text(
        (view.targets[0].operating_point if view.targets else {}),
        fallback="the operating point set in params.yaml",
    )
    lists = _selection_text(view.outreach_meta, fallback="the outreach capacity in params.yaml")
    paragraphs = [
        Markup(
            "Risk models pick out people at high risk so that teams can reach them early. This "
            "report checks whether the people picked out are the people who need it, across "
            "deprivation, geography and ethnicity, before any list is used. Health in England "
            "is unequal: life expectancy at birth is 9.7 years shorter for men and 7.9 years for "
            "women in the most deprived tenth of areas than in the least (ONS, 2018-20), and "
            "recorded data under-count illness in "
            "the groups that use care least, so a model trained on records can quietly carry "
            "those gaps into who gets contacted."
        ),
        Markup(
            "Models audited: {targets}. The audit's operating point is {op}; the outreach lists "
            "hold {lists} (policy: {policy})."
        ).format(
            targets=targets,
            op=operating,
            lists=lists,
            policy=str(view.outreach_meta.get("policy", "risk")).replace("_", " "),
        ),
    ]
    if view.source == "synthetic":
        paragraphs.append(
            Markup(
                "<strong>The data are synthetic.</strong> The population behaves like English "
                "GP and hospital records, with recording and access biases planted on purpose, "
                "so the audit can be checked against a known truth. Nothing here describes real "
                "people."
            )
        )
    return paragraphs


def _methods(view: ReportView, sdc: Disclosure) -> list[Markup]:
    level = f"{round(view.confidence * 100)}%"
    return [
        Markup(
            "Group metrics are computed on the test split at the audit's operating point, with "
            "{lvl} confidence intervals (Wilson for proportions, bootstrap otherwise). Ratios "
            "compare each group with a reference group (IMD quintile 5 for deprivation, the "
            "largest group otherwise) and are flagged outside {lo}-{hi} (the Aequitas "
            "convention). Gradients across IMD deciles use the slope and relative indices of "
            "inequality (OHID Fingertips method, Low &amp; Low 2004) with Monte Carlo intervals; "
            "unordered groups use the WHO HEAT summary measures."
        ).format(lvl=level, lo=view.fair_low, hi=view.fair_high),
        Markup(
            "Disclosure control (NHS statistical disclosure rules): every count is shown rounded "
            "to the nearest {r}, and counts from 1 to {s} are shown as '*'; a rate, share or "
            "interval computed from a suppressed count is suppressed too. Small groups are "
            "marked, not dropped. Before this file was written, a scanner checked every number "
            "in it, and every JSON file under <code>reports/</code>, against these rules."
        ).format(r=sdc.round_to, s=sdc.suppress_below - 1),
        Markup(
            "Charts are drawn with Vega-Lite (Altair) and embedded as SVG in Okabe-Ito colours, "
            "which stay distinct for the common forms of colour blindness; every colour is "
            "doubled by a shape, a dash pattern or a printed value so the charts also read in "
            "greyscale print."
        ),
    ]


def render_report(view: ReportView, *, sdc: Disclosure) -> str:
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
    builders = [
        sections.population_section,
        sections.performance_section,
        sections.deprivation_section,
        sections.geography_section,
        sections.ethnicity_section,
        sections.intersection_section,
        sections.label_choice_section,
        sections.outreach_section,
        sections.mitigation_section,
    ]
    # vl-convert renders outside the GIL: two sections at a time keep both cores busy.
    # Results come back in order, so the output does not depend on scheduling.
    with ThreadPoolExecutor(max_workers=RENDER_THREADS) as pool:
        built = list(pool.map(lambda build: build(view, sdc), builders))
    built.append(sections.limitations_section(view))
    findings = headline_findings(view)
    titles = {section["id"]: section["title"] for section in built}
    titles |= {"intro": "About this report", "methods": "Methods and disclosure control"}
    subtitle = (
        f"Equity audit of {len(view.targets)} risk model{'s' if len(view.targets) != 1 else ''}"
        f" · {'synthetic data' if view.source == 'synthetic' else 'data extract'}"
    )
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=view.title,
            subtitle=subtitle,
            summary=summary_sentence(findings),
            finding_groups=[
                {
                    "title": f"{target.description or target.outcome} ({target.target})",
                    "findings": [f for f in findings if f.target == target.target],
                }
                for target in view.targets
            ],
            intro=_intro(view),
            methods=_methods(view, sdc),
            sections=built,
            section_titles=titles,
            tripod=checklist.TRIPOD_AI,
            standing=checklist.STANDING_TOGETHER,
            inputs=list(view.inputs_used),
        )
    )


def _log_to_mlflow(view: ReportView, report: Path, paths: Paths) -> list[str]:
    """Attach the report to each target's training run; returns the targets logged."""
    from pipeline import tracking

    logged = []
    for target in view.targets:
        model = paths.models / target.target / "model.txt"
        if not model.exists():
            log.warning("report: %s has no model file; not logged to MLflow", target.target)
            continue
        try:
            run = tracking.find_model_run(model, root=paths.root)
        except Exception as error:  # the store is optional for the report; say why and go on
            log.warning("report: MLflow store not usable (%s); report not logged", error)
            return logged
        if run is None:
            log.warning("report: no MLflow run holds %s; report not logged for it", model)
            continue
        import mlflow

        client = mlflow.MlflowClient()
        client.log_artifact(run.info.run_id, str(report), artifact_path=ARTIFACT_DIR)
        client.set_tag(run.info.run_id, "equity_report", f"{ARTIFACT_DIR}/{REPORT_FILE}")
        logged.append(target.target)
    return logged


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
    started = time.perf_counter()
    settings = params.report
    sdc = Disclosure(suppress_below=settings.suppress_below, round_to=settings.round_to)
    target = paths.reports / REPORT_FILE
    options = {"suppress_below": sdc.suppress_below, "round_to": sdc.round_to}
    # Upstream files first (cheap): a violation there stops the stage before any work.
    _refuse_if_any(
        [
            finding
            for finding in scan_reports(paths.reports, **options)
            if not finding.source.endswith(REPORT_FILE)  # the old report is about to be replaced
        ]
    )
    view = load_view(params, paths)
    html = render_report(view, sdc=sdc)
    _refuse_if_any(scan_html(html, source=str(target.relative_to(paths.root)), **options))
    write_text(html, target)
    target.chmod(0o644)  # a report to share: mkstemp's 0600 would hide it from colleagues
    if log_mlflow:
        _log_to_mlflow(view, target, paths)
    log.info(
        "report: wrote %s (%d kB) in %.1f s at %s",
        target,
        len(html) // 1024,
        time.perf_counter() - started,
        dt.datetime.now(dt.UTC),
    )
    return target
