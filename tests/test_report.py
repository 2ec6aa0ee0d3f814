"""Stage report: the HTML is built from the numbers, disclosure-controlled, self-contained, and
refused when anything under reports/ breaks the disclosure convention."""

from __future__ import annotations

import dataclasses
import doctest
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.disclosure import Rule
from pipeline.errors import StageError
from pipeline.io import read_json, write_json
from pipeline.report import render_report, run
from pipeline.report.context import capacity, labels
from pipeline.report.context.blocks import Section
from pipeline.report.context.groups import group_table
from pipeline.report.findings import certainty, headline_findings
from pipeline.report.fmt import count_text, rate_cell, to_float
from pipeline.report.inputs import load_view
from pipeline.report.model import ReportView
from pipeline.report.scan import scan_html, scan_json, scan_reports
from tests.test_report_support import build_fixture_report, write_fixture_project


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fixture project with its report, shared by the read-only tests below."""
    return build_fixture_report(tmp_path_factory.mktemp("report") / "project")


# --- the report ----------------------------------------------------------------------------------


def test_report_is_self_contained_and_passes_its_own_scan(built: Path) -> None:
    html = built.read_text(encoding="utf-8")
    assert scan_html(html, rule=Rule()) == []
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    assert "<script src" not in html
    assert html.count("<svg") >= 15  # charts are inline SVG
    for section in (
        "findings",
        "population",
        "performance",
        "deprivation",
        "geography",
        "ethnicity",
        "intersection",
        "label-choice",
        "outreach",
        "mitigation",
        "limitations",
        "checklist",
    ):
        assert f'id="{section}"' in html, section


def test_headline_findings_come_from_the_numbers(built: Path) -> None:
    """The simulated world (tests/simworld.py) plants under-recorded need for IMD quintile 1 and
    lower access for Black and Asian people: the headline says so, with the audited ratios,
    before any detail."""
    html = built.read_text(encoding="utf-8")
    findings = html[html.index('id="findings"') : html.index('id="intro"')]
    assert "most deprived fifth" in findings
    assert "Black people" in findings
    assert re.search(r"Black people: 0\.[0-7]\d", findings)  # planted access exp(-0.3)
    assert "95% CI" in findings
    assert "Ranking by true need instead" in findings


def test_every_count_shown_is_rounded_or_suppressed(built: Path) -> None:
    html = built.read_text(encoding="utf-8")
    counts = re.findall(r'class="n"[^>]*>([^<]*)<', html)
    assert len(counts) > 200
    for shown in counts:
        value = shown.replace(",", "")
        assert value in {"*", "–"} or int(value) % 5 == 0, shown
    # the fixture's 6-person cells are shown as '*' with every rate beside them suppressed
    assert re.search(r'<td class="n"[^>]*>\*</td>', html)


def test_report_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = build_fixture_report(tmp_path / "again")
    assert again.read_bytes() == built.read_bytes()


def test_refuses_to_publish_a_violation_under_reports(tmp_path: Path) -> None:
    paths = write_fixture_project(tmp_path)
    summary = read_json(paths.reports / "outreach_summary.json")
    first = next(iter(summary["targets"].values()))
    first["make_up"]["imd_quintile"][0]["n_selected"] = 13  # planted: not rounded
    write_json(summary, paths.reports / "outreach_summary.json")
    with pytest.raises(StageError, match=r"outreach_summary\.json.*n_selected.*13"):
        run(load_params(paths.params), paths, log_mlflow=False)
    assert not (paths.reports / "equity_report.html").exists()


def test_copes_without_optional_inputs(tmp_path: Path) -> None:
    """A real extract has no synthetic_calibration.json; outreach or data quality may be absent."""
    paths = write_fixture_project(tmp_path)
    for name in ("outreach_summary.json", "data_quality.json"):
        (paths.reports / name).unlink()
    raw = yaml.safe_load(paths.params.read_text())
    raw["population"] |= {"source": "extract", "extract_dir": str(tmp_path / "extract")}
    paths.params.write_text(yaml.safe_dump(raw))
    report = run(load_params(paths.params), paths, log_mlflow=False)
    html = report.read_text(encoding="utf-8")
    assert "Not available" in html
    assert "outreach summary was not available" in html
    assert "data extract" in html and "The data are synthetic" not in html


def test_missing_audit_is_a_clear_error(tmp_path: Path) -> None:
    paths = write_fixture_project(tmp_path)
    target = next(iter(load_params(paths.params).targets))
    (paths.reports / "audit" / target / "audit.json").unlink()
    with pytest.raises(StageError, match=rf"audit/{target}/audit\.json not found"):
        run(load_params(paths.params), paths, log_mlflow=False)


def test_view_normalises_the_audit(tmp_path: Path) -> None:
    paths = write_fixture_project(tmp_path)
    view = load_view(load_params(paths.params), paths)
    first = view.targets[0]
    imd = first.groups.filter((pl.col("dimension") == "imd_quintile") & (pl.col("metric") == "tpr"))
    assert imd["group"].to_list() == ["1", "2", "3", "4", "5"]
    assert imd.filter(pl.col("is_reference"))["group"].to_list() == ["5"]
    assert set(first.gradients["measure"]) == {"sii", "rii"}
    assert first.gradient_points["rank_mid"].is_between(0, 1).all()
    assert first.mitigation["strategy"].unique(maintain_order=True).to_list()[0] == "risk"
    assert not first.label_choice.is_empty() and not first.outreach.is_empty()


def test_report_logged_to_the_model_run(tmp_path: Path) -> None:
    """A real MLflow store: the report becomes an artifact of the run that trained the model;
    a target whose model has no run is skipped with a warning."""
    import mlflow

    from pipeline import tracking
    from pipeline.report.build import _log_to_mlflow

    paths = write_fixture_project(tmp_path)
    params = load_params(paths.params)
    view = load_view(params, paths)
    target = view.targets[0].target
    model = paths.models / target / "model.txt"
    tracking.configure(paths.root)
    digest = tracking.model_digest(model)
    with mlflow.start_run(run_name=target) as active:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, digest)
    # found through the model's registered version (a finished run, never simply the newest)
    client = mlflow.MlflowClient()
    name = tracking.registered_name(target)
    client.create_registered_model(name)
    version = client.create_model_version(name, tmp_path.as_uri(), run_id=active.info.run_id)
    client.set_model_version_tag(name, version.version, tracking.MODEL_DIGEST_TAG, digest)
    with mlflow.start_run(run_name=target):  # newer, same model, left running: never picked
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, digest)
        report = paths.reports / "equity_report.html"
        report.write_text("<!DOCTYPE html><title>equity report</title>")
        assert _log_to_mlflow(view, report, paths) == [target]
    logged = [a.path for a in client.list_artifacts(active.info.run_id, "report")]
    assert logged == ["report/equity_report.html"]
    assert client.get_run(active.info.run_id).data.tags["equity_report"].endswith(".html")
    # the report's equity charts, as images a reviewer sees beside ROC and calibration
    images = [a.path for a in client.list_artifacts(active.info.run_id, "equity")]
    assert "equity/cases_reached_by_imd_quintile.png" in images
    local = Path(client.download_artifacts(active.info.run_id, images[0], str(tmp_path)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the presentation layer: context functions and templates ------------------------------------


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> ReportView:
    paths = write_fixture_project(tmp_path_factory.mktemp("view") / "project")
    return load_view(load_params(paths.params), paths)


def test_context_is_plain_values_and_templates_escape_them(view: ReportView) -> None:
    """Data reach the HTML only through the templates' autoescaping: a group name or a target
    description carrying markup comes out as text."""
    first = view.targets[0]
    planted = "<script>alert(1)</script> & co"
    groups = first.groups.with_columns(
        pl.when(pl.col("group") == "London")
        .then(pl.lit(planted))
        .otherwise(pl.col("group"))
        .alias("group")
    )
    target = dataclasses.replace(first, groups=groups, description=planted)
    hostile = dataclasses.replace(view, targets=(target,))
    html = render_report(hostile, sdc=Rule())
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_group_table_hides_rates_of_suppressed_counts(view: ReportView) -> None:
    dimension = "ethnicity_group_x_imd_quintile"
    target = view.targets[0]
    # plant a group whose published size is '*' (the audit's own suppression is tested there)
    smallest = target.groups.filter(pl.col("dimension") == dimension).sort("group")["group"][0]
    planted = target.groups.with_columns(
        pl.when((pl.col("dimension") == dimension) & (pl.col("group") == smallest))
        .then(pl.lit("*"))
        .otherwise(pl.col("n"))
        .alias("n")
    )
    target = dataclasses.replace(target, groups=planted)
    table = group_table(target, view, dimension, Rule())
    assert table is not None
    assert [label for label, _ in table.columns][:2] == ["Group", "People"]
    rows = {row[0].text: row for row in table.rows}
    hidden = [row for row in rows.values() if row[1].text == "*"]
    assert hidden, "the planted group is shown as *"
    for row in hidden:  # every rate and ratio of a '*' group is '*' too
        assert {cell.text for cell in row[4:10]} == {"*"}, [c.text for c in row]


def test_every_section_names_a_template_that_exists(view: ReportView) -> None:
    from pipeline.report.build import TEMPLATES, build_sections

    sections = build_sections(view, Rule())
    assert [s.id for s in sections][-1] == "limitations"
    for section in sections:
        assert isinstance(section, Section)
        assert (TEMPLATES / section.template).is_file(), section.template


def test_findings_carry_values_not_sentences(view: ReportView) -> None:
    findings = headline_findings(view)
    kinds = {f.kind for f in findings}
    assert {"deprivation", "under_served", "label_choice", "performance"} <= kinds
    for finding in findings:
        for value in finding.facts.values():
            assert "<" not in str(value), (finding.kind, value)
    assert certainty(0.5, 0.7, fair_low=0.8, fair_high=1.25) == "clear"
    assert certainty(0.7, 0.95, fair_low=0.8, fair_high=1.25) == "real"
    assert certainty(0.9, 1.1, fair_low=0.8, fair_high=1.25) == "chance"
    assert certainty(None, 1.1, fair_low=0.8, fair_high=1.25) == "none"


def test_label_and_capacity_doctests() -> None:
    for module in (labels, capacity):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# --- disclosure formatting ---------------------------------------------------------------------


def test_counts_and_rates_are_disclosure_controlled() -> None:
    sdc = Rule()
    assert [count_text(v, sdc) for v in (0, 3, 7, 8, 12, 13, 1234, "*", None)] == [
        "0",
        "*",
        "*",
        "10",
        "10",
        "15",
        "1,235",
        "*",
        "–",
    ]
    assert rate_cell(0.25, of=("*",)).text == "*"
    assert rate_cell(0.25, 0.2, 0.3).text == "25.0%"
    assert rate_cell(0.25, suppressed=True).text == "*"


def test_numeric_polars_scalars_become_floats_and_nothing_else_does() -> None:
    assert to_float(pl.Series([1, 3]).max()) == 3.0
    assert isinstance(to_float(pl.Series([1, 3]).max()), float)
    assert to_float(pl.Series([0.25, None]).mean()) == 0.25
    with pytest.raises(TypeError):
        to_float(pl.Series([None], dtype=pl.Float64).max())  # an all-null column: no number
    with pytest.raises(TypeError):
        to_float(pl.Series(["7"]).max())


# --- the scanner, on planted violations --------------------------------------------------------


CLEAN_JSON = {
    "n": 1235,
    "n_events": "*",
    "n_selected": "40",
    "events_count": 0,
    "n_bootstrap": 1000,
    "groups": [
        {"group": "A", "n": "*", "selection_rate": "*", "ci_low": "*", "stable": False},
        {"group": "B", "n": 100, "n_selected": "*", "selection_rate": "*", "auroc": 0.7},
        {"group": "C", "metric": "tpr", "n_true_positives": "*", "value": "*"},
    ],
}


def test_scanner_passes_clean_json() -> None:
    assert scan_json(CLEAN_JSON, rule=Rule()) == []


@pytest.mark.parametrize(
    ("planted", "rule"),
    [
        ({"n": 13}, "count not disclosure-controlled"),
        ({"n_people": 3}, "count not disclosure-controlled"),
        ({"deaths_count": "12"}, "count not disclosure-controlled"),
        ({"n_events": 12.5}, "count not disclosure-controlled"),
        ({"n": -5}, "count not disclosure-controlled"),
        ({"n_by_group": {"A": 17}}, "count not disclosure-controlled"),
        ({"n": "*", "selection_rate": 0.04}, "rate shown for a suppressed count"),
        ({"n": "*", "tpr_ci_low": 0.3}, "rate shown for a suppressed count"),
        ({"n": 100, "n_selected": "*", "ppv": 0.5}, "rate shown for a suppressed count"),
        (
            {"metric": "tpr", "n_true_positives": "*", "value": 0.5},
            "rate shown for a suppressed count",
        ),
        ({"rows": [{"person_id": "P1"}]}, "row-level identifier key"),
    ],
)
def test_scanner_finds_planted_json_violations(planted: dict, rule: str) -> None:
    found = scan_json({"ok": CLEAN_JSON, "bad": planted}, source="x.json", rule=Rule())
    assert [v.rule for v in found] == [rule], found
    assert found[0].location.startswith("bad")


def test_scanner_on_a_reports_folder(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    write_json(CLEAN_JSON, reports / "audit" / "t" / "audit.json")
    pl.DataFrame(
        {"group": ["a", "b"], "n": ["*", "15"], "value": [None, 0.2], "suppressed": [True, False]}
    ).write_parquet(reports / "audit" / "t" / "g.parquet")
    assert scan_reports(reports, rule=Rule()) == []
    write_json({"n_selected": 21}, reports / "outreach_summary.json")
    pl.DataFrame({"group": ["a"], "n": ["*"], "value": [0.2]}).write_parquet(
        reports / "audit" / "t" / "bad.parquet"
    )
    pl.DataFrame({"person_id": ["P1"], "n": [4]}).write_parquet(reports / "rows.parquet")
    found = {(v.source, v.rule) for v in scan_reports(reports, rule=Rule())}
    assert found == {
        ("reports/outreach_summary.json", "count not disclosure-controlled"),
        ("reports/audit/t/bad.parquet", "rate shown for a suppressed count"),
        ("reports/rows.parquet", "row-level identifier column"),
        ("reports/rows.parquet", "count not disclosure-controlled"),
    }


CLEAN_HTML = """<!DOCTYPE html><html><head><style>td{color:red}</style></head><body>
<p>About <span class="n">1,235</span> people; 12.5% of 40 groups.</p>
<table><tr><td class="n">*</td><td class="n">10</td><td class="r">*</td></tr>
<tr><td class="n">100</td><td class="n">*</td><td class="r" data-of="*">*</td>
<td class="r">20.0%<span class="ci">10.0–30.0%</span></td></tr></table>
<svg xmlns="http://www.w3.org/2000/svg"><text>13</text></svg>
<a href="https://www.england.nhs.uk">NHS England</a></body></html>"""


def test_scanner_passes_clean_html() -> None:
    assert scan_html(CLEAN_HTML, rule=Rule()) == []


@pytest.mark.parametrize(
    ("planted", "rule"),
    [
        ('<span class="n">1,234</span>', "count not disclosure-controlled"),
        ('<table><tr><td class="n">7</td></tr></table>', "count not disclosure-controlled"),
        (
            '<table><tr><td class="n">*</td><td class="r">4.0%</td></tr></table>',
            "rate shown for a suppressed count",
        ),
        (
            '<table><tr><td class="n">100</td><td class="r" data-of="ok *">4.0%</td></tr></table>',
            "rate shown for a suppressed count",
        ),
        ("<p>There were 13 people in the group.</p>", "count in prose not disclosure-controlled"),
        ('<script src="https://cdn.example.org/vega.js"></script>', "fetches a resource"),
        ('<img src="http://example.org/logo.png">', "fetches a resource"),
        ('<link rel="stylesheet" href="style.css">', "fetches a resource"),
        ('<div style="background:url(https://x.org/a.png)"></div>', "fetches a resource"),
        ("<style>@import 'https://fonts.example.org/font.css';</style>", "fetches a resource"),
    ],
)
def test_scanner_finds_planted_html_violations(planted: str, rule: str) -> None:
    html = CLEAN_HTML.replace("</body>", planted + "</body>")
    found = scan_html(html, rule=Rule())
    assert rule in {v.rule for v in found}, found


def test_scanner_checks_the_real_report_jsons_too(built: Path, tmp_path: Path) -> None:
    """The fixture's reports/ (audit.json, outreach summary, ...) pass; one planted change fails."""
    reports = tmp_path / "reports"
    shutil.copytree(built.parent, reports)
    assert scan_reports(reports, rule=Rule()) == []
    audit = next(reports.glob("audit/*/audit.json"))
    payload = json.loads(audit.read_text())
    payload["n"] = 1234
    audit.write_text(json.dumps(payload))
    found = scan_reports(reports, rule=Rule())
    assert [v.rule for v in found] == ["count not disclosure-controlled"]
    assert found[0].location == "n"


