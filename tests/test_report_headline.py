"""The report's headline is truthful (issue 13 item 9): it names groups by name (ICB names,
not codes), counts only flags that are published, and every number in it is one a published
table shows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from pipeline.config import load_params
from pipeline.io import Paths
from pipeline.report.findings import UNDER_SERVED_DIMENSIONS, headline_findings
from pipeline.report.fmt import ci_text, num_text
from pipeline.report.inputs import load_view
from pipeline.report.model import ReportView
from tests.test_report_support import write_fixture_project

FLAG_KINDS = {
    # finding kind: (metric, flag reason, the column its number is)
    "under_served": ("tpr", "fewer cases reached", "ratio"),
    "under_predicted": ("oe_ratio", "under-prediction", "value"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, ReportView]:
    paths = write_fixture_project(tmp_path_factory.mktemp("headline") / "project")
    return paths, load_view(load_params(paths.params), paths)


def _published(paths: Paths, target: str, table: str) -> pl.DataFrame:
    return pl.read_parquet(paths.reports / "audit" / target / f"{table}.parquet")


def _check_flag_finding(facts: dict, published: pl.DataFrame, kind: str) -> None:
    metric, reason, column = FLAG_KINDS[kind]
    low, high = ("ratio_ci_low", "ratio_ci_high") if column == "ratio" else ("ci_low", "ci_high")
    shown = published.filter(
        pl.col("dimension").is_in(UNDER_SERVED_DIMENSIONS)
        & (pl.col("metric") == metric)
        & pl.col("flagged")
        & (pl.col("flag_reason") == reason)
        & ~pl.col("suppressed")
    )
    assert facts["count"] == shown.height  # only published flags are counted
    numbers = {num_text(v) for v in shown[column]}
    intervals = {
        ci_text(a, b, percent=False, digits=2) for a, b in zip(shown[low], shown[high], strict=True)
    }
    for listed in facts["listed"]:
        assert listed["ratio"] in numbers, listed
        assert listed["ci"] in intervals, listed


def test_every_headline_number_is_a_published_figure(project) -> None:
    paths, view = project
    findings = headline_findings(view)
    checked = set()
    for finding in findings:
        metrics = _published(paths, finding.target, "group_metrics")
        if finding.kind in FLAG_KINDS:
            _check_flag_finding(finding.facts, metrics, finding.kind)
            checked.add(finding.kind)
        elif finding.kind == "deprivation":
            q1 = metrics.filter(
                (pl.col("dimension") == "imd_quintile")
                & (pl.col("group") == "1")
                & (pl.col("metric") == "tpr")
            ).row(0, named=True)
            assert finding.facts["ratio"] == num_text(q1["ratio"])
            checked.add(finding.kind)
        elif finding.kind == "not_recorded":
            groups = _published(paths, finding.target, "groups")
            count = groups.filter(
                (pl.col("dimension") == "ethnicity_group") & (pl.col("group") == "Not recorded")
            )["n"].item()
            assert finding.facts["n"] == f"{int(count):,}"
            checked.add(finding.kind)
    assert {"under_served", "deprivation", "not_recorded"} <= checked


def test_the_headline_names_icbs_by_name(project) -> None:
    _, view = project
    target = view.targets[0]
    icb = target.groups.filter((pl.col("dimension") == "icb_code") & (pl.col("metric") == "tpr"))[
        "group"
    ][0]
    chosen = (
        (pl.col("dimension") == "icb_code") & (pl.col("group") == icb) & (pl.col("metric") == "tpr")
    )
    flagged = target.groups.with_columns(  # the only flag: this ICB reached fewer cases
        chosen.alias("flagged"),
        pl.when(chosen).then(pl.lit("fewer cases reached")).alias("flag_reason"),
        pl.when(chosen).then(pl.lit(0.4)).otherwise("ratio").alias("ratio"),
        pl.when(chosen).then(pl.lit(False)).otherwise("suppressed").alias("suppressed"),
        pl.when(chosen).then(pl.lit("1000")).otherwise("n").alias("n"),
        pl.when(chosen).then(pl.lit("100")).otherwise("n_events").alias("n_events"),
    )
    named = dataclasses.replace(
        view,
        targets=(dataclasses.replace(target, groups=flagged),),
        icb_names={icb: "NHS Somewhere Integrated Care Board"},
    )
    found = next(f for f in headline_findings(named) if f.kind == "under_served")
    assert found.facts["count"] == 1
    (listed,) = found.facts["listed"]
    assert listed["who"] == f"people in NHS Somewhere Integrated Care Board ({icb})"


def test_not_recorded_is_never_a_reference(project) -> None:
    paths, view = project
    for target in view.targets:
        metrics = _published(paths, target.target, "group_metrics")
        references = metrics.filter(pl.col("is_reference"))["group"].unique().to_list()
        assert not [g for g in references if g.startswith(("Not recorded", "Unknown"))]
        ethnic = metrics.filter(
            (pl.col("dimension") == "ethnicity_group") & (pl.col("metric") == "tpr")
        )
        assert set(ethnic["reference_group"].drop_nulls()) == {"White"}


def test_geography_section_shows_funnel_plots(project, tmp_path: Path) -> None:
    from pipeline.disclosure import Rule
    from pipeline.report.context.geography import geography_target

    _, view = project
    part = geography_target(view.targets[0], view, Rule())
    assert part["icb_funnel"] is not None and "<svg" in str(part["icb_funnel"].svg)
    assert part["region_funnel"] is not None
