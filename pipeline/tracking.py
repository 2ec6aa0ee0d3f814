"""MLflow tracking helpers: where the store is, and one way to open runs.

Embedded default: sqlite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the project root,
both addressed by absolute path so ``dvc exp run --temp`` (which runs in a copy of the repo
under ``.dvc/tmp/exps``) still logs to the same store. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow

EXPERIMENT_NAME = "phm-risk-stratification"


def project_root(start: str | Path = ".") -> Path:
    """The project root, seen through a ``dvc exp run --temp`` workspace if we are inside one."""
    here = Path(start).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return here


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store at the project root."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{project_root(root) / 'mlflow.db'}"


def artifact_location(root: str | Path = ".") -> str:
    """Absolute artifact root for the embedded store."""
    return (project_root(root) / "mlartifacts").as_uri()


def configure(root: str | Path = ".", *, experiment: str = EXPERIMENT_NAME) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import logging

    import mlflow

    # Alembic's migration chatter on first use of a new sqlite store is noise for users.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Read before set_tracking_uri, which exports MLFLOW_TRACKING_URI itself.
    team_server = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    mlflow.set_tracking_uri(tracking_uri(root))
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    elif team_server:
        experiment_id = mlflow.create_experiment(experiment)
    else:
        experiment_id = mlflow.create_experiment(
            experiment, artifact_location=artifact_location(root)
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def find_run_by_tag(tag: str, value: str, *, root: str | Path = ".") -> mlflow.entities.Run | None:
    """The newest run in the project experiment whose ``tag`` equals ``value`` (or None)."""
    import mlflow

    experiment_id = configure(root)
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def log_flat_metrics(metrics: dict[str, Any], *, prefix: str = "") -> None:
    """Log the numeric leaves of a nested dict as metrics named ``prefix.key.subkey``."""
    import mlflow

    flat: dict[str, float] = {}

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{name}.{key}" if name else str(key))
        elif isinstance(node, bool):
            flat[name] = float(node)
        elif isinstance(node, int | float) and not math.isnan(node):
            flat[name] = float(node)

    walk(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat)


MODEL_DIGEST_TAG = "model_sha256"
"""Train tags its run with the sha256 of ``models/<target>/model.txt``; later stages find the run
by that tag, so no run id has to be written into a DVC output (outputs stay deterministic)."""


def model_digest(model_file: str | Path) -> str:
    """sha256 of a model file, the key that links DVC outputs to their MLflow run."""
    import hashlib

    return hashlib.sha256(Path(model_file).read_bytes()).hexdigest()


def find_model_run(model_file: str | Path, *, root: str | Path = ".") -> mlflow.entities.Run | None:
    """The MLflow run that trained ``model_file`` (None when the store does not hold it)."""
    return find_run_by_tag(MODEL_DIGEST_TAG, model_digest(model_file), root=root)