# --- the summary page: recommendation, cost, findings, provenance ------------------------------


def _mitigation(rows: list[tuple[str, str, float, float]], **extra: list) -> pl.DataFrame:
    """Policy rows (strategy, published events reached, share, gap as a fraction)."""
    columns = ["strategy", "events_reached", "share_of_events_reached", "tpr_gap"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    extras = {name: pl.Series(values) for name, values in extra.items()}
    return frame.with_columns(pl.col("strategy").alias("label"), **extras)


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("events_reached_no_wider_gap", "core20plus5"),  # most events with a gap <= risk's
        ("events_reached", "equal_opportunity"),  # most events whatever the gap
        ("narrowest_gap", "need_based"),
    ],
)
def test_recommendation_follows_the_objective(view: ReportView, objective, expected) -> None:
    from pipeline.report.context.summary import recommend

    mitigation = _mitigation(
        [
            ("risk", "1,000", 0.30, 0.15),
            ("core20plus5", "1,000", 0.30, 0.10),  # as many events, narrower gap
            ("equal_opportunity", "1,050", 0.31, 0.20),
            ("need_based", "900", 0.27, 0.05),
            ("suppressed", "*", 0.01, 0.01),  # a suppressed count is never recommended
        ]
    )
    target = dataclasses.replace(view.targets[0], mitigation=mitigation)
    chosen = recommend(target, objective=objective)
    assert chosen is not None and chosen["strategy"] == expected
    assert chosen["base_events"] == "1,000" and chosen["base_gap"] == "15.0"
    assert chosen["averted"] == ""  # the audit published no events averted: not quoted


