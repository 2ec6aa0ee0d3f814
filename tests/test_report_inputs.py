"""The audit -> report interface: the report's loader on the files a real audit wrote
(tests/test_report_support.py), the contract's declarations and the scanner built on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline import contract
from pipeline.config import load_params
from pipeline.disclosure import Rule
from pipeline.errors import StageError
from pipeline.report import model
from pipeline.report.inputs import group_order_expr, load_view, read_audit_tables
from pipeline.report.scan import scan_parquet

try:
    from tests.test_report_support import audited_world, data_quality, write_fixture_project
except ImportError:  # tests/ on sys.path (pytest's rootdir-less import mode)
    from test_report_support import audited_world, data_quality, write_fixture_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_project(tmp_path_factory.mktemp("inputs") / "project").root


def test_view_frames_have_the_declared_columns(project: Path) -> None:
    from pipeline.io import Paths

    paths = Paths.at(project)
    view = load_view(load_params(paths.params), paths)
    for target in view.targets:
        assert target.groups.schema == pl.Schema(model.GROUPS_SCHEMA)
        assert target.heat.schema == pl.Schema(contract.HEAT_SCHEMA)
        assert target.gradients.schema == pl.Schema(contract.GRADIENTS_SCHEMA)
        assert set(target.gradients["dimension"]) == {"imd_decile"}
        assert target.label_summary.schema == pl.Schema(model.LABEL_SUMMARY_SCHEMA)
        assert target.mitigation.schema == pl.Schema(model.MITIGATION_SCHEMA)
        # the reference group is not compared with itself; undefined estimates are null
        reference = target.groups.filter(pl.col("is_reference"))
        assert reference["ratio"].null_count() == reference.height
        assert not target.groups.select(pl.col(pl.Float64).is_nan().any()).row(0)[0]
        assert set(target.label_summary["need_measure"]) == {"recorded_need", "true_need"}
        assert target.mitigation["strategy"].unique(maintain_order=True).to_list() == [
            "risk",
            "equal_opportunity",
            "core20plus5",
            "need_based",
        ]
        assert target.truth_events and target.case_definition.startswith("top 20%")
    assert view.population_total == 200_000 and view.data_quality["valid"] is True


def test_a_table_that_drifts_from_the_contract_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    shutil.copytree(next((audited_world() / "reports/audit").iterdir()), folder)
    assert set(read_audit_tables(folder)) == set(contract.AUDIT_TABLES)
    heat = pl.read_parquet(folder / "heat.parquet")
    heat.drop("direction").write_parquet(folder / "heat.parquet")
    with pytest.raises(StageError, match=r"heat\.parquet: columns differ"):
        read_audit_tables(folder)


def test_the_scanner_checks_a_tables_declared_counts(tmp_path: Path) -> None:
    source = next((audited_world() / "reports/audit").iterdir()) / "group_metrics.parquet"
    assert scan_parquet(source, rule=Rule()) == []
    planted = tmp_path / "audit" / "group_metrics.parquet"
    planted.parent.mkdir()
    frame = pl.read_parquet(source)
    frame.with_columns(pl.lit("13").alias("n_numerator")).write_parquet(planted)
    found = scan_parquet(planted, rule=Rule())
    assert [v.rule for v in found] == ["count not disclosure-controlled"]
    assert "n_numerator" in found[0].location


def test_every_published_count_column_is_typed_as_a_published_count() -> None:
    for table in contract.AUDIT_TABLES.values():
        assert all(table.schema[c] == contract.PUBLISHED_COUNT for c in table.counts)


def test_summaries_round_trip_through_their_model(tmp_path: Path) -> None:
    quality = data_quality()
    path = contract.write_summary(quality, tmp_path / "data_quality.json")
    assert contract.read_summary(contract.DataQuality, path) == quality
    path.write_text('{"valid": true}')
    with pytest.raises(ValueError, match="folder"):
        contract.read_summary(contract.DataQuality, path)


def test_group_order() -> None:
    frame = pl.DataFrame(
        {
            "dimension": ["imd_quintile", "region", "age_band", "ethnicity_group_x_imd_quintile"],
            "group": ["10", "London", "85+", "Black, IMD 2"],
        }
    )
    ordered = frame.select(group_order_expr())["group_order"].to_list()
    assert ordered == [10, contract.REGIONS.index("London"), 85, 32]


def test_excluded_records_reach_the_reports_data_quality_tables() -> None:
    from pipeline.report.context.data_quality import quality_context

    context = quality_context(data_quality().model_dump(mode="json"), Rule())
    assert context is not None and context["excluded"] is not None
    (row,) = context["excluded"].rows
    assert [cell.text for cell in row] == ["events.value: implausible", "30", "bmi = 6.9"]
    assert quality_context({"valid": True, "excluded": []}, Rule())["excluded"] is None


def test_the_report_says_when_the_audit_tables_are_of_samples() -> None:
    """Past audit.max_audited_rows / max_cohort_rows the report's notes say so, with the caps;
    below them there is no note."""
    from pipeline import contract
    from pipeline.report.inputs import sample_notes

    base = {
        "confidence": 0.95,
        "fair_ratio_low": 0.8,
        "fair_ratio_high": 1.25,
        "n_bootstrap": 10,
        "n_monte_carlo": 100,
        "min_group_size": 100,
        "min_group_events": 10,
        "score_bins": 1000,
        "bootstrap_score_bins": 100,
        "need_case_share": 0.2,
        "need_case_definition": "recorded",
        "max_audited_rows": 2_000_000,
        "max_cohort_rows": 10_000_000,
    }
    assert sample_notes(contract.AuditSettings(**base)) == []
    sampled = contract.AuditSettings(**base, audited_rows_sampled=True, cohort_rows_sampled=True)
    audited, cohort = sample_notes(sampled)
    assert "2,000,000" in audited and "audit.max_audited_rows" in audited
    assert "10,000,000" in cohort and "audit.max_cohort_rows" in cohort
