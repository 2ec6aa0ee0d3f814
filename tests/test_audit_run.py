"""The audit stage end to end on a small world written to disk: files, disclosure, determinism,
missing truth, bad input and the MLflow run."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import contract, io, need, tracking
from pipeline.audit import run
from pipeline.config import Params, parse_params
from pipeline.disclosure import Rule
from pipeline.errors import ContractError, ParamsError
from tests import simworld

TARGET = "sim_target"


def _params() -> Params:
    return parse_params(
        {
            "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {"n_bootstrap": 50, "n_monte_carlo": 100, "need_model_rounds": 20},
        }
    )


def _write_world(root: Path, *, truth: bool = True) -> None:
    simworld.write_world(root, simworld.simulate_world(6_000, seed=21), targets=(TARGET,))
    if not truth:
        shutil.rmtree(root / "data/truth")
    need.run(_params(), io.Paths.at(root), target=TARGET)  # the upstream need stage


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    _write_world(root)
    run(_params(), io.Paths.at(root), target=TARGET)
    return root


def _digests(root: Path) -> dict[str, str]:
    need = root / "data/scores/need" / f"{TARGET}.parquet"
    files = [*sorted((root / "reports").rglob("*")), need]
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files
        if path.is_file()
    }


def _walk(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _walk(v, k)]
    if isinstance(node, list):
        return [item for v in node for item in _walk(v, key)]
    return [(key, node)]


def _published(value: Any) -> bool:
    return value is None or value == "*" or (isinstance(value, int) and value % 5 == 0)


def test_writes_every_contract_table_and_the_need_scores(audited: Path) -> None:
    folder = audited / "reports/audit" / TARGET
    names = {path.name for path in folder.iterdir()}
    tables = contract.AUDIT_TABLES.values()
    assert names == {contract.AUDIT_SUMMARY_FILE, *(table.file for table in tables)}
    for table in tables:
        frame = pl.read_parquet(folder / table.file)
        assert dict(frame.schema) == table.schema, table.file
        assert frame.equals(frame.sort(table.sort_by)), table.file
    summary = contract.read_summary(contract.AuditSummary, folder / contract.AUDIT_SUMMARY_FILE)
    assert summary.truth_available is True
    metrics = pl.read_parquet(folder / "group_metrics.parquet")
    assert set(metrics["dimension"]) == {"overall", *_params().audit.dimensions}
    assert summary.flagged_comparisons == metrics["flagged"].sum()
    policies = pl.read_parquet(folder / "mitigation.parquet")["policy"].to_list()
    assert policies == ["core20plus5", "equal_opportunity", "need_based", "risk"]
    headline = contract.read_summary(
        contract.AuditHeadline, audited / "reports/metrics" / f"audit_{TARGET}.json"
    )
    assert all(isinstance(v, int | float) for v in headline.root.values())
    need = pl.read_parquet(audited / "data/scores/need" / f"{TARGET}.parquet")
    scores = pl.read_parquet(audited / "data/scores" / f"{TARGET}.parquet")
    assert need.columns == ["person_id", "need_score"]
    assert need.height == scores.height and need["need_score"].null_count() == 0


def test_published_floats_keep_ten_significant_digits(audited: Path) -> None:
    """Every published float is rounded (machine-independent bytes, as train's metrics.json):
    the last bits of a float sum differ between machines, the files must not."""
    folder = audited / "reports/audit" / TARGET
    floats = 0
    for table in contract.AUDIT_TABLES.values():
        frame = pl.read_parquet(folder / table.file).select(pl.col(pl.Float64))
        for column in frame.columns:
            values = frame[column].drop_nulls()
            floats += values.len()
            assert values.equals(values.round_sig_figs(io.PUBLISHED_DIGITS)), (table.file, column)
    assert floats > 100
    headline = contract.read_summary(
        contract.AuditHeadline, audited / "reports/metrics" / f"audit_{TARGET}.json"
    )
    numbers = [v for v in headline.root.values() if isinstance(v, float)]
    assert numbers and all(v == io.significant(v) for v in numbers)


def test_no_raw_count_is_published(audited: Path) -> None:
    """Every column holding a count of people is a declared, rounded count (group_n_raw used
    to publish exact group sizes beside the rounded ones)."""
    for table in contract.AUDIT_TABLES.values():
        frame = pl.read_parquet(audited / "reports/audit" / TARGET / table.file)
        assert not [c for c in frame.columns if c.endswith("_raw")], table.file
        for column in table.counts:
            values = frame[column].drop_nulls().to_list()
            assert all(v == "*" or int(v) % 5 == 0 for v in values), (table.file, column)


def test_suppressed_rows_hide_every_value_derived_from_them(audited: Path) -> None:
    folder = audited / "reports/audit" / TARGET
    metrics = pl.read_parquet(folder / "group_metrics.parquet")
    # (calibration is judged against 1: its flag follows its own value, not the reference's)
    hidden = metrics.filter(
        pl.col("comparison_suppressed")
        & ~((pl.col("comparator") == "1 (calibration)") & ~pl.col("suppressed"))
    )
    assert hidden.height > 0
    assert (
        hidden.select("ratio", "ratio_ci_low", "difference", "flag")
        .null_count()
        .sum_horizontal()
        .item()
        == 4 * hidden.height
    )
    assert not hidden["flagged"].any()
    gaps = pl.read_parquet(folder / "need_gaps.parquet").filter(pl.col("suppressed"))
    assert (
        gaps.select("need_ratio_ci_low", "need_gap_ci_high").null_count().sum_horizontal().item()
        == 2 * gaps.height
    )


def test_reports_follow_the_disclosure_convention(audited: Path) -> None:
    reports = audited / "reports"
    for path in reports.rglob("*.json"):
        for key, value in _walk(io.read_json(path)):
            if contract.is_count_name(key):
                assert _published(value), (path.name, key, value)
    for path in reports.rglob("*.parquet"):
        frame = pl.read_parquet(path)
        assert "person_id" not in frame.columns
        for column in frame.columns:
            if contract.is_count_name(column):
                values = frame[column].drop_nulls().to_list()
                assert all(v == "*" or int(v) % 5 == 0 for v in values), (path.name, column)
    suppressed = pl.read_parquet(reports / "audit" / TARGET / "group_metrics.parquet").filter(
        pl.col("suppressed")
    )
    assert suppressed.height > 0 and suppressed["value"].null_count() == suppressed.height
    scan = pytest.importorskip("pipeline.report.scan")
    assert scan.scan_reports(reports, rule=Rule()) == []


def test_the_disclosure_params_reach_the_audit_and_the_scanner(
    audited: Path, tmp_path: Path
) -> None:
    from pipeline.report import scan

    stricter = Rule(suppress_below=11, round_to=10)
    params = _params().model_copy(update={"disclosure": stricter})
    _write_world(tmp_path)
    run(params, io.Paths.at(tmp_path), target=TARGET)
    reports = tmp_path / "reports"
    counts = pl.read_parquet(reports / "audit" / TARGET / "groups.parquet")["n"].drop_nulls()
    assert all(v == "*" or int(v) % 10 == 0 for v in counts.to_list())
    assert scan.scan_reports(reports, rule=stricter) == []
    # the default run's counts (multiples of 5) break the stricter rule: the scanner says so
    assert scan.scan_reports(audited / "reports", rule=stricter)


def test_same_inputs_give_byte_identical_outputs(audited: Path, tmp_path: Path) -> None:
    _write_world(tmp_path)
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert _digests(tmp_path) == _digests(audited)


def test_without_truth_the_audit_runs_and_says_so(tmp_path: Path) -> None:
    _write_world(tmp_path, truth=False)
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    folder = tmp_path / "reports/audit" / TARGET
    summary = contract.read_summary(contract.AuditSummary, folder / "audit.json")
    assert summary.truth_available is False
    assert summary.planted_bias_check.available is False
    gaps = pl.read_parquet(folder / "need_gaps.parquet")
    assert set(gaps["need_measure"]) == {"recorded_need"}
    shares = pl.read_parquet(folder / "selection_shares.parquet")
    assert shares["share_by_true_need"].null_count() == shares.height


def test_bad_scores_stop_before_anything_is_written(tmp_path: Path) -> None:
    _write_world(tmp_path)
    path = tmp_path / "data/scores" / f"{TARGET}.parquet"
    pl.read_parquet(path).drop("risk_score").write_parquet(path)
    with pytest.raises(ContractError, match="risk_score"):
        run(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert not (tmp_path / "reports").exists()


def test_headline_metrics_land_on_the_models_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _write_world(tmp_path)
    model = tmp_path / "models" / TARGET / "model.txt"
    model.parent.mkdir(parents=True)
    model.write_text("tree\n")
    tracking.configure(tmp_path)
    digest = tracking.model_digest(model)
    with mlflow.start_run() as started:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, digest)
    # the run is found through the registered version of the model (a finished run)
    client = mlflow.MlflowClient()
    name = tracking.registered_name(TARGET)
    client.create_registered_model(name)
    version = client.create_model_version(name, tmp_path.as_uri(), run_id=started.info.run_id)
    client.set_model_version_tag(name, version.version, tracking.MODEL_DIGEST_TAG, digest)
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    finished = mlflow.get_run(started.info.run_id)
    logged = finished.data.metrics
    headline = io.read_json(tmp_path / "reports/metrics" / f"audit_{TARGET}.json")
    assert logged["audit.overall_auroc"] == pytest.approx(headline["overall_auroc"])
    assert logged["audit.flagged_comparisons"] == headline["flagged_comparisons"]
    assert finished.info.status == "FINISHED"  # logged to, not reopened
    tags = client.get_model_version(name, version.version).tags
    assert tags["audit_flags"] == str(headline["flagged_comparisons"])


def test_bad_audit_params_fail_before_any_work(tmp_path: Path) -> None:
    # Unknown dimensions are refused when params.yaml is read, naming the key.
    with pytest.raises(ParamsError, match=r"audit\.label_choice_dimensions\.0"):
        parse_params(
            {
                "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
                "audit": {"label_choice_dimensions": ["postcode"]},
            }
        )
    with pytest.raises(ParamsError, match=r"audit\.reference_groups\.postcode"):
        parse_params(
            {
                "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
                "audit": {"reference_groups": {"postcode": "SW1"}},
            }
        )
    params = parse_params(
        {
            "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {"score_bins": 100, "bootstrap_score_bins": 200},
        }
    )
    with pytest.raises(ParamsError, match="bootstrap_score_bins"):
        run(params, io.Paths.at(tmp_path), target=TARGET)  # no inputs exist: params first
    with pytest.raises(ParamsError, match=r"audit\.split"):
        parse_params(
            {
                "targets": {TARGET: {"outcome": "cvd_event", "follow_up_months": 60}},
                "audit": {"split": "everyone"},
            }
        )