def test_recommendation_reads_events_averted_when_published_and_degrades(view: ReportView):
    from pipeline.report.context.summary import recommend

    mitigation = _mitigation(
        [("risk", "500", 0.3, 0.1), ("need_based", "495", 0.29, 0.05)],
        events_averted=["40", "35"],
    )
    target = dataclasses.replace(view.targets[0], mitigation=mitigation)
    chosen = recommend(target, objective="events_reached_no_wider_gap")
    assert chosen is not None and (chosen["strategy"], chosen["averted"]) == ("risk", "40")
    no_risk = dataclasses.replace(
        target, mitigation=mitigation.filter(pl.col("strategy") != "risk")
    )
    assert recommend(no_risk, objective="events_reached") is None
    empty_view = dataclasses.replace(target, mitigation=mitigation.clear())
    assert recommend(empty_view, objective="events_reached") is None


def test_summary_comes_first_and_the_details_are_collapsed(built: Path) -> None:
    html = built.read_text(encoding="utf-8")
    summary = html.index('<section id="summary"')
    assert summary < html.index('<section id="findings"')
    page = html[summary : html.index('<section id="findings"')]
    assert "Recommended policy" in page and "Three findings that matter" in page
    assert "audit cut" in page and "list capacity" in page  # both named where used
    assert "Provenance" in page and "params_digest" not in page
    assert "<details" not in page  # the summary is never collapsed
    sections = re.findall(r'<section id="([^"]+)">\n<details>', html)
    assert "findings" in sections and "mitigation" in sections and len(sections) >= 12
    assert "<details open" not in html
    assert len(page.split()) < 700  # reads in about two minutes


