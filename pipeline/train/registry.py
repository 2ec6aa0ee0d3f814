"""One MLflow run per training: params, metrics, tags, dataset, model and the registry alias.

Provenance: each input file the stage read is tagged with its sha256 (``input.sha256.<path>``),
computed here from the bytes, rather than read back from ``dvc.lock`` - the hash of what this
run actually read, with or without DVC.

The registered model ``phm-<target>`` is :class:`pipeline.train.pyfunc_model.CalibratedRisk`
(booster + calibration): it predicts the pipeline's ``risk_score``. Runs are named
``<target> <short git sha> <data hash>``. The default run moves the alias ``candidate``; a run
under ``dvc exp run`` (DVC sets ``DVC_EXP_BASELINE_REV`` / ``DVC_EXP_NAME``) is tagged
``phm.experiment=true`` and never moves it; ``python -m pipeline promote`` moves ``champion``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np

from pipeline import io, tracking
from pipeline.train.cohort import FeatureSpec

if TYPE_CHECKING:
    from pipeline.config import OperatingPointParams, TargetParams, TrainParams

REGISTERED_ALIAS: Final = "candidate"
CHAMPION_ALIAS: Final = "champion"
EXPERIMENT_ENV: Final = ("DVC_EXP_BASELINE_REV", "DVC_EXP_NAME")
"""Set by DVC for every ``dvc exp run`` (dvc/repo/experiments/queue/base.py)."""
PYFUNC_CODE: Final = Path(__file__).with_name("pyfunc_model.py")
VERSION_METRICS: Final = ("auroc", "auprc", "brier", "oe_ratio", "calibration_slope")
"""Headline test metrics copied to the model version's tags."""


def is_experiment() -> bool:
    """Whether this process runs under ``dvc exp run``."""
    return any(os.environ.get(name) for name in EXPERIMENT_ENV)


