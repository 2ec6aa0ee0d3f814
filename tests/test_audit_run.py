"""The audit stage end to end on a small world written to disk: files, disclosure, determinism,
missing truth, bad input and the MLflow run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import contract, io, need, tracking
from pipeline.audit import run, simulate
from pipeline.config import Params, parse_params
from pipeline.errors import ContractError, ParamsError
from tests.manifests import write_manifest

TARGET = "sim_target"


def _params() -> Params:
    return parse_params(
        {
            "targets": {TARGET: {"outcome": "emergency_admission", "follow_up_months": 12}},
            "audit": {"n_bootstrap": 50, "n_monte_carlo": 100, "need_model_rounds": 20},
        }
    )


def _write_world(root: Path, *, truth: bool = True) -> None:
    world = simulate.simulate_world(6_000, seed=21)
    io.write_parquet(
        world["scores"], root / "data/scores" / f"{TARGET}.parquet", sort_by="person_id"
    )
    io.write_parquet(world["features"], root / "features/features.parquet", sort_by="person_id")
    inputs = ["age", "imd_decile", "recorded_measure", contract.RECORDED_MULTIMORBIDITY]
    write_manifest(world["features"], root / "features/manifest.json", inputs=inputs)
    if truth:
        io.write_parquet(world["truth"], root / "data/truth/people.parquet", sort_by="person_id")
        io.write_parquet(world["oracle"], root / "data/truth/oracle.parquet", sort_by="person_id")
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


def _is_count(name: str) -> bool:
    return name == "n" or name.startswith("n_") or name.endswith("_count")


def _published(value: Any) -> bool:
    return value is None or value == "*" or (isinstance(value, int) and value % 5 == 0)


def test_writes_every_table_and_the_need_scores(audited: Path) -> None:
    folder = audited / "reports/audit" / TARGET
    names = {path.name for path in folder.iterdir()}
    assert "audit.json" in names and "group_metrics.parquet" in names
    assert "need_by_score.parquet" in names and "mitigation.parquet" in names
    payload = io.read_json(folder / "audit.json")
    assert payload["truth_available"] is True
    assert set(payload["dimensions"]) == {"overall", *_params().audit.dimensions}
    assert {p["policy"] for p in payload["mitigation"]["policies"]} == {
        "risk",
        "equal_opportunity",
        "core20plus5",
        "need_based",
    }
    metrics = io.read_json(audited / "reports/metrics" / f"audit_{TARGET}.json")
    assert metrics == payload["headline"]
    assert all(isinstance(v, int | float) for v in metrics.values())
    need = pl.read_parquet(audited / "data/scores/need" / f"{TARGET}.parquet")
    scores = pl.read_parquet(audited / "data/scores" / f"{TARGET}.parquet")
    assert need.columns == ["person_id", "need_score"]
    assert need.height == scores.height and need["need_score"].null_count() == 0


def test_reports_follow_the_disclosure_convention(audited: Path) -> None:
    reports = audited / "reports"
    for path in reports.rglob("*.json"):
        for key, value in _walk(io.read_json(path)):
            if _is_count(key) and key not in {"n_bootstrap", "n_monte_carlo"}:
                assert _published(value), (path.name, key, value)
    for path in reports.rglob("*.parquet"):
        frame = pl.read_parquet(path)
        assert "person_id" not in frame.columns
        for column in frame.columns:
            if _is_count(column) and column != "n_groups":
                values = frame[column].drop_nulls().to_list()
                assert all(v == "*" or int(v) % 5 == 0 for v in values), (path.name, column)
    suppressed = pl.read_parquet(reports / "audit" / TARGET / "group_metrics.parquet").filter(
        pl.col("suppressed")
    )
    assert suppressed.height > 0 and suppressed["value"].null_count() == suppressed.height
    scan = pytest.importorskip("pipeline.report.scan")
    assert scan.scan_reports(reports) == []


def test_same_inputs_give_byte_identical_outputs(audited: Path, tmp_path: Path) -> None:
    _write_world(tmp_path)
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    assert _digests(tmp_path) == _digests(audited)


def test_without_truth_the_audit_runs_and_says_so(tmp_path: Path) -> None:
    _write_world(tmp_path, truth=False)
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    payload = io.read_json(tmp_path / "reports/audit" / TARGET / "audit.json")
    assert payload["truth_available"] is False
    assert payload["planted_bias_check"]["available"] is False
    assert set(payload["label_choice"]["need_gaps"]["imd_quintile"]) == {"recorded_need"}


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
    with mlflow.start_run() as started:
        mlflow.set_tag(tracking.MODEL_DIGEST_TAG, tracking.model_digest(model))
    run(_params(), io.Paths.at(tmp_path), target=TARGET)
    logged = mlflow.get_run(started.info.run_id).data.metrics
    headline = io.read_json(tmp_path / "reports/metrics" / f"audit_{TARGET}.json")
    assert logged["audit.overall_auroc"] == pytest.approx(headline["overall_auroc"])
    assert logged["audit.flagged_comparisons"] == headline["flagged_comparisons"]


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