def test_provenance_comes_from_the_project_not_the_clock(tmp_path: Path) -> None:
    from pipeline.report import provenance

    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  synthesize:\n    outs:\n    - path: data/population\n"
        "      md5: aff9dbfaed28197e20727ce7baa73c6e.dir\n"
    )
    assert provenance.locked_data_hash(lock) == "aff9dbfaed28"
    assert provenance.locked_data_hash(tmp_path / "missing.lock") == provenance.NOT_RECORDED
    assert provenance.git_facts(tmp_path) == {"commit": "not recorded", "date": "not recorded"}
    params = parse_params({"targets": {"t": {"outcome": "cvd_event", "follow_up_months": 60}}})
    assert provenance.params_digest(params) == provenance.params_digest(params)
    other = params.model_copy(update={"seed": params.seed + 1})
    assert provenance.params_digest(other) != provenance.params_digest(params)
    # where it ran does not change what it computed: a Dask run's report equals the laptop's
    on_dask = parse_params(
        {
            "targets": {"t": {"outcome": "cvd_event", "follow_up_months": 60}},
            "engine": "dask",
            "dask_workers": 2,
            "train": {"time_out": 5},
        }
    )
    assert provenance.params_digest(on_dask) == provenance.params_digest(params)
    distributed = on_dask.model_copy(
        update={"train": on_dask.train.model_copy(update={"distributed": True})}
    )
    assert provenance.params_digest(distributed) != provenance.params_digest(params)


def test_mitigation_table_shows_events_averted_only_when_the_audit_has_them(
    tmp_path: Path,
) -> None:
    from pipeline.report.context.mitigation import mitigation_table

    paths = write_fixture_project(tmp_path / "project")
    target = load_view(load_params(paths.params), paths).targets[0]
    # the audit's impact table: each policy's overall simulated events averted
    impact = pl.read_parquet(paths.reports / "audit" / target.target / "impact.parquet")
    overall = dict(
        impact.filter(pl.col("dimension") == "overall")
        .select("policy", "n_events_averted")
        .iter_rows()
    )
    shown = dict(target.mitigation.select("strategy", "events_averted").unique().iter_rows())
    assert shown == overall
    table = mitigation_table(target, Rule())
    assert table is not None and "Events averted (simulated)" in [c for c, _ in table.columns]
    without = target.mitigation.with_columns(pl.lit(None, pl.String).alias("events_averted"))
    plain = mitigation_table(dataclasses.replace(target, mitigation=without), Rule())
    assert plain is not None and "Events averted (simulated)" not in [c for c, _ in plain.columns]
