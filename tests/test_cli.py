"""The command line and the DVC pipeline definition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixture_params import copy_fixture_params, fixture_raw

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("synthesize", "validate", "features", "train", "audit", "outreach", "report")


def test_help_lists_every_stage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    for stage in STAGES:
        assert stage in result.stdout


def test_unknown_target_is_refused_naming_it(tmp_path: Path) -> None:
    copy_fixture_params(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--target", "nope", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown target 'nope'" in result.stderr


def test_dvc_pipeline_has_a_stage_per_step_and_target() -> None:
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc), "stage", "list", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = set(result.stdout.split())
    targets = fixture_raw()["targets"]
    expected = {"synthesize", "validate", "features", "outreach", "report"}
    expected |= {f"{stage}@{target}" for stage in ("train", "audit") for target in targets}
    assert expected <= names


def test_every_stage_command_runs_the_pipeline_module() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
        assert command.startswith(f"python -m pipeline {name}")


def test_summary_names_each_output_and_the_headline_figures(tmp_path: Path) -> None:
    copy_fixture_params(tmp_path)
    targets = list(fixture_raw()["targets"])
    first = tmp_path / "metrics" / targets[0]
    first.mkdir(parents=True)
    (first / "train.json").write_text(
        '{"auroc": 0.7861, "oe_ratio": 1.0123, "calibration_slope"'
        ': 0.974, "sensitivity_at_capacity": 0.268}'
    )
    (first / "audit.json").write_text('{"flagged_comparisons": 80}')
    lists = tmp_path / "data" / "outreach" / targets[0]
    lists.mkdir(parents=True)
    (lists / "QHM.csv").write_text("pseudonym\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "summary", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    assert "reports/equity_report.html" in out
    assert "data/outreach/  (1 files" in out
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out
    assert f"{targets[0]}: test AUROC 0.786, O/E 1.01, slope 0.974; 27% of events reached" in out
    assert "80 audit comparisons flagged" in out
    assert f"{targets[1]}: test AUROC *, O/E *, slope *; * of events reached" in out  # not run
    assert result.stderr == ""


def test_a_stage_prints_one_line(tmp_path: Path) -> None:
    copy_fixture_params(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "keyfp", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PHM_PSEUDONYM_KEY": "ab" * 32, "COLUMNS": "200"},
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("done keyfp: ")
    assert lines[0].endswith(" s)")
