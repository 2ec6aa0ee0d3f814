"""The params the tests build on: ``tests/fixture_params.yaml``, never the working params.yaml.

The fixture is a copy of the project's default ``params.yaml``; the working file changes under
``dvc exp apply`` / ``dvc exp run -S``, and the tests must pass whatever experiment is applied.
``tests/test_config.py`` checks the fixture still has the project file's keys (not its values).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

FIXTURE_PARAMS = Path(__file__).resolve().with_name("fixture_params.yaml")


def fixture_raw() -> dict[str, Any]:
    """A fresh (mutable) copy of the fixture params, as parsed YAML."""
    return yaml.safe_load(FIXTURE_PARAMS.read_text())


def copy_fixture_params(root: Path) -> Path:
    """Copy the fixture params to ``root/params.yaml``; returns that path."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(FIXTURE_PARAMS, root / "params.yaml"))
