"""One MLflow run per training: params, metrics, tags, dataset, model and the registry alias.

Provenance: each input file the stage read is tagged with its sha256 (``input.sha256.<path>``),
computed here from the bytes, rather than read back from ``dvc.lock`` - the hash of what this
run actually read, with or without DVC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np

from pipeline import io, tracking
from pipeline.train.cohort import FeatureSpec

if TYPE_CHECKING:
    from pipeline.config import OperatingPointParams, TargetParams, TrainParams

REGISTERED_ALIAS: Final = "candidate"


def git_commit(root: Path) -> str:
    """The checked-out commit, or ``unknown`` outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def file_sha256(file: Path) -> str:
    """sha256 of a file's bytes (what ``sha256sum`` prints)."""
    with file.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dataset_digest(files: Sequence[Path]) -> str:
    """One digest of several files: sha256 over their sha256 digests, in the given order."""
    return hashlib.sha256("".join(file_sha256(file) for file in files).encode()).hexdigest()


def flat_params(
    *,
    train: TrainParams,
    target_params: TargetParams,
    seed: int,
    index_date: dt.date,
    operating_point: OperatingPointParams,
) -> dict[str, str]:
    """The parameters behind one model as MLflow params (``train.*``, ``target.*``, ...)."""
    flat = {f"train.{key}": value for key, value in train.model_dump().items()}
    flat |= {f"target.{key}": value for key, value in target_params.model_dump().items()}
    flat |= {
        "seed": seed,
        "index_date": index_date.isoformat(),
        "operating_point.capacity": operating_point.capacity,
        "operating_point.capacity_mode": operating_point.capacity_mode,
    }
    return {key: str(value) for key, value in flat.items()}


def input_tags(files: Sequence[Path], *, root: Path) -> dict[str, str]:
    """``input.sha256.<path relative to root>`` -> sha256 of each input file."""
    return {
        f"input.sha256.{file.relative_to(root).as_posix()}": file_sha256(file) for file in files
    }


def run_tags(
    *, root: Path, target: str, model_file: Path, inputs: Sequence[Path]
) -> dict[str, str]:
    """Tags of a training run: target, git commit, model digest, input sha256s, DVC experiment."""
    tags = {
        "target": target,
        "stage": "train",
        "git_commit": git_commit(root),
        tracking.MODEL_DIGEST_TAG: tracking.model_digest(model_file),
        **input_tags(inputs, root=root),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def calibration_summary(calibration: Mapping[str, Any]) -> str:
    """``calibration.json`` without the isotonic thresholds, for MLflow.

    The thresholds are individual people's raw scores: MLflow gets the method, the sigmoid
    coefficients and the Brier scores only (calibration.json stays under models/).
    """
    return io.dumps_json({k: v for k, v in calibration.items() if k not in {"x", "y"}})


def _import_mlflow() -> None:
    with warnings.catch_warnings():
        # MLflow's pyfunc module warns about its own type hints when first imported: noise
        warnings.filterwarnings("ignore", message=".*Any type hint is inferred as AnyType")
        import mlflow.pyfunc  # noqa: F401


def _dataset(spec: FeatureSpec, *, source: Path, name: str, digest: str) -> Any:
    """An MLflow dataset of schema and digest only (nothing row-level)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema, TensorSpec

    columns: list[ColSpec | TensorSpec] = [ColSpec("double", name) for name in spec.names]
    schema = Schema([*columns, ColSpec("integer", "outcome")])
    # MLflow registers the local source class twice; pick it directly (resolving it warns).
    local_source = next(
        found for found in get_registered_sources() if found._get_source_type() == "local"
    )
    # MLflow's annotations call the registered source an instance and MetaDataset abstract;
    # both are concrete classes at run time.
    return MetaDataset(  # type: ignore[abstract]
        source=local_source(str(source)),  # type: ignore[operator]
        name=name,
        digest=digest[:20],
        schema=schema,
    )


def log_to_mlflow(
    *,
    root: Path,
    target: str,
    params: Mapping[str, str],
    spec: FeatureSpec,
    booster: lgb.Booster,
    example: np.ndarray,
    metrics: Mapping[str, Any],
    model_dir: Path,
    inputs: Sequence[Path],
) -> str:
    """Log one training run and move the ``candidate`` alias of ``phm-<target>`` to its model.

    Nothing row-level is logged: the dataset input is schema + digest only and the input example
    is a synthetic row of training medians. ``inputs``: the files the stage read (tagged with
    their sha256; the first is the dataset's source).
    """
    _import_mlflow()
    import mlflow
    import mlflow.lightgbm
    import pandas as pd
    from mlflow.models import infer_signature

    tracking.configure(root)
    tags = run_tags(root=root, target=target, model_file=model_dir / "model.txt", inputs=inputs)
    # object-dtype column labels: MLflow 3.17 compares labels with a range, which pandas 3
    # deprecates for its default string dtype
    example_frame = pd.DataFrame(
        example.reshape(1, -1).astype(np.float64), columns=pd.Index(spec.names, dtype=object)
    )
    signature = infer_signature(example_frame, booster.predict(example_frame.to_numpy()))
    dataset = _dataset(
        spec, source=inputs[0], name=f"{target}-train", digest=dataset_digest(inputs)
    )
    name = f"phm-{target}"
    with mlflow.start_run(run_name=target) as run:
        mlflow.log_params(dict(params))
        mlflow.set_tags(tags)
        mlflow.log_input(dataset, context="training")
        tracking.log_flat_metrics({k: v for k, v in metrics.items() if k != "target"})
        info = mlflow.lightgbm.log_model(
            lgb_model=booster,
            name="model",
            signature=signature,
            input_example=example_frame,
            pip_requirements=[f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}"],
            registered_model_name=name,
        )
        for artifact in ("metrics.json", "feature_importance.json", "model_card.md"):
            mlflow.log_artifact(str(model_dir / artifact))
        mlflow.log_text(
            calibration_summary(io.read_json(model_dir / "calibration.json")),
            "calibration_summary.json",
        )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(name, REGISTERED_ALIAS, version)
        return run.info.run_id
