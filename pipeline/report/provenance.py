"""Where the report's numbers come from: dates, code and data versions, models, params.

Everything here is read from the project (git, ``dvc.lock``, the MLflow registry, params), never
from the wall clock, so re-running the report on the same inputs gives the same bytes. Any part
that cannot be read says so ("not recorded") instead of failing the report.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

if TYPE_CHECKING:
    from pipeline.config import Params

__all__ = [
    "NOT_RECORDED",
    "collect",
    "git_facts",
    "locked_data_hash",
    "model_facts",
    "params_digest",
]

NOT_RECORDED: Final = "not recorded"
DATA_OUTPUT: Final = "data/population"
"""The ``synthesize`` output whose DVC hash identifies the data the models were built on."""


def git_facts(root: Path) -> dict[str, str]:
    """``commit`` (short sha, ``+`` when the work tree differs) and ``date`` (the commit's date)."""
    try:
        line = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": NOT_RECORDED, "date": NOT_RECORDED}
    if len(line) != 2:
        return {"commit": NOT_RECORDED, "date": NOT_RECORDED}
    return {"commit": line[0], "date": line[1]}


def locked_data_hash(lock_file: Path, *, output: str = DATA_OUTPUT) -> str:
    """The DVC hash (md5 of the directory listing) of ``output`` in ``dvc.lock``, shortened."""
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return NOT_RECORDED
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == output and out.get("md5"):
                return str(out["md5"]).removesuffix(".dir")[:12]
    return NOT_RECORDED


# Where the work runs, not what it computes: the engines give the same bytes (tests/test_engine*),
# so a report made on a Dask cluster carries the same digest as the laptop's.
EXECUTION_ONLY: dict[str, Any] = {"engine": True, "dask_workers": True, "train": {"time_out"}}


def params_digest(params: Params) -> str:
    """sha256 of the validated params (JSON, keys sorted), shortened: one id for one setting.

    Execution-only keys (``EXECUTION_ONLY``: engine, worker count, distributed time-out) are
    left out because they do not change any output.
    """
    text = json.dumps(params.model_dump(mode="json", exclude=EXECUTION_ONLY), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_facts(models: Path, targets: Sequence[str], *, root: Path) -> list[dict[str, str]]:
    """Each target's registered model version and the aliases pointing at it (MLflow)."""
    from pipeline import tracking

    facts = []
    for target in targets:
        model = models / target / "model.txt"
        found = tracking.find_model_version(model, root=root) if model.exists() else None
        if found is None:
            facts.append(
                {"target": target, "model": NOT_RECORDED, "aliases": "", "data_digest": ""}
            )
            continue
        version, run = found
        aliases = _aliases(tracking.registered_name(target), str(version.version), root=root)
        facts.append(
            {
                "target": target,
                "model": f"{tracking.registered_name(target)} v{version.version}",
                "aliases": ", ".join(aliases) or "none",
                "data_digest": str(run.data.tags.get("data_digest", ""))[:8],
            }
        )
    return facts


def _aliases(name: str, version: str, *, root: Path) -> list[str]:
    """The registered model's aliases that point at ``version`` (``candidate``, ``champion``)."""
    import mlflow

    from pipeline import tracking

    with tracking.store_errors("reading the model's aliases", root=root):
        registered = mlflow.MlflowClient().get_registered_model(name)
    return sorted(alias for alias, points in registered.aliases.items() if str(points) == version)


def collect(params: Params, *, root: Path, with_models: bool) -> dict[str, Any]:
    """The provenance block of the summary page (``with_models``: ask the MLflow registry)."""
    git = git_facts(root)
    return {
        "date": git["date"],
        "commit": git["commit"],
        "index_date": params.index_date.isoformat(),
        "data_hash": locked_data_hash(root / "dvc.lock"),
        "params_digest": params_digest(params),
        "models": model_facts(root / "models", list(params.targets), root=root)
        if with_models
        else [],
        "source": params.population.source,
    }