def run_name(target: str, *, commit: str, data_digest: str) -> str:
    """``<target> <short git sha> <data hash>``: what a reviewer scans in the runs list."""
    return f"{target} {commit[:7]} {data_digest[:8]}"


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
    """Tags of a training run: target, git commit, data and model digests, input sha256s, the
    process (to tell an orphan later) and whether it is a DVC experiment."""
    tags = {
        "target": target,
        "stage": "train",
        "git_commit": git_commit(root),
        "data_digest": dataset_digest(inputs),
        tracking.MODEL_DIGEST_TAG: tracking.model_digest(model_file),
        "phm.experiment": str(is_experiment()).lower(),
        **tracking.process_tags(),
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


def prepare(*, root: Path, target: str) -> list[str]:
    """Before training: check the tracking store answers (fast) and mark FAILED the runs of
    ``target`` left RUNNING by a killed process; returns their ids.

    Raises
    ------
    StageError
        When the store does not answer within ``PHM_TRACKING_TIMEOUT`` seconds.
    """
    tracking.preflight(root)  # before importing MLflow (seconds): fail first if the store is down
    _import_mlflow()
    return tracking.fail_orphaned_runs({"target": target, "stage": "train"}, root=root)


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


def consistent_example(example: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The input example (training medians) made internally consistent, by the features' naming
    (``features/manifest.json``): a measurement with a value is not ``<m>_missing``, an event
    with ``days_since_last_<e>`` is not ``no_prior_<e>``, ``n_recorded_conditions`` counts the
    ``has_*`` flags, and categorical codes are whole numbers. Still a synthetic row, no person's.
    """
    row = dict(zip(spec.names, example.astype(np.float64).tolist(), strict=True))
    for name in spec.names:
        if name.endswith("_missing") and np.isfinite(row.get(f"latest_{name[:-8]}", np.nan)):
            row[name] = 0.0
        if name.startswith("no_prior_") and np.isfinite(
            row.get(f"days_since_last_{name[9:]}", np.nan)
        ):
            row[name] = 0.0
    if "n_recorded_conditions" in row:
        row["n_recorded_conditions"] = sum(v for k, v in row.items() if k.startswith("has_"))
    for name in spec.categorical:
        row[name] = float(np.floor(row[name]))
    return np.array([row[name] for name in spec.names], dtype=np.float64)


def version_tags(metrics: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, str]:
    """Tags of the model version: headline metrics, data and code version, model digest."""
    found = {
        name: f"{metrics[name]:.4g}"
        for name in VERSION_METRICS
        if isinstance(metrics.get(name), int | float)
    }
    keys = ("git_commit", "data_digest", tracking.MODEL_DIGEST_TAG, "phm.experiment")
    return found | {key: tags[key] for key in keys}


def version_description(target: str, metrics: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """One paragraph a reviewer reads on the model version page."""
    shown = {k: v for k, v in version_tags(metrics, tags).items() if k in VERSION_METRICS}
    headline = ", ".join(f"{name} {value}" for name, value in shown.items())
    kind = "DVC experiment" if tags["phm.experiment"] == "true" else "default pipeline run"
    return (
        f"Calibrated {target} risk (LightGBM + calibration.json): predict returns the pipeline's "
        f"risk_score. Test split: {headline}. Code {tags['git_commit'][:12]}, data "
        f"{tags['data_digest'][:12]}; {kind}. See the run's model_card.md, charts/ and, after "
        "the audit, its audit.* metrics and the audit_flags tag."
    )


def _signature(example_frame: Any, model_dir: Path) -> Any:
    """Signature of the calibrated model: the features in, one risk per row out."""
    import json

    from mlflow.models import infer_signature

    from pipeline.train import pyfunc_model

    booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
    calibration = json.loads((model_dir / "calibration.json").read_text())
    risk = pyfunc_model.calibrate(
        calibration, np.asarray(booster.predict(example_frame.to_numpy()))
    )
    return infer_signature(example_frame, risk)


def _log_charts(model_dir: Path, *, target: str) -> None:
    import tempfile

    import mlflow

    from pipeline.headline import plots_folder
    from pipeline.train import images

    plots = plots_folder(model_dir.parents[1], target)  # models/<target> -> metrics/<target>/plots
    with tempfile.TemporaryDirectory() as folder:
        for name, png in images.model_images(plots, target=target).items():
            (Path(folder) / name).write_bytes(png)
        mlflow.log_artifacts(folder, artifact_path="charts")


_TRAINING_COUNTS: Final = re.compile(
    r"^(leaf_count|internal_count|leaf_weight|internal_weight|tree_sizes)="
)
"""Model-file lines that record how many training people (or how much hessian) reached each
node; ``tree_sizes`` (byte offsets) goes with them so LightGBM re-parses tree by tree."""
_FEATURE_RANGE: Final = re.compile(r"^\[[^\]]*:[^\]]*\]$")


def _published_infos(line: str) -> str:
    infos = line.removeprefix("feature_infos=").split(" ")
    return "feature_infos=" + " ".join(
        "none" if _FEATURE_RANGE.match(info) else info for info in infos
    )


def published_model_text(model_text: str) -> str:
    """The LightGBM model as published to MLflow: no per-node training counts or weights and no
    per-feature min/max (``feature_infos`` ranges become ``none``; categorical value lists stay).

    Prediction needs neither, so the published model predicts exactly as ``model.txt`` does
    (tested); TreeSHAP would need the counts, and only the pipeline's own copy keeps them.
    """
    return (
        "\n".join(
            _published_infos(line) if line.startswith("feature_infos=") else line
            for line in model_text.splitlines()
            if not _TRAINING_COUNTS.match(line)
        )
        + "\n"
    )


def _log_model(*, model_dir: Path, example_frame: Any, name: str) -> Any:
    """Log and register the calibrated pyfunc model (a model from code, see pyfunc_model), with
    the booster as :func:`published_model_text`."""
    import tempfile

    import mlflow
    import pandas as pd
    import scipy

    # MLflow prints "Registered model ... / Created version ..." straight to stderr; train's
    # console line and the report's provenance say which version it is.
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(StringIO()):
        booster_file = Path(folder) / "model.txt"
        booster_file.write_text(published_model_text((model_dir / "model.txt").read_text()))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={
                "booster": str(booster_file),
                "calibration": str(model_dir / "calibration.json"),
            },
            signature=_signature(example_frame, model_dir),
            input_example=example_frame,
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"lightgbm=={lgb.__version__}",
                f"numpy=={np.__version__}",
                f"scipy=={scipy.__version__}",
                f"pandas=={pd.__version__}",
            ],
            registered_model_name=name,
        )


def log_to_mlflow(
    *,
    root: Path,
    target: str,
    params: Mapping[str, str],
    spec: FeatureSpec,
    example: np.ndarray,
    metrics: Mapping[str, Any],
    model_dir: Path,
    inputs: Sequence[Path],
    timings: Mapping[str, float] | None = None,
) -> str:
    """Log one training run, register its calibrated model and (outside DVC experiments) move
    the ``candidate`` alias of ``phm-<target>`` to it; returns the run id.

    Nothing row-level is logged: the dataset input is schema + digest only, the input example
    is a synthetic row of training medians (made consistent) and the charts are aggregate
    curves. ``inputs``: the files the stage read (tagged with their sha256; the first is the
    dataset's source). ``timings``: wall seconds of the run's steps (e.g. ``fit_seconds``),
    logged as metrics for reviewers and ``benchmarks/bench_england.py``; never in a file DVC
    tracks, where they would break the byte-identical reruns.
    """
    _import_mlflow()
    import mlflow
    import pandas as pd

    tags = run_tags(root=root, target=target, model_file=model_dir / "model.txt", inputs=inputs)
    # object-dtype column labels: MLflow 3.17 compares labels with a range, which pandas 3
    # deprecates for its default string dtype
    example_frame = pd.DataFrame(
        consistent_example(example, spec).reshape(1, -1),
        columns=pd.Index(spec.names, dtype=object),
    )
    dataset = _dataset(spec, source=inputs[0], name=f"{target}-train", digest=tags["data_digest"])
    name = tracking.registered_name(target)
    tracking.configure(root)
    with (
        tracking.store_errors(f"train {target}: logging to MLflow", root=root),
        mlflow.start_run(
            run_name=run_name(target, commit=tags["git_commit"], data_digest=tags["data_digest"]),
            tags=tags,  # with the run: its process tags tell an orphan if we are killed
        ) as run,
    ):
        mlflow.log_params(dict(params))
        mlflow.log_input(dataset, context="training")
        tracking.log_flat_metrics({k: v for k, v in metrics.items() if k != "target"})
        if timings:
            mlflow.log_metrics(dict(timings))
        for artifact in ("metrics.json", "feature_importance.json", "model_card.md"):
            mlflow.log_artifact(str(model_dir / artifact))
        mlflow.log_text(
            calibration_summary(io.read_json(model_dir / "calibration.json")),
            "calibration_summary.json",
        )
        _log_charts(model_dir, target=target)
        info = _log_model(model_dir=model_dir, example_frame=example_frame, name=name)
        _describe_version(
            name, str(info.registered_model_version), target=target, metrics=metrics, tags=tags
        )
        return run.info.run_id


def _describe_version(
    name: str, version: str, *, target: str, metrics: Mapping[str, Any], tags: Mapping[str, str]
) -> None:
    """Tag and describe a new version; outside DVC experiments, point ``candidate`` at it."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in version_tags(metrics, tags).items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name, version, description=version_description(target, metrics, tags)
    )
    if not is_experiment():
        client.set_registered_model_alias(name, REGISTERED_ALIAS, version)


def promote(*, root: Path, target: str, version: str | None = None) -> str:
    """Move the ``champion`` alias of ``phm-<target>`` to ``version`` (default: the version
    ``candidate`` points at); returns the version promoted.

    Raises
    ------
    StageError
        When the registered model, the alias or the version does not exist.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.errors import StageError

    name = tracking.registered_name(target)
    tracking.configure(root)
    client = mlflow.MlflowClient()
    try:
        if version is None:
            version = str(client.get_model_version_by_alias(name, REGISTERED_ALIAS).version)
        found = client.get_model_version(name, version)
    except MlflowException as error:
        wanted = f"version {version}" if version else f"alias {REGISTERED_ALIAS!r}"
        raise StageError(
            f"promote: {name} has no {wanted} in {tracking.tracking_uri(root)} "
            f"({str(error).splitlines()[0]}); run `dvc repro` (or train) first"
        ) from None
    with tracking.store_errors(f"promote {name} v{version}", root=root):
        client.set_registered_model_alias(name, CHAMPION_ALIAS, found.version)
        client.set_model_version_tag(name, found.version, "promoted_at", _now())
    return str(found.version)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
