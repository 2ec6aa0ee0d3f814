"""The command line and the DVC pipeline definition."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
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
    targets = yaml.safe_load((ROOT / "params.yaml").read_text())["targets"]
    expected = {"synthesize", "validate", "features", "outreach", "report"}
    expected |= {f"{stage}@{target}" for stage in ("train", "audit") for target in targets}
    assert expected <= names


def test_every_stage_command_runs_the_pipeline_module() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
        assert command.startswith(f"python -m pipeline {name}")
